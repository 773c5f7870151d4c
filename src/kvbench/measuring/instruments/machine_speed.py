"""The machine's speed at a moment: a short fixed reference workload, timed before each scenario.

Two figures: `machine_reference_s`, the median time of a fixed float32 matrix product on the model's device
(`REFERENCE_SIZE`: 384 x 384 on the CPU, 4096 x 4096 on CUDA, three products per timing, `REFERENCE_TIMINGS`
timings) — it depends on the machine alone, so `compare` divides timings by its ratio between runs; and
`machine_reference_forward_s`, one forward of the loaded model on 8 tokens of one sequence (median of three), which
moves with the model code as well, so it is recorded but normalises nothing.
"""

from __future__ import annotations

import statistics
from time import perf_counter

import torch

REFERENCE_SIZE = {"cpu": 384, "cuda": 4096}
REFERENCE_TIMINGS = 5
PRODUCTS = 3
FORWARD_TOKENS = 8


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_it(fn, device: torch.device, times: int) -> float:
    """The median wall time of `fn()` over `times` calls, after one untimed call."""
    fn()
    out = []
    for _ in range(times):
        _sync(device)
        start = perf_counter()
        fn()
        _sync(device)
        out.append(perf_counter() - start)
    return statistics.median(out)


def matmul_reference_s(device: torch.device) -> float:
    n = REFERENCE_SIZE.get(device.type, REFERENCE_SIZE["cpu"])
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.rand(n, n, generator=gen).to(device)
    b = torch.rand(n, n, generator=gen).to(device)

    def products():
        for _ in range(PRODUCTS):
            torch.mm(a, b)

    return time_it(products, device, REFERENCE_TIMINGS)


def machine_speed(loaded) -> dict:
    """`machine_reference_s` and `machine_reference_forward_s` (None where the forward fails, with the reason)."""
    from ..loading.models import synthetic_inputs

    device = torch.device(loaded.device)
    out = {"machine_reference_s": matmul_reference_s(device),
           "machine_reference_workload": f"{PRODUCTS} x float32 matmul "
                                         f"{REFERENCE_SIZE.get(device.type, REFERENCE_SIZE['cpu'])}^2"}
    try:
        inputs = synthetic_inputs(loaded.config, 1, FORWARD_TOKENS, device, 0)
        with torch.inference_mode():
            out["machine_reference_forward_s"] = time_it(lambda: loaded.model(**inputs, use_cache=False), device, 3)
    except Exception as exc:  # a model whose plain forward needs more than input ids: the matmul still tells
        out["machine_reference_forward_s"] = None
        out["machine_reference_forward_error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return out
