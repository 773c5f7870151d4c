"""Paged attention through continuous batching (kvbench.measuring.engines.paged, kvbench.estimate.paged): the pool reserved
and the blocks used, equal to the estimate; tokens equal to generate's in float32 greedy; per-request timings."""

from __future__ import annotations

import json

import pytest
import torch
from cache_models import build

from kvbench import Scenario, UserError, compat
from kvbench.estimate.paged import paged_pool_bytes, paged_sizing, paged_used_bytes
from kvbench.measuring.engines import caches
from kvbench.measuring.instruments.cache_bytes import cache_nbytes_by_kind
from kvbench.measuring.engines.paged import PagedEngine
from kvbench.measuring.measure import measure
from kvbench.measuring.loading.models import LoadedModel
from kvbench.measuring.engines.paged import manager_cache, paged_configs

# 4.x has no ContinuousBatchingConfig: paged is refused there (the refusal: tests/test_caches.py)
pytestmark = pytest.mark.skipif(compat.paged_layout() is None,
                                reason=caches.needs("--cache-implementation paged", compat.PAGED_SINCE))


def _loaded(arch: str) -> LoadedModel:
    config, model = build(arch)
    return LoadedModel(name=arch, model=model, config=config, device=torch.device("cpu"), dtype=torch.float32,
                       source="test")


@pytest.mark.parametrize("batch, prompt, new, decoding", [(3, 12, 6, "greedy"), (1, 245, 8, "greedy"),
                                                          (2, 12, 4, "sample")])
def test_paged_record_matches_the_estimate_and_generate(batch, prompt, new, decoding):
    loaded = _loaded("llama")
    record = measure(loaded, Scenario(prompt, new, batch, cache_implementation="paged", decoding=decoding),
                     repeats=2, warmup=1, engine=PagedEngine(check_tokens=True))
    assert record["status"] == "ok" and record["cache_class"] == "PagedAttentionCache"
    sizing = paged_sizing(batch, prompt, new)
    pool = paged_pool_bytes(loaded.config, dtype=torch.float32, num_blocks=sizing.num_blocks)
    assert record["kv_cache_bytes"] == record["kv_cache_kind_paged_pool_bytes"] == record["kv_cache_bytes_estimate"]
    assert record["kv_cache_bytes"] == pool
    assert record["kv_cache_paged_used_bytes"] == record["kv_cache_paged_used_bytes_estimate"] > 0
    # 2 layers x (keys + values) x 2 KV heads x 32 x float32 x 256 tokens a block, per block a request holds
    blocks = batch * -(-(prompt + new - 1) // 256)
    assert record["kv_cache_paged_used_bytes"] == blocks * 2 * 2 * 2 * 32 * 4 * 256
    if decoding == "greedy":
        assert record["paged_tokens_match_generate"] is True
    assert len(record["decode_steps_s"]) == new - 1 and 0 < record["ttft_s"] <= record["total_s"]
    assert record["paged_call_s"] >= record["total_s"]
    assert manager_cache(loaded.model) is None  # the manager does not outlive the scenario
    json.dumps(record, allow_nan=False)
    assert all(not isinstance(v, dict) for v in record.values())


@pytest.mark.parametrize("page_size, num_blocks", [(16, 3), (5, 3), (7, 11)])
def test_pool_rule_with_sectors_of_several_blocks(page_size, num_blocks):
    """Blocks whose bytes are not a multiple of 128 make sectors of several blocks (lcm), and the pool rounds up."""
    config, model = build("llama")
    generation, batching = paged_configs(model, Scenario(4, 2, 1, cache_implementation="paged"))
    batching.num_blocks, batching.max_batch_tokens = num_blocks, 8
    setattr(batching, compat.paged_page_size_option(), page_size)  # block_size in 5.17
    prompts = [[5, 6, 7, 8]]
    try:
        out = model.generate_batch(inputs=prompts, generation_config=generation, continuous_batching_config=batching,
                                   persistent_manager=True)
        pool = manager_cache(model)
        assert cache_nbytes_by_kind(pool) == {"paged_pool": paged_pool_bytes(config, dtype=torch.float32,
                                                                            num_blocks=num_blocks,
                                                                            page_size=page_size)}
        assert len(next(iter(out.values())).generated_tokens) == 2
    finally:
        model.destroy_cached_continuous_batching_manager()


def test_measure_routes_paged_and_greedy_tokens_equal_generate():
    loaded = _loaded("llama")
    record = measure(loaded, Scenario(10, 5, 2, cache_implementation="paged"), repeats=1, warmup=1)
    assert record["cache_class"] == "PagedAttentionCache" and record["kv_cache_bytes"] == record["kv_cache_bytes_estimate"]
    ids = torch.randint(3, 100, (2, 10))
    model = loaded.model
    generation, batching = paged_configs(model, Scenario(10, 5, 2, cache_implementation="paged"))
    try:
        out = model.generate_batch(inputs=ids.tolist(), generation_config=generation,
                                   continuous_batching_config=batching)
    finally:
        model.destroy_cached_continuous_batching_manager()
    reference = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, min_new_tokens=5,
                               do_sample=False)
    assert [o.generated_tokens for o in out.values()] == reference[:, 10:].tolist()


def test_sliding_windows_run_but_their_pool_is_not_estimated():
    loaded = _loaded("mistral")
    record = measure(loaded, Scenario(12, 3, 1, cache_implementation="paged"), repeats=1, warmup=0)
    assert record["status"] == "ok" and record["kv_cache_bytes"] > 0
    assert record["kv_cache_bytes_estimate"] is None and "full-attention layers only" in record["kv_cache_estimate_error"]
    with pytest.raises(NotImplementedError):
        paged_used_bytes(loaded.config, dtype="float32", batch_size=1, prompt_len=4, new_tokens=2)


@pytest.mark.parametrize("arch, kwargs, named", [("llama", dict(decoding="beam", num_beams=2), "beam search"),
                                                 ("mamba2", {}, "linear_attention"), ("lfm2", {}, "conv")])
def test_what_continuous_batching_cannot_run_is_refused(arch, kwargs, named):
    with pytest.raises(UserError, match=named):
        caches.check_cache(_loaded(arch), Scenario(8, 3, cache_implementation="paged", **kwargs))



@pytest.mark.parametrize("temperature, top_k, top_p", [(0.5, 7, 0.9), (1.7, 0, 1.0)])
def test_paged_samples_with_the_scenarios_settings(temperature, top_k, top_p):
    """Continuous batching samples at the scenario's temperature, top-k and top-p (it once sampled at 1.0/50/1.0
    whatever the scenario said, under a record labelled with the scenario's values)."""
    config, model = build("llama")
    scenario = Scenario(4, 2, 1, cache_implementation="paged", decoding="sample", temperature=temperature,
                        top_k=top_k, top_p=top_p)
    generation, _ = paged_configs(model, scenario)
    assert generation.do_sample is True
    assert (generation.temperature, generation.top_k, generation.top_p) == (temperature, top_k, top_p)
    greedy, _ = paged_configs(model, Scenario(4, 2, 1, cache_implementation="paged"))
    assert greedy.do_sample is False
