"""Inside a model, analytically: its module tree with parameter counts and bytes, the config figures that decide the
KV cache, and the cache's bytes per token, exact and naive side by side.

The model is built on the meta device (no memory, seconds for full-size presets). `inspect_model` returns one
pandas DataFrame, a row per line of each section (column `section`):

* "module" -- the tree in the shape of ``print(model)``: consecutive identical layers of a ModuleList folded as
  ``(0-31): 32 x Phi3DecoderLayer``; ``params`` / ``bytes`` count every instance the line stands for
  (``repeats`` of them), so a row's params are its own parameters plus its children's. A weight tied to another
  (GPT-2's LM head is its token embedding) counts once, at its first owner; the other row names it in ``note``.
* "component" -- parameters by kind: embeddings, attention, mlp, norm, lm_head (other: whatever fits none),
  and the total, equal to the model's.
* "config" -- layers, heads, KV heads, head_dim, hidden, vocab, context window, sliding window and which layers
  slide (read through `estimate.kvcache.kv_layer_specs`, as the cache estimate reads them); ``value``.
* "kv_cache" -- cache bytes of one sequence at 1 token, 1,000 tokens and the context window (dynamic cache:
  ``kv_cache_bytes_at``), the per-token rate once the windows are full (``kv_bytes_per_token``), and the
  textbook figure beside each (``naive_kv_cache_bytes``, blind to grouped-query attention and windows).
"""

from __future__ import annotations

from collections import defaultdict

import pandas as pd
import torch

from ..errors import UserError
from ..inputs.configs import DTYPES, resolve_spec, text_config
from .kvcache import (
    kv_bytes_per_token,
    kv_cache_bytes_at,
    kv_layer_specs,
    naive_kv_cache_bytes,
)

KINDS = ("embeddings", "attention", "mlp", "norm", "lm_head", "other")
COLUMNS = ["section", "path", "depth", "name", "kind", "repeats", "params", "bytes", "note", "value", "tokens",
           "naive_bytes"]


def meta_model(config, dtype: torch.dtype, trust_remote_code: bool = False) -> torch.nn.Module:
    """The model of `config` on the meta device: every parameter's shape and dtype, no memory."""
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, dtype=dtype, trust_remote_code=trust_remote_code)
    except ValueError as exc:  # a config with no causal-LM class
        raise UserError(f"cannot build a causal LM from this config: {str(exc).splitlines()[0]}") from None


def _kind(path: str, module: torch.nn.Module, output_embeddings) -> str:
    """The component kind of the parameters a leaf module holds."""
    words = path.lower().split(".")
    if module is output_embeddings:
        return "lm_head"
    if isinstance(module, torch.nn.Embedding) or any("embed" in w or w in ("wte", "wpe") for w in words):
        return "embeddings"
    if "norm" in type(module).__name__.lower():  # LayerNorm, RMSNorm, Phi3RMSNorm, ...
        return "norm"
    if any("attn" in w or "attention" in w for w in words):
        return "attention"
    if any(w in ("mlp", "feed_forward", "ffn", "experts", "moe", "block_sparse_moe") or "mlp" in w for w in words):
        return "mlp"
    return "other"


class _Tree:
    """Parameter counts and bytes of every module's subtree (each parameter once, at its first owner)."""

    def __init__(self, model: torch.nn.Module):
        self.params: dict[str, int] = defaultdict(int)
        self.bytes: dict[str, int] = defaultdict(int)
        self.kinds: dict[str, set] = defaultdict(set)
        self.by_kind: dict[str, list[int]] = {k: [0, 0] for k in KINDS}
        modules = dict(model.named_modules())
        out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        first_name: dict[int, str] = {}
        self.tied: dict[str, list[str]] = defaultdict(list)  # module path -> "weight = other.weight"
        for name, p in model.named_parameters(remove_duplicate=False):
            owner, _, attr = name.rpartition(".")
            if id(p) in first_name:
                self.tied[owner].append(f"{attr} tied to {first_name[id(p)]}")
                continue
            first_name[id(p)] = name
            kind = _kind(owner, modules[owner], out_emb)
            n, b = p.numel(), p.numel() * p.element_size()
            self.by_kind[kind][0] += n
            self.by_kind[kind][1] += b
            parts = owner.split(".") if owner else []
            for i in range(len(parts) + 1):  # the owner and every module above it
                prefix = ".".join(parts[:i])
                self.params[prefix] += n
                self.bytes[prefix] += b
                self.kinds[prefix].add(kind)

    def kind_of(self, paths: list[str]) -> str:
        kinds = set().union(*(self.kinds.get(p, set()) for p in paths))
        return next(iter(kinds)) if len(kinds) == 1 else ("mixed" if kinds else "-")


