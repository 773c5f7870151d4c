"""What a model spec names, as a transformers config: bundled presets, config.json files, model folders, Hub ids.

Configs only -- no weights, no device -- so the analytic side (estimates, the planner) and the measuring side read
models the same way. Also the dtype names users type, and the half type a GPU run uses.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import UserError
from .names import DTYPE_NAMES, is_hub_id, list_presets, preset_info, preset_name, unknown_model
from .names import preset_files as _preset_files

DTYPES = {name: getattr(torch, torch_name) for name, torch_name in DTYPE_NAMES.items()}


def text_config(config):
    """The config of the text decoder: a multimodal or encoder-decoder model's decoder part, a language model's own
    config (and any object without `get_text_config`, as tests pass, itself)."""
    get = getattr(config, "get_text_config", None)
    return get(decoder=True) if get is not None else config


def config_from_dict(data: dict, where: str = "config"):
    """A transformers config from a config.json's fields; `where` (the file) names it in errors."""
    from transformers import AutoConfig

    if not isinstance(data, dict):
        raise UserError(f"{where}: not a model config (a JSON {type(data).__name__}, not an object)")
    data = {k: v for k, v in data.items() if not k.startswith("_")}
    model_type = data.pop("model_type", None)
    if model_type is None:
        raise UserError(f"{where}: not a model config (no 'model_type' field)")
    try:
        return AutoConfig.for_model(model_type, **data)
    except (ValueError, KeyError) as exc:
        if "auto_map" in data:
            raise UserError(f"{where}: model_type {model_type!r} is a model's own code (auto_map), which kvbench "
                            "cannot build from a config alone") from None
        raise UserError(f"{where}: unknown model_type {model_type!r} ({first_line(exc)})") from None
    except TypeError as exc:
        raise UserError(f"{where}: a field transformers refuses ({first_line(exc)})") from None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_config_file(path: Path) -> dict:
    """The fields of a config.json, or a UserError naming the file: unreadable, not UTF-8 JSON, not an object,
    no model_type."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not a JSON config file ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a model config (a JSON {type(data).__name__}, not an object)")
    if "model_type" not in data:
        raise UserError(f"{path}: not a model config (no 'model_type' field)")
    return data


# Weight files that torch.load would unpickle (and so run code from): kvbench reads weights only from safetensors.
PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def folder_config(path: Path, spec: str, trust_remote_code: bool):
    """The config of a model folder, read by transformers once kvbench has checked it: valid JSON with a model
    type, and no model code of its own unless `trust_remote_code`."""
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    data = read_config_file(path / "config.json")
    if data["model_type"] not in CONFIG_MAPPING and not trust_remote_code:
        if "auto_map" in data:
            raise UserError(f"{spec}: its model type {data['model_type']!r} is the folder's own code (auto_map); "
                            "kvbench runs no code from a model unless you pass --trust-remote-code")
        raise UserError(f"{spec}: unknown model_type {data['model_type']!r} in its config.json")
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise UserError(f"{spec}: transformers cannot read its config.json ({first_line(exc)})") from None


def preset_config(name: str):
    files = _preset_files()
    if name not in files:
        raise UserError(f"unknown preset {name!r}; presets: {', '.join(sorted(files))}")
    return config_from_dict(json.loads(files[name].read_text()), f"preset {name}")


def gpu_half_dtype(config, bf16_supported: bool) -> torch.dtype:
    """The config's half type where the card has it (bf16 -> fp16 on cards without bf16); float16 otherwise."""
    wanted = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    wanted = DTYPES.get(str(wanted).removeprefix("torch."), torch.float16)
    if wanted == torch.bfloat16 and not bf16_supported:
        return torch.float16
    return wanted if wanted != torch.float32 else torch.float16


def model_config(spec, trust_remote_code: bool = False):
    """The transformers config a model spec names (preset, config.json, model folder, Hub id): no weights built.
    What the estimates (`estimate_kv_cache_bytes`, `param_count`, ...) take as `config`."""
    return resolve_spec(spec, trust_remote_code)[1]


def resolve_spec(spec, trust_remote_code: bool = False) -> tuple[str, object, str, object]:
    """(name, config, source, weights) for a config object, preset, config.json, model folder or Hub id.

    `weights` is what `from_pretrained` loads (a folder or Hub id), or None for random weights.
    """
    from transformers import PretrainedConfig

    if isinstance(spec, PretrainedConfig):
        return spec.model_type, spec, "config object (random weights)", None
    if not isinstance(spec, (str, Path)) or not str(spec).strip():
        raise UserError(f"model {str(spec)!r}: give a preset ({', '.join(list_presets())}), a config.json, a model "
                        "folder or a Hub id (owner/name)")
    preset = preset_name(spec)
    if preset is not None:
        return preset, preset_config(preset), "preset (random weights)", None
    path = Path(spec).expanduser()
    if path.is_file():
        return spec, config_from_dict(read_config_file(path), str(path)), "config.json (random weights)", None
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{spec}: folder has no config.json")
        config = folder_config(path, spec, trust_remote_code)
        if any(path.glob("*.safetensors")):
            return spec, config, "local weights", path
        pickles = sorted(p.name for pattern in PICKLE_WEIGHTS for p in path.glob(pattern))
        if pickles:
            raise UserError(f"{spec}: its weights are pickle files ({', '.join(pickles[:3])}), which kvbench never "
                            "loads (unpickling runs code); give it .safetensors weights (save_pretrained writes them)")
        return spec, config, "config.json (random weights)", None
    if is_hub_id(spec):
        from .hub import hub_config

        bundled = [name for name in list_presets() if preset_info(name).get("hub_id") == spec]
        hint = f" (its config is bundled: --model {bundled[0]} builds it with random weights)" if bundled else ""
        return spec, hub_config(spec, trust_remote_code, hint), "hub", spec
    raise unknown_model(spec)
