"""Small CUDA-path choices, checked on the CPU with fake torch.cuda functions: native bf16 only (a T4 emulates it),
CUDA events on the stream of the model's device."""

from __future__ import annotations

import contextlib

import pytest
import torch

from kvbench.inputs.configs import config_from_dict
from kvbench.measuring.instruments.clock import Clock
from kvbench.measuring.loading.models import bf16_supported, resolve_dtype
from kvbench.plan.plan import local_gpu

BF16_CONFIG = config_from_dict({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 1,
                                "num_attention_heads": 4, "vocab_size": 256, "dtype": "bfloat16"})


class T4:
    name, total_memory, major, minor = "Tesla T4", 15_835_660_288, 7, 5


class A100:
    name, total_memory, major, minor = "NVIDIA A100-SXM4-80GB", 85_100_000_000, 8, 0


@pytest.fixture
def gpus(monkeypatch):
    """cuda:0 an A100, cuda:1 a T4; torch.cuda.device(i) switches the current device; torch's check answers True
    with emulation (as a T4 does: it can make bf16 tensors) and natively only from compute capability 8.0."""
    cards, current = {0: A100(), 1: T4()}, [0]

    @contextlib.contextmanager
    def device(index):
        before, current[0] = current[0], index
        try:
            yield
        finally:
            current[0] = before

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current[0])
    monkeypatch.setattr(torch.cuda, "device", device)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda d=None: cards[current[0] if d is None else d if isinstance(d, int) else d.index])
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: including_emulation or cards[current[0]].major >= 8)
    return current


def test_auto_picks_float16_on_a_card_that_only_emulates_bf16(gpus):
    assert resolve_dtype("auto", torch.device("cuda", 1), BF16_CONFIG) == torch.float16  # the T4
    assert resolve_dtype("auto", torch.device("cuda", 0), BF16_CONFIG) == torch.bfloat16  # the A100
    assert gpus[0] == 0  # the current device is put back
    gpus[0] = 1
    assert resolve_dtype("auto", torch.device("cuda"), BF16_CONFIG) == torch.float16  # "cuda": the current one


def test_local_gpu_counts_native_bf16_only(gpus):
    gpus[0] = 1
    target = local_gpu()
    assert (target.name, target.bf16) == ("Tesla T4", False)
    gpus[0] = 0
    assert local_gpu().bf16 is True


def test_a_torch_without_the_emulation_flag_reads_the_compute_capability(gpus, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)  # an old torch: emulation counts
    assert bf16_supported(torch.device("cuda", 1)) is False
    assert bf16_supported(torch.device("cuda", 0)) is True


def test_clock_records_on_the_stream_of_the_models_device(monkeypatch):
    streams, recorded = [], []

    class Event:
        def __init__(self, enable_timing=False):
            assert enable_timing

        def record(self, stream=None):
            recorded.append(stream)

    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: streams.append(device) or f"s{device}")
    Clock(torch.device("cuda", 1)).mark()
    assert streams == [torch.device("cuda", 1)] and recorded == ["scuda:1"]
    assert isinstance(Clock(torch.device("cpu")).mark(), float) and len(streams) == 1
