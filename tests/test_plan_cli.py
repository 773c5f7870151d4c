"""`kvbench plan` on the command line: every bundled model on every bundled GPU, the formats, and clear refusals."""

import io
import json

import pandas as pd
import pytest

from kvbench.cli.app import main
from kvbench.estimate.gpus import gpu_table
from kvbench.inputs.configs import list_presets


@pytest.mark.parametrize("model", list_presets())
def test_every_bundled_model_on_every_bundled_gpu(model, capsys):
    for gpu in gpu_table():
        assert main(["plan", "--model", model, "--gpu", gpu["aliases"][0], "--batch-sizes", "1,8",
                     "--format", "csv"]) == 0
        plan = pd.read_csv(io.StringIO(capsys.readouterr().out))
        assert set(plan["question"]) == {"breakdown", "longest_context", "most_sequences"}
        assert (plan["gpu"] == gpu["name"]).all() and (plan["model"] == model).all()
        longest = plan[plan.question == "longest_context"]
        assert len(longest) == 2 and (longest["context_len"] <= longest["context_window"]).all()
        fitting = plan[plan["fits"]]
        assert (fitting["total_bytes"] <= fitting["usable_bytes"]).all()


def test_table_and_markdown(capsys):
    assert main(["plan", "--model", "phi-3-mini-4k", "--gpu", "t4", "--dtype", "float16",
                 "--batch-sizes", "1,8"]) == 0
    out = capsys.readouterr().out
    assert "Longest context that fits, per batch size" in out and "context window" in out
    assert "NVIDIA T4" in out and "usable 14.8 GiB" in out
    assert main(["plan", "--model", "PHI-3-MINI-4K", "--gpu", "T4", "--format", "markdown",
                 "--contexts", "2048", "--batch-sizes", "1"]) == 0
    out = capsys.readouterr().out
    assert "| batch | context | prompt + new |" in out and "| 1 | 2048 | 1920 + 128 |" in out


def test_json_and_options(capsys):
    assert main(["plan", "--model", "llama-3.1-8b", "--gpu", "h100", "--kv-dtype", "int4", "--num-beams", "2",
                 "--batch-sizes", "4", "--contexts", "8192", "--new-tokens", "64,256", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["cache_implementation"] for r in rows} == {"quantized"} and {r["num_beams"] for r in rows} == {2}
    assert {(r["quant_backend"], r["quant_nbits"]) for r in rows} == {("quanto", 4)}
    assert {r["new_tokens"] for r in rows} == {64, 256}
    assert main(["plan", "--model", "tiny", "--memory", "2GiB", "--bandwidth-gbps", "100",
                 "--cache-implementation", "static", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["usable_bytes"] == 2 * 2**30 and rows[0]["bandwidth_gbps"] == 100


@pytest.mark.parametrize("argv,message", [
    (["--model", "phi-3-mini-4k", "--gpu", "voodoo5"], "unknown GPU 'voodoo5'"),
    (["--model", "phi-5-mega", "--gpu", "t4"], "unknown model 'phi-5-mega'"),
    (["--model", "tiny", "--memory", "0"], "--memory: '0'"),
    (["--model", "tiny", "--memory", "16 gigs"], "--memory: '16 gigs' is not a memory size"),
    (["--model", "tiny", "--memory", "1e30"], "not a possible GPU memory"),
    (["--model", "tiny", "--gpu", "t4", "--overhead", "lots"], "--overhead: 'lots'"),
    (["--model", "tiny", "--gpu", "t4", "--format", "xml"], "--format: 'xml'"),
    (["--model", "tiny", "--gpu", "t4", "--batch-sizes", "1,x"], "--batch-sizes: 'x'"),
    (["--model", "tiny", "--gpu", "t4", "--contexts", "4096"], "exceeds tiny's context window of 2048"),
    (["--model", "tiny", "--gpu", "t4", "--dtype", "float8"], "--dtype: 'float8'"),
    (["--model", "tiny", "--gpu", "t4", "--cache-implementation", "pagd"], "cache_implementation must be one of"),
    (["--model", "tiny", "--gpu", "t4", "--cache-implementation", "quantized", "--quant-nbits", "3"],
     "quant_nbits=3 is not one of the widths the quanto backend takes (2, 4)"),
    (["--model", "tiny", "--gpu", "t4", "--cache-implementation", "quantized", "--quant-backend", "fp8",
      "--quant-nbits", "4"], "the fp8 quantized cache quantizes per tensor and takes no quant_nbits=4"),
    (["--model", "tiny", "--gpu", "t4", "--cache-implementation", "quantized", "--quant-backend", "int2"],
     "quant_backend must be one of quanto, hqq, fp8"),
    (["--model", "tiny", "--gpu", "t4", "--cache-implementation", "paged", "--num-beams", "2"], "beam"),
    (["--model", "gemma-2-9b", "--gpu", "t4", "--cache-implementation", "quantized"], "full-attention models only"),
    (["--model", "phi-3-mini-4k", "--gpu", "t4", "--kv-dtype", "int4"], "full-attention models only"),
    (["--gpu", "t4"], "--model is required"),
])
def test_refusals(argv, message, capsys):
    assert main(["plan", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kvbench: error: ") and message in err and len(err.strip().splitlines()) == 1
