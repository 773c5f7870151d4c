"""The names a user types for a model and a dtype, checked without importing torch or transformers.

A mistyped `--model` or `--dtype` is answered as fast as `--help` (tests/test_cli_startup.py): the bundled presets
are files, a path exists or not, and a Hub id has the shape owner/name. Reading what a spec names (the config)
is `inputs.configs`'s job.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from ..errors import UserError

# The dtype names users type, and torch's name of the dtype each means (inputs.configs.DTYPES maps them to torch's
# dtypes). "auto" is the command-line default, resolved against the device.
DTYPE_NAMES = {
    "float32": "float32", "fp32": "float32",
    "float16": "float16", "fp16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
}

# How to run a model without the Hub: its config.json, saved locally (the file or the folder holding it).
OFFLINE_HINT = ("offline, a local config.json works: save the model's config.json (from its Hub page, or "
                "AutoConfig.from_pretrained(id).save_pretrained(folder)) and pass --model path/to/config.json "
                "or the folder")


def preset_files() -> dict[str, Path]:
    root = resources.files("kvbench") / "presets"  # shipped with the package (package data)
    return {Path(p.name).stem: Path(str(p)) for p in root.iterdir() if p.name.endswith(".json")}


def list_presets() -> list[str]:
    return sorted(preset_files())


def preset_info(name: str) -> dict:
    """The preset's `_kvbench` block (hub id, description)."""
    return json.loads(preset_files()[name].read_text()).get("_kvbench", {})


def preset_name(spec: str) -> str | None:
    """The preset a spec names, matched case-insensitively ("Phi-3-mini-4k" -> "phi-3-mini-4k"), or None."""
    by_lower = {name.lower(): name for name in preset_files()}
    return by_lower.get(str(spec).lower())


def is_hub_id(spec: str) -> bool:
    return spec.count("/") == 1 and not spec.startswith((".", "/", "~"))


def unknown_model(spec) -> UserError:
    return UserError(f"unknown model {spec!r}: not a preset ({', '.join(list_presets())}), not an existing path, "
                     f"not a Hub id (owner/name); {OFFLINE_HINT}")


def check_model_name(spec) -> None:
    """Refuse a model spec that names nothing: not a preset, not an existing path, not shaped as a Hub id. (Whether
    the path holds a config, or the Hub has the id, is for `resolve_spec` to find out.)"""
    if not isinstance(spec, (str, Path)) or not str(spec).strip():
        raise UserError(f"model {str(spec)!r}: give a preset ({', '.join(list_presets())}), a config.json, a model "
                        "folder or a Hub id (owner/name)")
    spec = str(spec)
    if preset_name(spec) is None and not Path(spec).expanduser().exists() and not is_hub_id(spec):
        raise unknown_model(spec)


def check_dtype_name(dtype, allow_auto: bool = True) -> None:
    """Refuse a dtype name that is none of DTYPE_NAMES (nor "auto", where it is allowed); a torch.dtype passes."""
    names = (("auto",) if allow_auto else ()) + tuple(DTYPE_NAMES)
    if isinstance(dtype, str) and dtype not in names:
        raise UserError(f"unknown dtype {dtype!r}; use {', '.join(names)}")
