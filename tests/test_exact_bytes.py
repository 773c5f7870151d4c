"""Exact bytes where users check them: `presets` and `inspect` show bytes per token exactly beside the binary unit,
and `--contexts` takes a k suffix of 1,024 tokens (the models' convention: a 128k context is 131,072 tokens)."""

import pytest

from kvbench.cli.app import main
from kvbench.errors import UserError
from kvbench.inputs.lists import token_list


def test_presets_show_kv_bytes_per_token_exactly(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    # llama-3.1-8b: 32 layers x 8 KV heads x 128 head_dim x (key + value) x 2 bytes (float16) = 131,072
    row = next(line for line in out.splitlines() if "llama-3.1-8b" in line)
    assert "131,072 B (128.0 KiB)" in row
    # gpt2: 12 layers x 12 heads x 64 x 2 x 2 bytes = 36,864
    assert "36,864 B (36.0 KiB)" in next(line for line in out.splitlines() if "gpt2" in line)


def test_inspect_shows_the_per_token_rows_exactly(capsys):
    assert main(["inspect", "--model", "phi-3-mini-4k", "--dtype", "float16"]) == 0
    # phi-3-mini: 32 layers x 32 KV heads x 96 head_dim x 2 x 2 bytes = 393,216
    row = next(line for line in capsys.readouterr().out.splitlines() if "per token  " in line)
    assert row.count("393,216 B (384.0 KiB)") == 2  # exact and naive


@pytest.mark.parametrize("text, tokens", [("32k", [32768]), ("128K,4096", [131072, 4096]), ("1k", [1024])])
def test_contexts_take_k_as_1024_tokens(text, tokens):
    assert token_list("--contexts", text) == tokens


@pytest.mark.parametrize("text", ["k", "1.5k", "32m", "-4k"])
def test_a_bad_context_is_refused(text):
    with pytest.raises(UserError, match="--contexts"):
        token_list("--contexts", text)


def test_plan_accepts_32k(capsys):
    assert main(["plan", "--model", "llama-3.1-8b", "--gpu", "h100", "--batch-sizes", "1", "--contexts", "32k"]) == 0
    assert "32768" in capsys.readouterr().out
