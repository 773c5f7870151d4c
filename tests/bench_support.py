"""Helpers for the tests of kvbench's pytest plugin and of the pytest-benchmark JSON loader.

The suites under test are the real ones in bench/ (copied, with bench/conftest.py, into a pytester folder) on a
model built from a tiny config written by the test: nothing is downloaded and nothing under /work is read.
"""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"

# 2 layers, grouped-query attention (4 heads, 2 KV heads), 256 positions (the original study needs 155):
# generate takes milliseconds.
TINY = {
    "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256, "max_position_embeddings": 256,
}


def write_tiny_config(folder: Path) -> Path:
    path = Path(folder) / "tiny-llama.json"
    path.write_text(json.dumps(TINY))
    return path


def copy_bench(pytester, *suites: str) -> None:
    """bench/conftest.py and the named suites of bench/, into the pytester folder.

    When the outer session collected bench/ too (`pytest tests bench`), its modules of the same names are in
    sys.modules; they are hidden for the inner run (pytester restores sys.modules afterwards).
    """
    pytester.makeconftest((BENCH / "conftest.py").read_text())
    for name in suites:
        sys.modules.pop(name, None)
        pytester.makepyfile(**{name: (BENCH / f"{name}.py").read_text()})


def kv_args(config: Path, prompt_len="8", new_tokens="4", batch_size="1,2", rounds="2") -> list[str]:
    """A small grid on the tiny model: 2 batch sizes x cache on/off = 4 scenarios."""
    return [
        "-p", "no:cacheprovider", f"--kv-model={config}", f"--kv-prompt-len={prompt_len}",
        f"--kv-new-tokens={new_tokens}", f"--kv-batch-size={batch_size}", f"--kv-rounds={rounds}",
    ]


def strict_json(path: Path):
    """Parse as strict JSON: NaN / Infinity (which pytest-benchmark would write bare) raise."""

    def refuse(constant):
        raise ValueError(f"{path}: non-JSON constant {constant}")

    return json.loads(Path(path).read_text(), parse_constant=refuse)


@pytest.fixture(scope="session")
def transformers_imported():
    """Import what building and running the tiny model imports, before any in-process pytester run.

    pytester's in-process runs drop the modules first imported during the run; transformers' lazy modules
    (and torch's operator registrations) do not survive being imported twice. Then the objects alive so far
    are frozen out of the garbage collector: the in-process runs share this process's heap.
    """
    import torch

    from kvbench.inputs.configs import config_from_dict
    from kvbench.inputs.scenario import Scenario
    from kvbench.measuring.instruments.environment import environment
    from kvbench.measuring.measure import as_loaded, measure
    from kvbench.measuring.loading.models import random_model

    loaded = as_loaded(random_model(config_from_dict(dict(TINY)), torch.device("cpu"), torch.float32).eval())
    for scenario in (Scenario(4, 2), Scenario(4, 2, use_cache=False), Scenario(4, 2, cache_implementation="static")):
        measure(loaded, scenario, repeats=1, warmup=0)
    environment("cpu")
    gc.collect()
    gc.freeze()  # kvbench.measure collects garbage around every generate: skip the millions of objects seen so far
