"""kvbench.compat answers the same on every supported transformers release (CI runs 4.57.6, 5.17.0, the newest 5.x):
each answer is checked here against what transformers really does in the release installed."""

from __future__ import annotations

import pytest
import torch

from kvbench import compat
from kvbench.errors import UserError


def generate(model, **kwargs):
    ids = torch.randint(3, 200, (1, 6))
    with torch.inference_mode():
        return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, min_new_tokens=3,
                              do_sample=False, return_dict_in_generate=True, pad_token_id=0, **kwargs)


def test_transformers_version_is_the_imported_one():
    import transformers

    assert compat.transformers_version() == tuple(int(x) for x in transformers.__version__.split(".")[:2])
    assert compat.transformers_version() >= (4, 57)  # pyproject.toml's floor


def test_cache_from_output_finds_the_cache_or_none(tiny_loaded):
    cache = compat.cache_from_output(generate(tiny_loaded.model, use_cache=True))
    assert cache.layers[0].keys.shape == (1, 2, 6 + 3 - 1, 16)  # [batch, kv heads, P + N - 1, head_dim]
    assert compat.cache_from_output(generate(tiny_loaded.model, use_cache=False)) is None


def test_rope_parameters_of_llama3_scaling():
    from kvbench.inputs.configs import preset_config

    params = compat.rope_parameters(preset_config("llama-3.1-8b"))
    assert params["rope_type"] == "llama3" and params["factor"] == 8.0
    assert compat.rope_parameters(preset_config("gpt2")) is None  # learned positions, no RoPE


def test_require_names_the_pip_install():
    assert compat.require("json", "json", "nothing") is __import__("json")
    with pytest.raises(UserError, match=r"^a quantized cache needs no_such_module_xyz, which is not installed: "
                                        r"pip install 'kvbench\[quanto\]'$"):
        missing = "no_such_module" + "_xyz"  # not a literal: tests/test_dependencies.py reads require("literal")
        compat.require(missing, "'kvbench[quanto]'", "a quantized cache")


def test_no_kvbench_path_triggers_the_cache_name_deprecation(tiny_loaded):
    """transformers 5.25 logs "`past_key_values`/`cache_params` are deprecated" (once per process) when the old name
    is passed or read; kvbench reads the name the output declares and passes the one generate takes."""
    import logging

    import kvbench
    from kvbench.inputs.scenario import Scenario

    seen = []

    class Catch(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    logging.Logger.warning_once.cache_clear() if hasattr(logging.Logger, "warning_once") else None
    handler = Catch()
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        assert compat.cache_from_output(generate(tiny_loaded.model, use_cache=False)) is None
        for use_cache in (True, False):
            kvbench.measure(tiny_loaded, Scenario(prompt_len=6, new_tokens=3, use_cache=use_cache), repeats=1,
                            warmup=0)
            kvbench.measure(tiny_loaded, Scenario(prompt_len=6, new_tokens=3, use_cache=use_cache,
                                                  engine="reference"), repeats=1, warmup=0)
    finally:
        logger.removeHandler(handler)
    assert not [m for m in seen if "deprecated" in m and "cache" in m], seen


def test_ci_tests_the_releases_compat_declares():
    """.ci/run builds one environment per release in compat.TESTED_RELEASES: the older ones named in its list, the
    newest pinned by .ci/constraints-newest.txt (so a release published later cannot change what CI tests)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    script = (root / ".ci" / "run").read_text()
    older = re.search(r"^EXTRA_TRANSFORMERS=\((.*)\)$", script, re.M).group(1).split()
    pinned = re.findall(r"^transformers==(\S+)$", (root / ".ci" / "constraints-newest.txt").read_text(), re.M)
    assert (*older, *pinned) == compat.TESTED_RELEASES


def test_a_release_beyond_the_newest_tested_is_named(monkeypatch):
    newest = tuple(int(x) for x in compat.TESTED_RELEASES[-1].split(".")[:2])
    monkeypatch.setattr(compat, "transformers_version", lambda: (newest[0], newest[1] + 1))
    assert "newer than the newest release kvbench was tested on" in compat.beyond_tested()
    monkeypatch.setattr(compat, "transformers_version", lambda: newest)
    assert compat.beyond_tested() is None
