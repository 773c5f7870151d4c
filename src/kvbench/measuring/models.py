"""Models to measure, loaded on a device: random weights for presets and config files, weights from a folder or the
Hub (what a spec names is resolved in `kvbench.inputs.configs`).

Timing and memory of generation do not depend on weight values, so presets are built with random weights
directly on the target device in the target dtype: nothing is downloaded, and a 3.8B model appears on a GPU
in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UserError
from ..inputs.configs import DTYPES, gpu_half_dtype, resolve_spec


@dataclass
class LoadedModel:
    """A transformers model ready to measure, and where it came from."""

    name: str  # what the user asked for ("tiny", a path, a hub id)
    model: torch.nn.Module
    config: object  # transformers.PretrainedConfig
    device: torch.device
    dtype: torch.dtype
    source: str  # "preset (random weights)", "config.json (random weights)", "local weights", "hub"

    @property
    def weight_bytes(self) -> int:
        """Bytes of the parameters actually held (tied weights counted once; buffers such as rotary tables not)."""
        return sum(p.numel() * p.element_size() for p in self.model.parameters())

    @property
    def context_len(self) -> int | None:
        return getattr(self.config, "max_position_embeddings", None)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from None
    if dev.type not in ("cpu", "cuda"):
        raise UserError(f"device {device!r} is not supported; use cpu, cuda, cuda:N or auto")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for, but torch sees no CUDA GPU")
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
    return gpu_half_dtype(config, torch.cuda.is_bf16_supported())


def random_model(config, device: torch.device, dtype: torch.dtype):
    """Random weights, allocated on `device` in `dtype` from the start (no float32 copy on the CPU)."""
    from transformers import AutoModelForCausalLM

    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model


def load_model(spec, device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False) -> LoadedModel:
    """Load a preset name, a config.json path, a local model folder, a Hub model id, or a config object."""
    from transformers import AutoModelForCausalLM

    dev = resolve_device(device)
    name, config, source, weights = resolve_spec(spec, trust_remote_code)
    dt = resolve_dtype(dtype, dev, config)
    if weights is None:
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
    return LoadedModel(name=name, model=model, config=model.config, device=dev, dtype=dt, source=source)


def synthetic_inputs(config, batch_size: int, prompt_len: int, device, seed: int = 0) -> dict:
    """Seeded random token ids (exactly `prompt_len` of them per row) and an all-ones attention mask."""
    gen = torch.Generator().manual_seed(seed)
    vocab = config.get_text_config().vocab_size
    ids = torch.randint(min(10, vocab - 1), vocab, (batch_size, prompt_len), generator=gen)
    ids = ids.to(device)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
