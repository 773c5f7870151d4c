"""Models to measure, loaded on a device: random weights for presets and config files, weights from a folder or the
Hub (what a spec names is resolved in `kvbench.inputs.configs`).

Timing and memory of generation do not depend on weight values, so presets are built with random weights
directly on the target device in the target dtype: nothing is downloaded, and a 3.8B model appears on a GPU
in seconds.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass

import torch

from ...errors import UserError
from ...inputs.configs import DTYPES, gpu_half_dtype, resolve_spec, text_config
from .fits import check_weights_fit


@dataclass
class LoadedModel:
    """A transformers model ready to measure, and where it came from."""

    name: str  # what the user asked for ("tiny", a path, a hub id)
    model: torch.nn.Module
    config: object  # transformers.PretrainedConfig
    device: torch.device
    dtype: torch.dtype
    source: str  # "preset (random weights)", "config.json (random weights)", "local weights", "hub"
    device_map: dict | None = None  # module -> device, for a model placed across devices (measuring.loading.placement)

    @property
    def weight_bytes(self) -> int:
        """Bytes of the parameters actually held (tied weights counted once; buffers such as rotary tables not)."""
        return sum(p.numel() * p.element_size() for p in self.model.parameters())

    @property
    def context_len(self) -> int | None:
        return getattr(self.config, "max_position_embeddings", None)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The device a spec names ("auto": a GPU where there is one), refused (UserError naming it) where kvbench
    cannot measure on it: not a device, not cpu or cuda, no CUDA GPU, or a GPU index beyond those torch sees."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise UserError(f"unknown device {str(device)!r}; use cpu, cuda, cuda:N or auto") from None
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"device {str(device)!r} is not supported; use cpu, cuda, cuda:N or auto")
    if dev.type == "cpu" and dev.index not in (None, 0):
        raise UserError(f"device {str(device)!r}: the CPU has no index; use cpu")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {str(device)!r} asked for, but torch sees no CUDA GPU")
    count = torch.cuda.device_count() if dev.type == "cuda" else 0
    if dev.type == "cuda" and dev.index is not None and dev.index >= count:
        raise UserError(f"device {str(device)!r}: torch sees {count} CUDA GPU{'s' if count != 1 else ''} "
                        f"(cuda:0{f' to cuda:{count - 1}' if count > 1 else ''}; CUDA_VISIBLE_DEVICES sets which)")
    return dev


def resolve_dtype(dtype: str | torch.dtype, device: torch.device, config=None) -> torch.dtype:
    """"auto": float32 on the CPU; on a GPU the config's half type where the card supports it, else float16."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype != "auto":
        if dtype not in DTYPES:
            raise UserError(f"unknown dtype {dtype!r}; use auto, {', '.join(DTYPES)}")
        return DTYPES[dtype]
    if device.type == "cpu":
        return torch.float32
    return gpu_half_dtype(config, bf16_supported(device))


def bf16_supported(device: torch.device | None = None) -> bool:
    """Whether a CUDA device computes in bfloat16 natively (emulation, as torch offers on a T4, does not count)."""
    check = torch.cuda.is_bf16_supported
    try:
        has_flag = "including_emulation" in inspect.signature(check).parameters
    except (TypeError, ValueError):
        has_flag = False
    index = None if device is None else torch.device(device).index
    # torch asks the current device; make it the one asked about
    with torch.cuda.device(index) if index is not None else contextlib.nullcontext():
        if has_flag:
            return bool(check(including_emulation=False))
        # a torch without the flag: native bfloat16 is compute capability 8.0 (Ampere) and above
        return torch.cuda.get_device_properties(torch.cuda.current_device()).major >= 8


def random_model(config, device: torch.device, dtype: torch.dtype):
    """Random weights, allocated on `device` in `dtype` from the start (no float32 copy on the CPU)."""
    from transformers import AutoModelForCausalLM

    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model


