"""The pytest plugin's --kv-on-oom: under skip-larger, the tests of scenarios larger than one that ran out of memory
are skipped, naming it; under continue (the default) they run (and run out of memory too)."""

from __future__ import annotations

import pytest
from bench_support import kv_args, transformers_imported, write_tiny_config  # noqa: F401

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.usefixtures("transformers_imported")
OOM_ID = "P8-N2-B2-cache-dynamic-greedy"

PLUGIN_TEST = """
import torch

def test_generate(kv_benchmark, kv_scenario, kv_model, monkeypatch):
    real = kv_model.model.generate

    def generate(*args, **kwargs):
        batch, prompt = kwargs["input_ids"].shape
        if kwargs["use_cache"] and batch >= 2 and prompt >= 8:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(kv_model.model, "generate", generate)
    kv_benchmark(kv_scenario)
"""


@pytest.mark.parametrize("on_oom, skipped_larger", [("skip-larger", True), ("continue", False)])
def test_plugin_skips_the_tests_of_larger_scenarios(pytester, tmp_path, on_oom, skipped_larger):
    pytester.makepyfile(PLUGIN_TEST)
    result = pytester.runpytest(*kv_args(write_tiny_config(tmp_path), prompt_len="4,8,16", new_tokens="2",
                                         batch_size="1,2", rounds="1"),
                                "--kv-use-cache=on", f"--kv-on-oom={on_oom}", "-rs", "--benchmark-disable")
    result.assert_outcomes(passed=4, skipped=2)  # P8-B2 out of memory; P16-B2 out of memory or skipped for it
    text = result.stdout.str()
    assert (f"not run: larger than {OOM_ID}, which ran out of memory" in text) == skipped_larger


def test_plugin_refuses_an_unknown_on_oom(pytester):
    pytester.makepyfile(PLUGIN_TEST)
    result = pytester.runpytest("-p", "no:cacheprovider", "--kv-on-oom=sometimes")
    assert "--kv-on-oom: 'sometimes' is not one of continue, skip-larger" in result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
