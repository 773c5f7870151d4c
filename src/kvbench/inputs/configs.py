"""What a model spec names, as a transformers config: bundled presets, config.json files, model folders, Hub ids.

Configs only -- no weights, no device -- so the analytic side (estimates, the planner) and the measuring side read
models the same way. Also the dtype names users type, and the half type a GPU run uses.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import torch

from ..errors import UserError

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


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


def gpu_half_dtype(config, bf16_supported: bool) -> torch.dtype:
    """The config's half type where the card has it (bf16 -> fp16 on cards without bf16); float16 otherwise."""
    wanted = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    wanted = DTYPES.get(str(wanted).removeprefix("torch."), torch.float16)
    if wanted == torch.bfloat16 and not bf16_supported:
        return torch.float16
    return wanted if wanted != torch.float32 else torch.float16


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
