"""Models to measure: bundled presets (random weights from bundled configs), local paths, Hub ids.

Timing and memory of generation do not depend on weight values, so presets are built with random weights
directly on the target device in the target dtype: nothing is downloaded, and a 3.8B model appears on a GPU
in seconds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from .errors import UserError

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


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


def _preset_files() -> dict[str, Path]:
    root = resources.files("kvbench") / "presets"  # shipped with the package (package data)
    return {Path(p.name).stem: Path(str(p)) for p in root.iterdir() if p.name.endswith(".json")}


def list_presets() -> list[str]:
    return sorted(_preset_files())


def preset_info(name: str) -> dict:
    """The preset's `_kvbench` block (hub id, description)."""
    return json.loads(_preset_files()[name].read_text()).get("_kvbench", {})


def config_from_dict(data: dict):
    from transformers import AutoConfig

    data = {k: v for k, v in data.items() if not k.startswith("_")}
    model_type = data.pop("model_type", None)
    if model_type is None:
        raise UserError("config has no 'model_type'")
    try:
        return AutoConfig.for_model(model_type, **data)
    except ValueError as exc:
        raise UserError(f"unknown model_type {model_type!r} in config ({exc})") from None


def preset_config(name: str):
    files = _preset_files()
    if name not in files:
        raise UserError(f"unknown preset {name!r}; presets: {', '.join(sorted(files))}")
    return config_from_dict(json.loads(files[name].read_text()))


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


def gpu_half_dtype(config, bf16_supported: bool) -> torch.dtype:
    """The config's half type where the card has it (bf16 -> fp16 on cards without bf16); float16 otherwise."""
    wanted = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    wanted = DTYPES.get(str(wanted).removeprefix("torch."), torch.float16)
    if wanted == torch.bfloat16 and not bf16_supported:
        return torch.float16
    return wanted if wanted != torch.float32 else torch.float16


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


def preset_name(spec: str) -> str | None:
    """The preset a spec names, matched case-insensitively ("Phi-3-mini-4k" -> "phi-3-mini-4k"), or None."""
    by_lower = {name.lower(): name for name in _preset_files()}
    return by_lower.get(str(spec).lower())


def resolve_spec(spec, trust_remote_code: bool = False) -> tuple[str, object, str, object]:
    """(name, config, source, weights) for a config object, preset, config.json, model folder or Hub id.

    `weights` is what `from_pretrained` loads (a folder or Hub id), or None for random weights.
    """
    from transformers import AutoConfig, PretrainedConfig

    if isinstance(spec, PretrainedConfig):
        return spec.model_type, spec, "config object (random weights)", None
    preset = preset_name(spec)
    if preset is not None:
        return preset, preset_config(preset), "preset (random weights)", None
    path = Path(spec).expanduser()
    if path.is_file():
        try:
            config = config_from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{spec}: not a JSON config file ({exc})") from None
        return spec, config, "config.json (random weights)", None
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{spec}: folder has no config.json")
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
        if any(path.glob("*.safetensors")) or any(path.glob("*.bin")):
            return spec, config, "local weights", path
        return spec, config, "config.json (random weights)", None
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        try:
            config = AutoConfig.from_pretrained(spec, trust_remote_code=trust_remote_code)
        except Exception as exc:  # offline, gated, unknown id: one line for the user
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            bundled = [name for name in list_presets() if preset_info(name).get("hub_id") == spec]
            hint = f" (its config is bundled: --model {bundled[0]} builds it with random weights)" if bundled else ""
            raise UserError(f"cannot load {spec!r} from the Hugging Face Hub: {first}{hint}") from None
        return spec, config, "hub", spec
    raise UserError(
        f"unknown model {spec!r}: not a preset ({', '.join(list_presets())}), "
        "not an existing path, not a Hub id (owner/name)"
    )


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
            weights, dtype=dt, device_map=str(dev), trust_remote_code=trust_remote_code
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
