"""The allocation-event instrument (`kvbench.measuring.instruments.alloc_peak`) against allocations known by hand: tensors of
known sizes made and freed in a known order, a module whose forward allocates a known pattern (phase and parts),
and generate's peak: deterministic, above the cache it holds, a reused static cache counted as the call's."""

from __future__ import annotations

import torch

import kvbench
from kvbench.inputs.scenario import Scenario
from kvbench.measuring.instruments.alloc_peak import SOURCE, allocation_peak
from kvbench.measuring.engines.engine import GenerateEngine
from kvbench.measuring.measure import allocated_pass
from kvbench.measuring.loading.models import synthetic_inputs
from kvbench.measuring.engines.decode import generate_kwargs, static_cache

MiB = 2**20


def _block(n: int) -> torch.Tensor:
    return torch.empty(n, dtype=torch.uint8)


def test_known_pattern_peak_is_counted_exactly():
    before = _block(5 * MiB)  # held before the block: not part of the peak above it
    with allocation_peak("cpu") as out:
        a = _block(MiB)
        b = _block(MiB)
        del a  # 1 MiB held
        c = _block(MiB)  # 2 MiB
        d = _block(3 * MiB)  # 5 MiB: the peak
        del d
        e = _block(2 * MiB)  # 4 MiB
        del b, c, e
    assert out["peak_allocated_delta_bytes"] == 5 * MiB
    assert out["peak_allocated_source"] == SOURCE and out["peak_allocated_pass_s"] > 0
    del before


def test_nothing_allocated_and_held_bytes():
    with allocation_peak("cpu", held=3 * MiB) as out:
        pass
    assert out["peak_allocated_delta_bytes"] == 3 * MiB == out["peak_allocated_kv_cache_bytes"]


def test_two_passes_agree_and_earlier_blocks_freed_inside_count_as_frees():
    keep, peaks = [], []
    for _ in range(2):
        with allocation_peak("cpu") as out:
            keep.append(_block(2 * MiB))  # kept past the block
            if len(keep) > 1:
                keep.pop(0)  # a block the previous pass made (its size is known): its free lowers the level
            x = _block(MiB)
            del x
        peaks.append(out["peak_allocated_delta_bytes"])
    assert peaks == [3 * MiB, 2 * MiB]  # 2 + 1 held at once; then 2 made, the old 2 freed, 1 made


class Head(torch.nn.Module):
    def forward(self, x):
        return _block(2 * MiB)


class Known(torch.nn.Module):
    """forward k: a 'cache' grows by one 1 MiB block per call, logits of 2 MiB from the head, a 4 MiB scratch."""

    def __init__(self):
        super().__init__()
        self.head = Head()
        self.cache = []

    def get_output_embeddings(self):
        return self.head

    def forward(self, x):
        self.cache.append(_block(MiB))
        scratch = _block(4 * MiB)
        del scratch
        return self.head(None)


def test_a_module_with_a_known_pattern_its_phase_and_parts():
    model = Known()
    with allocation_peak("cpu", model) as out:
        logits = [model(None) for _ in range(3)]  # peaks at the third call's scratch: 3 + 4 + 2 + 2 MiB
        del logits
    assert out["peak_allocated_delta_bytes"] == 11 * MiB
    assert out["peak_allocated_forward"] == 2 and out["peak_allocated_phase"] == "decode"
    assert out["peak_allocated_logits_bytes"] == 4 * MiB  # the two earlier calls' logits, alive
    assert out["peak_allocated_rest_bytes"] == 3 * MiB + 4 * MiB  # made in the forward, outside head and cache
    assert model._forward_pre_hooks == {} and model.head._forward_hooks == {}  # the scopes are gone


def _pass(loaded, scenario):
    engine = GenerateEngine()
    prepared = engine.prepare(loaded, scenario)
    with torch.inference_mode():
        if prepared.cache is not None:  # the cache is made by the first generate; the measured one reuses it
            allocated_pass(loaded, engine, prepared)
        return allocated_pass(loaded, engine, prepared)


def test_generate_peak_is_deterministic_and_holds_the_cache(tiny_loaded):
    scenario = Scenario(32, 6, 2)
    first, second = _pass(tiny_loaded, scenario), _pass(tiny_loaded, scenario)
    assert abs(first["peak_allocated_delta_bytes"] - second["peak_allocated_delta_bytes"]) <= \
        0.01 * first["peak_allocated_delta_bytes"]
    rec = kvbench.measure(tiny_loaded, scenario, repeats=1, warmup=0)
    assert rec["peak_allocated_delta_bytes"] > rec["kv_cache_bytes"] > 0
    assert rec["peak_memory_source"] == SOURCE == rec["peak_memory_source"]
    assert rec["peak_allocated_phase"] in ("prefill", "decode", "prefill, after the forward",
                                           "decode, after the forward")
    parts = [rec[f"peak_allocated_{p}_bytes"] for p in ("kv_cache", "logits", "attention", "generate", "rest")]
    assert sum(parts) == rec["peak_allocated_delta_bytes"]


def test_a_reused_static_cache_counts_as_allocated_by_the_call(tiny_loaded):
    static = _pass(tiny_loaded, Scenario(32, 6, 2, cache_implementation="static"))
    from kvbench.estimate.kvcache import estimate_kv_cache_bytes

    kv = estimate_kv_cache_bytes(tiny_loaded.config, batch_size=2, prompt_len=32, new_tokens=6, dtype=torch.float32,
                                 cache_implementation="static")
    assert static["peak_allocated_kv_cache_bytes"] >= kv
    assert static["peak_allocated_delta_bytes"] > kv
