"""A model across several devices with accelerate: `--device-map auto|balanced|balanced_low_0|sequential|JSON` and
`--max-memory 0=70GiB,cpu=200GiB`, for presets (random weights) and local or Hub weights alike.

Random-weight models are built with parameters on the meta device (buffers such as rotary tables real, on the CPU),
placed by `accelerate.infer_auto_device_map`, materialised module by module on their devices, and dispatched with
accelerate's hooks (layers placed on "cpu" behind a GPU are offloaded: their weights stay in host memory and are
streamed to the GPU at each forward).
"""

from __future__ import annotations

import json

import torch

from ...errors import UserError
from ...results.cache_fields import device_fields
from ...units import parse_bytes

STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")


def _device(value, option: str):
    """A device of a map or a --max-memory key: a GPU index (0, "0", "cuda:0") or "cpu"; refuses the rest."""
    text = str(value).strip()
    if text == "cpu":
        return "cpu"
    index = text.removeprefix("cuda:")
    if not index.isdigit():
        raise UserError(f"{option}: unknown device {value!r} (use a GPU index such as 0 or cuda:0, or cpu)")
    if int(index) >= torch.cuda.device_count():
        raise UserError(f"{option}: device {value!r} does not exist (torch sees {torch.cuda.device_count()} GPUs)")
    return int(index)


def parse_device_map(text: str | None):
    """None, a strategy name, or a JSON object {module name: device}."""
    if text is None:
        return None
    text = str(text).strip()
    if text in STRATEGIES:
        return text
    try:
        mapping = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"--device-map: {text!r} is neither one of {', '.join(STRATEGIES)} nor JSON ({exc.msg})") \
            from None
    if not isinstance(mapping, dict) or not mapping:
        raise UserError(f"--device-map: {text!r} must be a JSON object of module name -> device")
    return {str(name): _device(dev, "--device-map") for name, dev in mapping.items()}


def parse_max_memory(text: str | None) -> dict | None:
    """"0=70GiB,cpu=200GiB" -> {0: bytes, "cpu": bytes}."""
    if text is None:
        return None
    limits = {}
    for part in str(text).split(","):
        key, sep, size = part.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--max-memory: {part!r} is not DEVICE=SIZE (e.g. 0=70GiB,cpu=200GiB)")
        limits[_device(key, "--max-memory")] = parse_bytes(size, "--max-memory", minimum=1)
    return limits


def _strategy_memory(model, strategy: str, max_memory, dtype):
    from accelerate.utils import get_balanced_memory

    if strategy in ("balanced", "balanced_low_0"):
        return get_balanced_memory(model, max_memory=max_memory, dtype=dtype, low_zero=strategy == "balanced_low_0",
                                   no_split_module_classes=model._no_split_modules or [])
    return max_memory


def infer_map(model, device_map, max_memory, dtype) -> dict:
    """The placement of every module: the user's map, or accelerate's for a strategy. Refuses one that needs disk."""
    from accelerate import infer_auto_device_map

    if isinstance(device_map, dict):
        return device_map
    placed = infer_auto_device_map(model, max_memory=_strategy_memory(model, device_map, max_memory, dtype),
                                   no_split_module_classes=model._no_split_modules or [], dtype=dtype)
    if not placed or "disk" in placed.values():
        shown = ", ".join(f"{k}={v}" for k, v in (max_memory or {}).items()) or "the devices' free memory"
        raise UserError(f"--max-memory {shown}: the weights do not fit (they would spill to disk)")
    return placed


def _random_(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.normal_(0.0, 0.02) if tensor.is_floating_point() else tensor.zero_()


def placed_random_model(config, dtype: torch.dtype, device_map, max_memory=None):
    """Random weights placed by `device_map` (a strategy or a map), dispatched with accelerate's hooks.

    Returns (model, the placement {module: device})."""
    from accelerate import dispatch_model, init_empty_weights
    from accelerate.utils import set_module_tensor_to_device
    from transformers import AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    placement = infer_map(model, device_map, max_memory, dtype)
    for name, param in model.named_parameters():
        device = _device_of(name, placement)
        value = _random_(torch.empty(param.shape, dtype=param.dtype, device="cpu" if device == "cpu" else device))
        set_module_tensor_to_device(model, name, device, value=value)
    model.tie_weights()
    devices = {d for d in placement.values()}
    if devices == {"cpu"}:
        return model, placement
    return dispatch_model(model, device_map=placement), placement


def _device_of(name: str, placement: dict):
    """The device of a parameter: that of the longest module prefix of its name in the placement."""
    best, device = -1, None
    for module, dev in placement.items():
        if (module == "" or name == module or name.startswith(module + ".")) and len(module) > best:
            best, device = len(module), dev
    if device is None:
        raise UserError(f"--device-map: no device given for {name!r}")
    return device


def main_device(placement: dict) -> torch.device:
    """Where inputs go: the device of the first placed module (the embeddings)."""
    first = next(iter(placement.values()))
    return torch.device("cpu") if first == "cpu" else torch.device("cuda", int(first))


def weight_bytes_by_device(model) -> dict[str, int]:
    """Parameter bytes held per device, tied weights once. Layers offloaded by accelerate leave meta tensors in the
    model and keep their weights in host memory: they count as "cpu"."""
    out: dict[str, int] = {}
    for param in model.parameters():
        key = "cpu" if param.device.type == "meta" else str(param.device)
        out[key] = out.get(key, 0) + param.numel() * param.element_size()
    return out


def layer_devices(model, placement: dict) -> list[str]:
    """The device of each decoder layer, in order (the modules accelerate never splits: `_no_split_modules`)."""
    kinds = set(model._no_split_modules or [])
    names = [name for name, module in model.named_modules() if type(module).__name__ in kinds]
    return [_device_name(_device_of(name + ".", placement)) for name in names]


def _device_name(device) -> str:
    return "cpu" if device == "cpu" else f"cuda:{int(device)}"


def placement_fields(loaded, kv_by_layer: list[int] | None) -> dict:
    """Record fields of a model placed across devices: the map, weight bytes per device (measured), and the KV
    estimate per device (each layer's estimate where the layer runs; None when layers cannot be matched)."""
    if loaded.device_map is None:
        return {}
    devices = layer_devices(loaded.model, loaded.device_map)
    kv = None
    if kv_by_layer is not None and len(devices) == len(kv_by_layer):
        kv = {}
        for device, nbytes in zip(devices, kv_by_layer):
            kv[device] = kv.get(device, 0) + nbytes
    return {
        "device_map": {k: _device_name(v) for k, v in loaded.device_map.items()},
        "weight_bytes_by_device": weight_bytes_by_device(loaded.model),
        **device_fields(kv or {}, estimate=True),  # kv_cache_device_<device>_bytes_estimate
    }
