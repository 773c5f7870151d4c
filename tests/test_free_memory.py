"""Memory freed after a failure really frees: by the time free_memory runs (where it empties torch's cache), the
tensors of the failed generate are dead, at every site that recovers from one (measure, the sweep runner, the pytest
plugin, the frontier search), and nothing that site returns or raises keeps them alive.

A tensor allocated inside a failing generate is watched through a weak reference; free_memory is wrapped by a spy
that notes, once the real one has run, whether each watched tensor was still alive.
"""

from __future__ import annotations

import weakref

import pytest
import torch

import kvbench.measuring.measure as measure_module
import kvbench.measuring.harness.rounds as rounds_module
import kvbench.measuring.harness.runner as runner_module
from kvbench import Scenario, measure
from kvbench.measuring.harness.runner import run_sweep
from kvbench.plan.frontier import search_longest_context
from kvbench.pytest_plugin import benchmark_generate

OOM = "CUDA out of memory. Tried to allocate 2.00 GiB"


class Watch:
    """Tensors made inside failing calls (weak references only), and what free_memory saw of them."""

    def __init__(self):
        self.refs: list[weakref.ref] = []
        self.seen_alive: list[list[bool]] = []  # per free_memory call: which watched tensors were still alive

    def tensor(self) -> torch.Tensor:
        t = torch.ones(1024, 1024)  # 4 MiB, held by the failing frame only
        self.refs.append(weakref.ref(t))
        return t

    def alive(self) -> list[bool]:
        return [r() is not None for r in self.refs]

    def spy(self, real):
        def free_memory(*device):
            real(*device)
            self.seen_alive.append(self.alive())

        return free_memory

    def failing(self, error: type[Exception], message: str):
        def generate(*args, **kwargs):
            held = self.tensor()  # noqa: F841 - a local of the failing frame, as generate's activations are
            raise error(message)  # a new exception each call (one kept by the closure would keep its traceback)

        return generate


@pytest.fixture
def watch(monkeypatch):
    w = Watch()
    spy = w.spy(measure_module.free_memory)
    monkeypatch.setattr(measure_module, "free_memory", spy)
    monkeypatch.setattr(runner_module, "free_memory", spy)
    monkeypatch.setattr(rounds_module, "free_memory", spy)  # the pytest plugin's rounds
    return w


def test_measure_frees_after_leaving_its_except_block(tiny_loaded, watch, monkeypatch):
    monkeypatch.setattr(tiny_loaded.model, "generate", watch.failing(torch.OutOfMemoryError, OOM))
    record = measure(tiny_loaded, Scenario(4, 2), repeats=2, warmup=1)
    assert record["status"] == "oom" and record["error"] == OOM
    assert len(watch.refs) == 1  # the warm-up failed; nothing ran after it
    assert watch.seen_alive[-1] == [False]  # dead when free_memory ran after the failure
    assert watch.alive() == [False]


def test_measure_accepts_an_out_of_memory_message(tiny_loaded, watch, monkeypatch):
    """cuBLAS near a cap raises a plain RuntimeError: is_oom reads the message, and the record is "oom"."""
    monkeypatch.setattr(tiny_loaded.model, "generate", watch.failing(RuntimeError, "CUBLAS_STATUS_ALLOC_FAILED"))
    record = measure(tiny_loaded, Scenario(4, 2), repeats=1, warmup=0)
    assert record["status"] == "oom" and watch.seen_alive[-1] == [False]


def test_sweep_frees_after_leaving_its_except_block(tiny_loaded, watch, monkeypatch, tmp_path):
    """A scenario that fails with another error becomes an "error" record; its memory is freed outside the block."""
    monkeypatch.setattr(tiny_loaded.model, "generate", watch.failing(ValueError, "boom"))
    records = run_sweep(tiny_loaded, [Scenario(4, 2), Scenario(6, 2)], tmp_path / "run", repeats=1, warmup=0)
    assert [r["status"] for r in records] == ["error", "error"]
    assert records[0]["error"] == "ValueError: boom" and "ValueError: boom" in records[0]["traceback"]
    # free_memory runs at the start of each measure and after each failure: after the first failure the first
    # tensor is dead, after the second both are
    assert [False] in watch.seen_alive and watch.seen_alive[-1] == [False, False]
    assert watch.alive() == [False, False]


class FakeBenchmark:
    """The part of pytest-benchmark's fixture benchmark_generate uses: pedantic runs setup then the target."""

    group, has_error = None, False

    def __init__(self):
        self.extra_info = {}

    def pedantic(self, target, setup=None, teardown=None, rounds=1, warmup_rounds=0, iterations=1):
        args, kwargs = setup()
        target(*args, **kwargs)
        teardown(*args, **kwargs)


def test_plugin_frees_then_skips_outside_its_except_block(tiny_loaded, watch, monkeypatch):
    monkeypatch.setattr(tiny_loaded.model, "generate", watch.failing(torch.OutOfMemoryError, OOM))
    with pytest.raises(pytest.skip.Exception, match="out of memory on cpu") as skipped:
        benchmark_generate(FakeBenchmark(), tiny_loaded, Scenario(4, 2), rounds=1, warmup_rounds=0)
    assert skipped.value.__context__ is None  # the skip does not carry the OOM (and its frames) along
    assert watch.seen_alive[-1] == [False]
    assert watch.alive() == [False]  # while pytest still holds the skip and its traceback


def test_frontier_recovers_after_leaving_its_except_block():
    watch = Watch()

    def probe(batch_size, context_len):
        if context_len > 100:
            watch.failing(torch.OutOfMemoryError, OOM)()
        return {"batch_size": batch_size, "status": "ok"}

    result = search_longest_context(probe, 1, min_context=2, max_context=400, resolution=8,
                                    recover=lambda: watch.seen_alive.append(watch.alive()))
    ok, oom = result["longest_ok_context"], result["shortest_oom_context"]
    assert ok <= 100 < oom and oom - ok <= 8
    assert len(watch.refs) == len(watch.seen_alive) > 0  # recovered once per failed probe
    # at each recovery every tensor made so far, the latest failure's included, was already dead
    assert all(not any(seen) for seen in watch.seen_alive)


def test_free_memory_names_the_device(monkeypatch):
    """Peak statistics restart on the device given (cuda:1 here), and a CPU device leaves CUDA alone."""
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append("empty_cache"))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: calls.append(device))
    measure_module.free_memory(torch.device("cuda", 1))
    assert calls == ["empty_cache", torch.device("cuda", 1)]
    calls.clear()
    measure_module.free_memory("cpu")
    assert calls == []
