"""Argument checks of the public Python API: a wrong value raises ValueError (kvbench's UserError) and a wrong type
TypeError, each naming the parameter and the value it got -- never an AttributeError or a comparison deep inside.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError


def check_int(name: str, value, minimum: int = 1) -> int:
    """`value` as an integer >= `minimum`: TypeError for a non-integer (a bool or "3" included), UserError below."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise UserError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_sizes(config=None, *, minimums: dict | None = None, **values) -> None:
    """The estimates' arguments in one call: `config` a model config (when given), each of `values` an integer >= 1
    (>= its entry in `minimums`); None values are left to their default."""
    if config is not None:
        check_config("config", config)
    for name, value in values.items():
        if value is not None:
            check_int(name, value, (minimums or {}).get(name, 1))


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return value


def check_instance(name: str, value, cls, hint: str = ""):
    """`value` if it is a `cls`, else a TypeError naming the parameter, the value and its type (and `hint`)."""
    if not isinstance(value, cls):
        raise TypeError(f"{name} must be a {cls.__name__}, got {shown(value)} ({type(value).__name__}){hint}")
    return value


def check_config(name: str, value):
    """A transformers config, where one is expected: a model name or path gets a TypeError that says how to get its
    config; anything else without a config's fields one that names its type."""
    if isinstance(value, (str, Path)):
        raise TypeError(f"{name} must be a model config, got the name {str(value)!r}; get its config with "
                        f"kvbench.model_config({str(value)!r}) (presets, config.json paths, model folders, Hub ids; "
                        "no weights built)")
    if not hasattr(value, "get_text_config") and not hasattr(value, "num_hidden_layers"):
        raise TypeError(f"{name} must be a model config (a transformers PretrainedConfig), got "
                        f"{shown(value)} ({type(value).__name__})")
    return value


def shown(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