def _label(name: str | None, module: torch.nn.Module) -> str:
    """The line print(model) shows for a module: a leaf's whole repr (its own __repr__ where it has one, as
    Conv1D does), a container's class name."""
    body = repr(module) if not list(module.children()) else module._get_name()
    return body if name is None else f"({name}): {body}"


def _groups(module: torch.nn.Module) -> list[tuple[str, list[str], torch.nn.Module]]:
    """(label name, child names, first child) per line of print(module): a ModuleList's consecutive children with
    the same repr and the same parameter shapes fold into one line, as torch prints them."""
    children = list(module.named_children())
    if not isinstance(module, torch.nn.ModuleList):
        return [(name, [name], child) for name, child in children]

    def signature(child):
        return repr(child), tuple((n, tuple(p.shape), p.dtype) for n, p in child.named_parameters())

    groups: list[tuple[list[str], torch.nn.Module, tuple]] = []
    for name, child in children:
        sig = signature(child)
        if groups and groups[-1][2] == sig:
            groups[-1][0].append(name)
        else:
            groups.append(([name], child, sig))
    return [(names[0] if len(names) == 1 else f"{names[0]}-{names[-1]}", names, child) for names, child, _ in groups]


def _module_rows(tree: _Tree, module, label: str, paths: list[str], shown: str, depth: int, rows: list) -> None:
    """One row for `module` (standing for the modules at `paths`), then its children's, depth first."""
    note = "; ".join(dict.fromkeys(t for p in paths for t in tree.tied.get(p, [])))
    rows.append(dict(
        section="module", path=shown, depth=depth, name=label, kind=tree.kind_of(paths), repeats=len(paths),
        params=sum(tree.params.get(p, 0) for p in paths), bytes=sum(tree.bytes.get(p, 0) for p in paths),
        note=note or None,
    ))
    for name, names, child in _groups(module):
        sub_paths = [f"{p}.{n}" if p else n for p in paths for n in names]
        sub_label = f"({name}): {len(names)} x {_label(None, child)}" if len(names) > 1 else _label(name, child)
        _module_rows(tree, child, sub_label, sub_paths, f"{shown}.{name}" if shown else name, depth + 1, rows)


def _ranges(indices: list[int]) -> str:
    """[0..31] -> "0-31"; [0, 2, ..., 40] -> "0,2,...,40 (every 2nd)"; others comma-separated; [] -> "none"."""
    if not indices:
        return "none"
    steps = {b - a for a, b in zip(indices, indices[1:])}
    if len(indices) > 2 and len(steps) == 1:
        step = steps.pop()
        if step == 1:
            return f"{indices[0]}-{indices[-1]}"
        return f"{indices[0]},{indices[1]},...,{indices[-1]} (every {step}{'nd' if step == 2 else 'th'})"
    return ",".join(map(str, indices))