def check_before_load(spec, device: str = "auto", dtype: str = "auto", scenarios=(), trust_remote_code: bool = False,
                      flags=("--prompt-len", "--new-tokens")) -> tuple:
    """What `load_model` would refuse, refused before any work: the device, the model spec, the dtype, and
    scenarios longer than the model's context (named by the options `flags` the lengths came from). Returns
    `resolve_spec`'s answer, for `load_model(..., resolved=...)` (the spec is not resolved twice)."""
    dev = resolve_device(device)
    resolved = resolve_spec(spec, trust_remote_code)
    name, config = resolved[0], resolved[1]
    resolve_dtype(dtype, dev, config)
    context = getattr(config, "max_position_embeddings", None)
    longest = max(scenarios, key=lambda s: s.total_len, default=None)
    if context and longest is not None and longest.total_len > context:
        raise UserError(f"{flags[0]} {longest.prompt_len} + {flags[1]} {longest.new_tokens} = {longest.total_len} "
                        f"tokens, beyond {name}'s context of {context} tokens (max_position_embeddings)")
    return resolved


def beyond_context(too_large, spec, device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False):
    """A length typed with more digits than any tensor holds (`inputs.lists.TooLarge`), refused as a length beyond
    the model's context, once `check_before_load` has checked the device, the model spec and the dtype; a model
    without a context (no max_position_embeddings) keeps the digit refusal. Returns the error to raise."""
    name, config = check_before_load(spec, device, dtype, (), trust_remote_code)[:2]
    context = getattr(config, "max_position_embeddings", None)
    if not context:
        return too_large
    digits = too_large.text.lstrip("0")
    value = digits if len(digits) <= 60 else f"{digits[:20]}... ({len(digits):,} digits)"
    return UserError(f"{too_large.option}: {value} exceeds {name}'s context of {context:,} tokens "
                    "(max_position_embeddings)")


def load_model(spec, device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False,
               device_map=None, max_memory=None, resolved: tuple | None = None) -> LoadedModel:
    """Load a preset name, a config.json path, a local model folder, a Hub model id, or a config object.

    `device_map` (a strategy such as "auto", or {module: device}) and `max_memory` ({device: bytes}, or their
    --device-map / --max-memory text) place the model across devices with accelerate (`measuring.loading.placement`).
    `resolved`: what `check_before_load` returned for this spec."""
    from transformers import AutoModelForCausalLM

    dev = resolve_device(device)
    name, config, source, weights = resolved or resolve_spec(spec, trust_remote_code)
    dt = resolve_dtype(dtype, dev, config)
    placement = None
    if device_map is None:
        check_weights_fit(name, config, dev, dt)
    if device_map is not None:
        from .placement import (
            main_device,
            parse_device_map,
            parse_max_memory,
            placed_random_model,
        )

        device_map = parse_device_map(device_map) if isinstance(device_map, str) else device_map
        max_memory = parse_max_memory(max_memory) if isinstance(max_memory, str) else max_memory
        if weights is None:
            model, placement = placed_random_model(config, dt, device_map, max_memory)
        else:
            model = AutoModelForCausalLM.from_pretrained(weights, dtype=dt, device_map=device_map,
                                                         max_memory=max_memory, trust_remote_code=trust_remote_code)
            placement = dict(model.hf_device_map)
        dev = main_device(placement)
    elif weights is None:
        model = random_model(config, dev, dt)
    else:
        model = AutoModelForCausalLM.from_pretrained(
            weights, dtype=dt, device_map=str(dev), trust_remote_code=trust_remote_code,
            use_safetensors=True,  # never torch.load (pickle): resolve_spec refuses folders without safetensors
        )
    model.eval()
    gen = model.generation_config
    if gen.pad_token_id is None:  # silences "Setting pad_token_id to eos_token_id" on every call
        eos = gen.eos_token_id if gen.eos_token_id is not None else getattr(config, "eos_token_id", None)
        gen.pad_token_id = (eos[0] if isinstance(eos, list) else eos) if eos is not None else 0
    return LoadedModel(name=name, model=model, config=model.config, device=dev, dtype=dt, source=source,
                       device_map=placement)


def synthetic_inputs(config, batch_size: int, prompt_len: int, device, seed: int = 0) -> dict:
    """Seeded random token ids (exactly `prompt_len` of them per row) and an all-ones attention mask."""
    gen = torch.Generator().manual_seed(seed)
    vocab = text_config(config).vocab_size
    ids = torch.randint(min(10, vocab - 1), vocab, (batch_size, prompt_len), generator=gen)
    ids = ids.to(device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
