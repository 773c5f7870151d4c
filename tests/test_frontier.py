"""The out-of-memory frontier search with injected probes (no GPU): bracketing, bisection, OOM recovery, records."""

import pandas as pd
import pytest
import torch

from kvbench.cli.app import main
from kvbench.errors import UserError
from kvbench.estimate import capacity
from kvbench.estimate.capacity import Target
from kvbench.plan.frontier import (
    compare_frontier,
    find_frontier,
    frontier_table,
    search_longest_context,
)
from kvbench.results.store import RunWriter, load_results


class FakeProbe:
    """ok while batch x context <= budget; counts its calls."""

    def __init__(self, budget=20_000, raise_oom=False):
        self.budget, self.raise_oom, self.calls = budget, raise_oom, []

    def __call__(self, batch_size, context_len):
        self.calls.append((batch_size, context_len))
        if batch_size * context_len <= self.budget:
            return {"batch_size": batch_size, "status": "ok"}
        if self.raise_oom:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return {"batch_size": batch_size, "status": "oom", "error": "CUDA out of memory"}


@pytest.mark.parametrize("guess", [None, 300, 4000, 8192])
def test_bisection_brackets_the_boundary(guess):
    probe = FakeProbe()
    result = search_longest_context(probe, 4, min_context=17, max_context=8192, resolution=16, guess=guess)
    ok, oom = result["longest_ok_context"], result["shortest_oom_context"]
    assert ok <= 5000 < oom and oom - ok <= 16 and result["limit"] == "memory"
    assert result["probes"] == len(probe.calls) <= 20
    assert all(4 * c <= 20_000 for b, c in probe.calls if c <= ok)


def test_context_window_and_nothing_fits():
    probe = FakeProbe()
    window = search_longest_context(probe, 1, min_context=17, max_context=8192, resolution=16)
    assert window == {"batch_size": 1, "longest_ok_context": 8192, "shortest_oom_context": None,
                      "limit": "context window", "probes": 1}
    nothing = search_longest_context(FakeProbe(), 10_000, min_context=17, max_context=8192, resolution=16)
    assert nothing["longest_ok_context"] is None and nothing["limit"] == "nothing fits"
    assert nothing["shortest_oom_context"] == 17


def test_raised_oom_is_recovered_and_recorded():
    probe, recovered, seen = FakeProbe(raise_oom=True), [], []
    result = search_longest_context(probe, 8, min_context=2, max_context=4096, resolution=8,
                                    on_probe=seen.append, recover=lambda: recovered.append(1))
    assert result["longest_ok_context"] <= 2500 < result["shortest_oom_context"]
    ooms = [r for r in seen if r["status"] == "oom"]
    assert len(recovered) == len(ooms) > 0
    assert all("out of memory" in r["error"] for r in ooms)
    assert [r["frontier_probe"] for r in seen] == list(range(1, len(seen) + 1))


def test_other_failures_stop_the_search():
    def broken(batch_size, context_len):
        return {"status": "error", "error": "ValueError: boom"}

    with pytest.raises(RuntimeError, match="boom"):
        search_longest_context(broken, 1, min_context=2, max_context=64)

    def crashing(batch_size, context_len):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    with pytest.raises(RuntimeError, match="illegal memory access"):
        search_longest_context(crashing, 1, min_context=2, max_context=64)
    with pytest.raises(UserError):
        search_longest_context(FakeProbe(), 1, min_context=100, max_context=50)


def planner_probe(cap_bytes, new_tokens, model="tiny", dtype="float32"):
    """A probe that runs out of memory exactly where the planner says the cap is exceeded (overhead 0 under a cap),
    with records shaped like `measure`'s."""
    w = capacity.make_workload(model, dtype)
    target = Target("cap", cap_bytes, 100.0)
    cal = capacity.Calibration(overhead_bytes=0)

    def probe(batch_size, context_len):
        fits = capacity.breakdown(w, target, batch_size, context_len, new_tokens, cal)["fits"]
        return {"model": model, "dtype": dtype, "cache_implementation": "dynamic", "num_beams": 1,
                "use_cache": True, "decoding": "greedy", "batch_size": batch_size, "new_tokens": new_tokens,
                "prompt_len": context_len - new_tokens, "status": "ok" if fits else "oom",
                "error": None if fits else "CUDA out of memory", "device": "cuda:0",
                "env_device_name": "NVIDIA H100 80GB HBM3", "env_gpu_memory_bytes": 85_000_000_000,
                "env_gpu_bandwidth_gbps": 3352.3}

    return probe