def _config_rows(config, model) -> list[dict]:
    cfg = text_config(config)
    try:
        specs, specs_error = kv_layer_specs(config), None
    except (NotImplementedError, ValueError) as exc:
        specs, specs_error = [], str(exc)
    attn = [s for s in specs if s.kind != "none"]
    sliding = [i for i, s in enumerate(specs) if s.kind == "sliding"]
    heads = getattr(cfg, "num_attention_heads", None)
    hidden = getattr(cfg, "hidden_size", None)
    configured_window = getattr(cfg, "sliding_window", None) or getattr(cfg, "attention_chunk_size", None)
    windows = sorted({s.window for s in attn if s.kind == "sliding"})
    if windows:
        window = ",".join(map(str, windows))
    else:
        window = f"none ({configured_window} in the config, unused)" if configured_window else "none"
    types = getattr(cfg, "layer_types", None) or [
        {"full": "full_attention", "sliding": "sliding_attention", "none": "no cache"}[s.kind] for s in specs]
    counts = {t: types.count(t) for t in dict.fromkeys(types)}
    values = {
        "model_type": getattr(cfg, "model_type", None) or getattr(config, "model_type", None),
        "architecture": type(model).__name__,
        "layers": getattr(cfg, "num_hidden_layers", None),
        "attention heads": heads,
        "KV heads": ",".join(map(str, sorted({s.kv_heads for s in attn}))) if attn else getattr(
            cfg, "num_key_value_heads", heads),
        "head_dim": ",".join(map(str, sorted({s.k_head_dim for s in attn}))) if attn else (
            getattr(cfg, "head_dim", None) or (hidden // heads if hidden and heads else None)),
        "hidden": hidden,
        "intermediate": getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or (
            4 * hidden if getattr(cfg, "model_type", "") == "gpt2" and hidden else None),
        "vocab": getattr(cfg, "vocab_size", None),
        "context window": getattr(cfg, "max_position_embeddings", None),
        "sliding window": window,
        "sliding layers": _ranges(sliding) if specs else "-",
        "layer types": ", ".join(f"{n} x {t}" for t, n in counts.items()) or "-",
        "tied embeddings": _is_tied(model),
    }
    if specs_error:
        values["KV cache estimate"] = f"not estimated: {specs_error}"
    for key in [k for k, v in values.items() if v is None]:
        values.pop(key)
    return [dict(section="config", name=k, value=v) for k, v in values.items()]


def _is_tied(model) -> bool:
    inp, out = model.get_input_embeddings(), model.get_output_embeddings()
    return inp is not None and out is not None and inp.weight is out.weight


def _kv_rows(config, dtype: torch.dtype) -> list[dict]:
    cfg = text_config(config)
    context = getattr(cfg, "max_position_embeddings", None)
    points = [("per token", 1), ("per 1k tokens", 1000)] + ([("at the context window", context)] if context else [])
    rows = []
    for name, tokens in points:
        try:
            exact = kv_cache_bytes_at(config, batch_size=1, seq_len=tokens, dtype=dtype)
        except (NotImplementedError, ValueError):
            exact = None
        naive = naive_kv_cache_bytes(config, batch_size=1, seq_len=tokens, dtype=dtype)
        rows.append(dict(section="kv_cache", name=name, tokens=tokens, bytes=exact, naive_bytes=naive))
    try:
        steady = kv_bytes_per_token(config, dtype)
    except (NotImplementedError, ValueError):
        steady = None
    rows.append(dict(section="kv_cache", name="per token, windows full", tokens=1, bytes=steady,
                     naive_bytes=naive_kv_cache_bytes(config, batch_size=1, seq_len=1, dtype=dtype),
                     note="full-attention layers only: sliding windows have stopped growing"))
    return rows


def inspect_model(spec_or_config, dtype="float16", trust_remote_code: bool = False) -> pd.DataFrame:
    """The module tree, parameters by component, cache-deciding config figures and KV bytes of a model spec
    (preset, config.json, model folder, Hub id) or a transformers config, built on the meta device."""
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise UserError(f"unknown dtype {dtype!r}; use {', '.join(DTYPES)}")
        dtype = DTYPES[dtype]
    _name, config, _source, _weights = resolve_spec(spec_or_config, trust_remote_code)
    model = meta_model(config, dtype, trust_remote_code)
    tree = _Tree(model)
    rows: list[dict] = []
    _module_rows(tree, model, _label(None, model), [""], "", 0, rows)
    total = sum(p.numel() for p in model.parameters())
    for kind in KINDS:
        n, b = tree.by_kind[kind]
        if n or kind != "other":
            rows.append(dict(section="component", name=kind, kind=kind, params=n, bytes=b))
    rows.append(dict(section="component", name="total", params=total,
                     bytes=sum(p.numel() * p.element_size() for p in model.parameters())))
    rows += _config_rows(config, model) + _kv_rows(config, dtype)
    frame = pd.DataFrame(rows, columns=COLUMNS)
    for col in ("depth", "repeats", "params", "bytes", "tokens", "naive_bytes"):
        frame[col] = frame[col].astype("Int64")
    frame.attrs.update(dtype=str(dtype).removeprefix("torch."), params=total)
    return frame


def section(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    """One section of `inspect_model`'s frame, without the columns it leaves empty."""
    part = frame[frame["section"] == name].drop(columns="section")
    return part.dropna(axis=1, how="all").reset_index(drop=True)
