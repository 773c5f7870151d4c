"""Paged attention as a measured engine: a scenario's batch as continuous-batching requests (``generate_batch``).

* The pool is sized explicitly (`kvbench.estimate.paged.paged_sizing`): every request at once, none preempted;
  the scheduler's safety margin is 0, so all are admitted together; EOS is disabled so each makes exactly N tokens.
* One manager serves a scenario: the first call (a warm-up, when there is one) starts it and reserves the pool, the
  timed calls reuse it (``persistent_manager``), and it is destroyed after the scenario. Memory deltas count the
  reused pool as the call's own, as if the call had reserved it.
* Timing comes from the requests' own timestamps (perf_counter, taken as each token reaches the host): ``total_s``
  from the first request's creation to the last one's end, ``ttft_s`` the median of first token minus creation,
  decode steps the median over requests of the gaps between their tokens; ``paged_call_s`` is the whole
  ``generate_batch`` call (manager start and stop included).
* Bytes: ``kv_cache_bytes`` is the pool the cache reserves (``cache_tensor``, or 5.17's per-layer ``key_cache`` /
  ``value_cache``: kind ``paged_pool``);
  ``kv_cache_paged_used_bytes`` the blocks the requests held when they finished (read as each is freed).
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import time

import dataclasses

import torch

from ... import compat
from ...estimate.paged import paged_sizing, paged_used_bytes
from ...inputs.decoding import sampling_kwargs
from ...inputs.scenario import Scenario
from ..instruments.cache_bytes import cache_nbytes
from ..loading.models import LoadedModel, synthetic_inputs
from .base import Prepared, Ran


def paged_configs(model, scenario: Scenario):
    """(GenerationConfig, ContinuousBatchingConfig) of a scenario: exactly N tokens, the pool sized for it."""
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    sampling = dict(do_sample=scenario.decoding == "sample", **sampling_kwargs(scenario))  # the scenario's own
    pad = getattr(model.generation_config, "pad_token_id", None)
    generation = GenerationConfig(max_new_tokens=scenario.new_tokens, eos_token_id=-1,  # -1: no EOS, N tokens
                                  pad_token_id=0 if pad is None else pad, **sampling)
    sizing = paged_sizing(scenario.batch_size, scenario.prompt_len, scenario.new_tokens)
    batching = ContinuousBatchingConfig(**{compat.paged_page_size_option(): sizing.page_size},
                                        num_blocks=sizing.num_blocks, max_batch_tokens=sizing.max_batch_tokens,
                                        safety_margin=0.0, seed=scenario.seed)
    return generation, batching


@contextlib.contextmanager
def _quiet():
    """Continuous batching's logger says at every call that the manager persists: silenced inside kvbench's calls."""
    cb_logger, tf_logger = logging.getLogger("ContinuousBatchingLogger"), logging.getLogger("transformers")
    levels = cb_logger.level, tf_logger.level
    cb_logger.setLevel(logging.ERROR)
    tf_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        cb_logger.setLevel(levels[0])
        tf_logger.setLevel(levels[1])


def manager_cache(model):
    """The PagedAttentionCache of the model's persistent continuous-batching manager (None before the first call)."""
    manager = getattr(model, "_cached_continuous_batching_manager", None)
    processor = getattr(manager, "batch_processor", None)
    return getattr(processor, "cache", None)


def watch_blocks(cache, held: list[int]) -> None:
    """Record in `held`, as each request is freed, the bytes of the blocks it held (an instance-level wrapper of the
    cache's `free_blocks`, installed once; each call gives its own list)."""
    cache._kvbench_held = held
    if getattr(cache, "_kvbench_watched", False):
        return
    free = cache.free_blocks

    def free_blocks(request_id, *args, **kwargs):
        cache._kvbench_held.append(sum(len(table.get(request_id, [])) * per_block
                                       for table, per_block in compat.paged_block_tables(cache)))
        return free(request_id, *args, **kwargs)

    cache.free_blocks = free_blocks
    cache._kvbench_watched = True