def write_frontier_run(path, cap=64 * 2**20, new_tokens=16, batch_sizes=(1, 4, 16)):
    with RunWriter(path, {"kind": "frontier", "model": "tiny"}) as writer:
        found = find_frontier(planner_probe(cap, new_tokens), batch_sizes, min_context=new_tokens + 1,
                              max_context=2048, resolution=32, writer=writer, extra={"memory_cap_bytes": cap},
                              recover=lambda: None)
    return found


def test_records_load_and_give_the_frontier(tmp_path):
    found = write_frontier_run(tmp_path / "frontier")
    df = load_results(tmp_path / "frontier")
    assert set(df["status"]) == {"ok", "oom"} and df["memory_cap_bytes"].eq(64 * 2**20).all()
    table = frontier_table(df).set_index("batch_size")
    for row in found.to_dict("records"):
        measured = table.loc[row["batch_size"]]
        for key in ("longest_ok_context", "shortest_oom_context"):  # equal, or both missing
            assert measured[key] == row[key] or (pd.isna(measured[key]) and pd.isna(row[key]))
        assert measured["probes"] == row["probes"] and measured["consistent"]
    assert table.loc[1, "limit"] == "context window"  # tiny at batch 1 fits its 2048 positions in 64 MiB
    assert table.loc[16, "limit"] == "memory"


def test_comparison_puts_the_prediction_inside_the_measured_bracket(tmp_path):
    write_frontier_run(tmp_path / "frontier")
    comparison = compare_frontier(load_results(tmp_path / "frontier"))
    assert comparison["prediction_within_bracket"].all()
    memory_rows = comparison[comparison["limit"] == "memory"]
    assert not memory_rows.empty
    assert (memory_rows["prediction_error"].abs() < 32 / memory_rows["longest_ok_context"] + 1e-9).all()


def test_frontier_table_flags_non_monotone_probes():
    records = pd.DataFrame([
        {"model": "tiny", "dtype": "float32", "cache_implementation": "dynamic", "num_beams": 1, "new_tokens": 16,
         "batch_size": 2, "context_len": c, "status": s, "run": "r"} for c, s in [(1000, "ok"), (800, "oom")]])
    row = frontier_table(records).iloc[0]
    assert not row["consistent"] and row["longest_ok_context"] == 1000 and row["shortest_oom_context"] == 800
    with pytest.raises(UserError, match="no frontier probes"):
        frontier_table(pd.DataFrame([{"status": "ok"}]))


def test_cli_compare_frontier_and_figure(tmp_path, capsys):
    write_frontier_run(tmp_path / "frontier")
    figure = tmp_path / "longest.png"
    rc = main(["plan", "--compare-frontier", str(tmp_path / "frontier"), "--figure", str(figure)])
    out = capsys.readouterr().out
    assert rc == 0 and "measured against predicted" in out
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_frontier_refuses_without_cuda(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["frontier", "--model", "tiny", "--memory-cap", "14.75GiB"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kvbench: error: kvbench frontier measures out-of-memory on a CUDA GPU")
    assert main(["frontier", "--model", "tiny", "--memory-cap", "lots"]) == 2
    assert "--memory-cap: 'lots'" in capsys.readouterr().err


def test_cuda_probe_glue_runs_one_generate_on_any_device(monkeypatch):
    """The probe used on a GPU, run on the CPU with the tiny preset: one generate, a `measure` record; allocation
    failures that are not torch.OutOfMemoryError (cuBLAS near a cap) become "oom" records too."""
    from kvbench.measuring.loading.models import load_model
    from kvbench.plan.frontier import cuda_probe

    loaded = load_model("tiny", device="cpu", dtype="float32")
    ids = torch.randint(3, 100, (2, 60))  # a static cache left by an earlier, longer probe of the same batch
    loaded.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=2, min_new_tokens=2,
                          do_sample=False, pad_token_id=0, cache_implementation="static")
    probe = cuda_probe(loaded, new_tokens=4, cache_implementation="static")
    record = probe(2, 24)
    assert record["status"] == "ok" and record["prompt_len"] == 20 and record["batch_size"] == 2
    assert record["generated_tokens"] == 4 and record["repeats"] == 1
    assert record["kv_cache_bytes"] == record["kv_cache_bytes_estimate"]  # sized for this probe, not the longer one

    def failing(*args, **kwargs):
        raise RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`")

    monkeypatch.setattr(loaded.model, "generate", failing)
    record = cuda_probe(loaded, new_tokens=4)(1, 24)
    assert record["status"] == "oom" and "ALLOC_FAILED" in record["error"] and record["prompt_len"] == 20
