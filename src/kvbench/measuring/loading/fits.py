"""Before a model is built: do its weights fit the device's free memory? One clear line if not, instead of a
load that runs for a minute and dies with a traceback.

The weights' bytes come from the config alone (`estimate.weights.weight_bytes_estimate`: the model built on the
meta device); the free memory from `torch.cuda.mem_get_info` on a GPU and from `psutil.virtual_memory().available`
(what the OS can give without swapping) on the CPU.
"""

from __future__ import annotations

import torch

from ...errors import UserError
from ...units import fmt_bytes


def free_memory_bytes(device: torch.device) -> tuple[int, str]:
    """Bytes free on `device` now, and what they are ("free GPU memory", "available RAM")."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free), f"free GPU memory on {device}"
    import psutil

    return int(psutil.virtual_memory().available), "available RAM"


def check_weights_fit(name: str, config, device: torch.device, dtype: torch.dtype) -> int | None:
    """Raise UserError when the weights of `config` in `dtype` exceed the free memory of `device`; returns the
    weights' bytes (None where the config cannot be built to count them: the load itself will say why)."""
    from ...estimate.weights import weight_bytes_estimate

    try:
        weights = weight_bytes_estimate(config, dtype)
    except (ValueError, KeyError, ImportError, NotImplementedError):  # e.g. a model type only remote code knows
        return None
    free, what = free_memory_bytes(device)
    if weights > free:
        hint = "a half dtype (--dtype bfloat16), " if dtype == torch.float32 else ""
        raise UserError(
            f"{name} needs {fmt_bytes(weights)} for its weights in {str(dtype).removeprefix('torch.')}, but the "
            f"{what} is {fmt_bytes(free)}: use {hint}a smaller model or a device with more memory"
        )
    return weights
