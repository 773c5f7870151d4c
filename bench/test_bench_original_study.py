"""The original study's scenario: a 55-token prompt, 100 new tokens, batch 1, greedy, with and without the cache.

It measured `generate` with Phi-3-mini-4k-instruct in fp16 on a T4: 9.53 s with the cache, 38.8 s without (4.07x),
one run each. Here it runs on --kv-model (e.g. `--kv-model phi-3-mini-4k --kv-device cuda --kv-dtype float16`
reproduces its setting); pytest-benchmark's table shows the ratio between the two rows.
"""

import pytest

from kvbench import Scenario

STUDY = [Scenario(prompt_len=55, new_tokens=100, batch_size=1, use_cache=c, decoding="greedy") for c in (True, False)]


@pytest.mark.benchmark(group="original-study-P55-N100-B1-greedy")
@pytest.mark.parametrize("use_cache", [s.use_cache for s in STUDY], ids=[s.id for s in STUDY])
def test_original_study(kv_benchmark, use_cache):
    scenario = next(s for s in STUDY if s.use_cache == use_cache)
    record = kv_benchmark(scenario)
    assert record["positions_processed"] == (154 if use_cache else 100 * 55 + 99 * 100 // 2)