class PagedEngine:
    """Continuous batching (``generate_batch``) as an engine (`engines.engine`): the scenario's batch as requests,
    timed by their own timestamps (forward calls pack every request's tokens: not per-sequence steps)."""

    name = "paged"
    per_forward = False  # no forward probes, labels or profiled steps: the calls run in the manager's thread

    def __init__(self, check_tokens: bool = False):
        self.check_tokens = check_tokens  # also compare greedy tokens with generate's (equal in float32)

    def prepare(self, loaded: LoadedModel, scenario: Scenario) -> Prepared:
        inputs = synthetic_inputs(loaded.config, scenario.batch_size, scenario.prompt_len, loaded.device,
                                  scenario.seed)
        state = {"prompts": inputs["input_ids"].tolist(), "configs": paged_configs(loaded.model, scenario),
                 "model": loaded.model}
        return Prepared(scenario, inputs, state=state)

    def reset(self, prepared: Prepared) -> int:
        """The pool the persistent manager reserved (0 before the first call, which reserves it)."""
        cache = manager_cache(prepared.state["model"])
        return cache_nbytes(cache) if cache is not None else 0

    def run_once(self, loaded: LoadedModel, prepared: Prepared) -> Ran:
        """One ``generate_batch``: per-request timings, the pool and the blocks used; the tokens it made."""
        scenario, (generation, batching) = prepared.scenario, prepared.state["configs"]
        prompts = prepared.state["prompts"]
        held: list[int] = []
        if (cache := manager_cache(loaded.model)) is not None:
            watch_blocks(cache, held)
        with _quiet():
            start = time.perf_counter()
            outputs = loaded.model.generate_batch(inputs=prompts, generation_config=generation,
                                                  continuous_batching_config=batching, record_timestamps=True,
                                                  persistent_manager=True, progress_bar=False)
            call_s = time.perf_counter() - start
        results = list(outputs.values())
        failed = [r for r in results if r.error is not None]
        if len(results) != len(prompts) or failed:
            raise RuntimeError(f"continuous batching lost requests: {failed[0].error if failed else 'missing results'}")
        tokens = [list(r.generated_tokens) for r in results]
        if any(len(t) != scenario.new_tokens or len(r.timestamps or []) != scenario.new_tokens
               for t, r in zip(tokens, results)):
            raise RuntimeError("continuous batching preempted or stopped a request early: the pool was too small")
        gaps = [[b - a for a, b in zip(r.timestamps, r.timestamps[1:])] for r in results]
        timings = {"total_s": max(r.lifespan[1] for r in results) - min(r.created_time for r in results),
                   "ttft_s": statistics.median(r.timestamps[0] - r.created_time for r in results),
                   "decode_steps_s": [statistics.median(step) for step in zip(*gaps)]}
        fields = {"paged_call_s": call_s, "tokens": tokens, "kv_cache_paged_used_bytes": sum(held) if held else None}
        return Ran((len(prompts), scenario.prompt_len + scenario.new_tokens), manager_cache(loaded.model), timings,
                   fields)

    def grad_mode(self):
        return compat.paged_grad_mode()

    def close(self, loaded: LoadedModel, prepared: Prepared) -> None:
        destroy_manager(loaded.model)
        prepared.release()

    def fields(self, loaded: LoadedModel, scenario: Scenario, runs: list[dict]) -> dict:
        reference = None
        if self.check_tokens and scenario.decoding == "greedy":
            plain = dataclasses.replace(scenario, cache_implementation="dynamic")
            inputs = synthetic_inputs(loaded.config, scenario.batch_size, scenario.prompt_len, loaded.device,
                                      scenario.seed)
            with torch.inference_mode():
                out = loaded.model.generate(**inputs, **plain.generate_kwargs())
            reference = out.sequences[:, scenario.prompt_len:].tolist()
        return paged_fields(loaded, scenario, runs, reference)


def destroy_manager(model) -> None:
    """Stop and drop the model's persistent continuous-batching manager (and its pool)."""
    with _quiet():
        model.destroy_cached_continuous_batching_manager()


def paged_fields(loaded, scenario: Scenario, runs: list[dict], reference_tokens: list[list[int]] | None) -> dict:
    """The record fields only paged scenarios have, beside `summarize`'s (which gets no forward positions: the
    forward calls pack every request's tokens together)."""
    try:
        used = paged_used_bytes(loaded.config, dtype=loaded.dtype, batch_size=scenario.batch_size,
                                prompt_len=scenario.prompt_len, new_tokens=scenario.new_tokens)
    except NotImplementedError:
        used = None
    out = {"forward_calls": None, "positions_per_call": None, "positions_processed": None,
           "paged_call_s": statistics.median(r["paged_call_s"] for r in runs),
           "kv_cache_paged_used_bytes": runs[-1]["kv_cache_paged_used_bytes"],
           "kv_cache_paged_used_bytes_estimate": used}
    if reference_tokens is not None:
        out["paged_tokens_match_generate"] = reference_tokens == runs[-1]["tokens"]
    return out
