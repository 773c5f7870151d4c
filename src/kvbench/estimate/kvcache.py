"""The KV cache in bytes: measured on a cache object, and estimated from a model config.

Two sides that must agree to the byte (tests/test_kvcache.py checks them on real caches):

* measured -- ``cache_nbytes(cache)`` (``kvbench.measuring.instruments.cache_bytes``): the memory the cache object really holds.
  Every tensor reachable from it (keys, values, quantized states, SSM/conv states, ...) is counted by its *storage*,
  each storage once. Unlike the visible ``numel * element_size`` (``cache_visible_nbytes``), a dynamic sliding layer
  counts the whole tensor its last ``window - 1`` tokens are a view of (``window`` tokens, or a long prefill's all).
* estimated -- ``kv_cache_bytes_at`` / ``estimate_kv_cache_bytes``: a pure function of the config and the scenario
  that reproduces what transformers allocates (rules below, found by experiment with transformers 4.57 to 5.25).

Rules of transformers' caches (T = positions fed through the cache; generate feeds P + N - 1 of them, since the
last sampled token is never fed back; the forward calls feed [P, 1, 1, ...] tokens):

* full attention layer, dynamic cache: T tokens (``torch.cat`` each step, contiguous).
* sliding / chunked layer (window w), dynamic cache: visible ``min(T, w - 1)`` tokens, a view of the last
  ``torch.cat`` result, which holds ``min(T - k, w - 1) + k`` tokens where k = tokens fed by the last forward.
  Right after a prefill of P tokens (k = P) it holds all P, however large the window is; after a decode step
  (k = 1) it holds ``min(T, w)``. Beam search reorders the cache (``index_select``) after every step, which makes
  compact copies: then storage = visible = ``min(T, w - 1)``.
* static cache: ``generate`` preallocates ``max_cache_len = max_length - 1 = P + N - 1`` tokens per full layer
  and ``min(w, max_cache_len)`` per sliding layer (w, not w - 1), whatever T is; its batch is
  ``batch_size * num_beams``. The size sticks to the model object (5.x: ``model._previous_max_cache_length``,
  4.x: ``model._cache``): a later, shorter call keeps the larger cache. The estimate is for a model's first
  static call (or its largest).
* the batch dimension of every cache tensor is ``batch_size * num_beams``.
* scalar (0-dim) tensors that count steps -- ``cumulative_length`` of static layers, ``_sliding_window_tensor`` --
  are bookkeeping of a few bytes, exist in some versions only, and are not counted; the per-tensor scales of the
  fp8 quantized cache, 0-dim too, are part of its storage and are counted (``kvbench.estimate.quantized``).
* linear-attention layers (Mamba, gated delta nets, short convolutions; ``hybrid`` layers beside their KV) keep a
  state of constant size (``kvbench.estimate.ssm``).
* the implementations: ``dynamic``, ``offloaded`` and the deprecated ``hybrid`` (which generate unsets) follow the
  dynamic rules; ``static``, ``offloaded_static`` and the deprecated ``sliding_window``, ``hybrid_chunked``,
  ``offloaded_hybrid*`` the static ones (5.x: one StaticCache whose layers follow the config); ``quantized`` its
  own (``kvbench.estimate.quantized``). Offloading moves bytes between devices, it does not change them.

``estimate_kv_cache_bytes_by_kind`` splits the estimate as ``kvbench.measuring.instruments.cache_bytes.cache_nbytes_by_kind``
splits the measurement: key_value, conv_state, recurrent_state, quantized_data / _scales / _zero_points /
_residual, beam_index (kinds with no bytes left out).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .. import compat
from ..inputs.args import check_config, check_sizes
from ..inputs.configs import text_config
from ..inputs.names import DTYPE_NAMES
from . import quantized as quant
from .ssm import LINEAR_LAYER_TYPES, StateSpec, state_bytes, state_spec

# ----------------------------------------------------------------------------------------------------------------
# Reading a config
# ----------------------------------------------------------------------------------------------------------------


class LayerSpec(NamedTuple):
    """What one decoder layer keeps per token and sequence: ``kind`` is "full", "sliding" (window = sliding window
    or attention chunk) or "none" (no cache: MLP-only layers, layers reusing another layer's KV)."""

    kind: str
    kv_heads: int
    k_head_dim: int
    v_head_dim: int
    window: int | None
    state: StateSpec | None = None  # the constant-size state of a linear-attention or hybrid layer


# Architectures whose cache is not the standard per-layer keys/values of a Cache object, or whose modeling code
# feeds or shapes it differently from what the config says; estimating them would give a wrong number.
UNSUPPORTED = {
    "reformer": "keeps LSH buckets and states of its own, not a Cache",
    "rwkv": "keeps a recurrent state per layer, not a KV cache",
    "xlnet": "keeps memory tensors (mems), not a KV cache",
    "xlstm": "keeps an xLSTM recurrent state, not a KV cache",
    "minimax": "keeps lightning-attention states in a cache class of its own",
    "cpmant": "prepends prompt tokens of its own to the cached sequence",
    "xlm": "feeds the whole sequence at every step",
    "hrm_text": "cycles its layers several times, each with a cache entry of its own",
    "dory": "loops its recurrent layers, each loop writing cache layers of its own",
    "deepseek_v4": "keeps compressed (CSA/HCA) attention states in cache layers of its own",
}
# Architectures that run without any cache even when asked for one.
NO_KV_CACHE = {"openai-gpt"}
# Multi-head latent attention (DeepSeek-V2/V3 style): from transformers 5.15 these cache the compressed latent
# (kv_lora_rank wide, as "keys") and the shared rotary key (qk_rope_head_dim, as "values"), one head; before,
# the decompressed per-head keys (qk_nope + qk_rope) and values (v_head_dim).
MLA_LATENT_CACHE = {"deepseek_v2", "deepseek_v3", "minicpm3", "longcat_flash", "glm4_moe_lite", "youtu",
                    "kimi_linear", "sarvam_mla", "bailing_hybrid", "axk1", "mistral4", "mistral_large4"}
# Config fields of SSM / linear-attention / convolution state. A config with one of them and no explicit
# `layer_types` (Jamba, Mamba, Nemotron-H, RecurrentGemma in 4.x) cannot be told apart layer by layer, and the
# hybrid cache classes of transformers 4.x (LFM2, ...) allocate such state for every layer.
STATE_FIELDS = ("state_size", "ssm_state_size", "mamba_d_state", "linear_conv_kernel_dim", "conv_L_cache",
                "block_types", "layers_block_type")
_LEGACY_LAYER_TYPES = {"attention": "full_attention", "mamba": "linear_attention",
                       "deepseek_sparse_attention": "indexed_attention", "qwen_sparse_attention": "indexed_attention"}


def _per_layer_configs(cfg: Any, n_layers: int) -> list[Any]:
    """One config per layer: heterogeneous configs (transformers >= 5.2x, e.g. Gemma-4) override attributes such as
    head_dim or num_key_value_heads layer by layer; a plain config serves every layer."""
    if getattr(cfg, "is_heterogeneous", False):
        return list(cfg.per_layer_config)
    return [cfg] * n_layers


def _layer_types(cfg: Any, layer_cfgs: list[Any]) -> list[str]:
    """The cache layer type of every layer, as transformers' Dynamic/StaticCache derive it from the config."""
    types = getattr(cfg, "layer_types", None)
    if types is None:  # no explicit pattern: a layer slides if its config has a window
        types = ["sliding_attention" if getattr(c, "sliding_window", None) is not None else
                 "chunked_attention" if getattr(c, "attention_chunk_size", None) is not None else
                 "full_attention" for c in layer_cfgs]
    types = [_LEGACY_LAYER_TYPES.get(t, t) for t in types]
    types = ["none" if t in ("moe", "mlp", "dummy") else t for t in types]
    # Layers that reuse the KV of an earlier layer keep none of their own (Gemma-3n, Gemma-4)
    modes = getattr(cfg, "kv_sharing_modes", None)
    if modes is not None:
        types = ["none" if mode == "reuse" else t for t, mode in zip(types, modes)]
    elif getattr(cfg, "num_kv_shared_layers", 0):
        shared = cfg.num_kv_shared_layers
        types = types[: len(types) - shared] + ["none"] * shared
    return list(types)


def _kv_heads(cfg: Any, model_type: str) -> int:
    heads = cfg.num_attention_heads
    if model_type == "falcon":  # old architecture: multi-query (1) or multi-head; the new one (Falcon-40B/180B)
        # caches its num_kv_heads groups, or all heads on releases that broadcast them before caching (compat)
        if cfg.new_decoder_architecture:
            return cfg.num_kv_heads if compat.falcon_new_arch_caches_kv_heads() else heads
        return 1 if cfg.multi_query else heads
    if getattr(cfg, "multi_query", False):  # GPT-BigCode
        return 1
    return getattr(cfg, "num_key_value_heads", None) or heads


def kv_layer_specs(config: Any) -> list[LayerSpec]:
    """One ``LayerSpec`` per decoder layer, read from a transformers config (no model needed). A linear-attention
    layer is kind "none" (no KV) with its ``state``; a hybrid layer an attention kind with its ``state``.

    Raises NotImplementedError, naming the architecture or layer type, where the cache holds something this
    module does not model (unchecked linear-attention states, sparse-attention indexers, custom cache classes)."""
    cfg = text_config(config)
    model_type = getattr(cfg, "model_type", "") or getattr(config, "model_type", "")
    for name in (model_type, getattr(config, "model_type", "")):
        if name in UNSUPPORTED:
            raise NotImplementedError(f"KV cache of '{name}' is not estimated: it {UNSUPPORTED[name]}")
    if getattr(cfg, "layer_types", None) is None or compat.hybrid_state_on_every_layer():
        for field in STATE_FIELDS:
            if getattr(cfg, field, None) is not None and compat.hybrid_state_on_every_layer():
                raise NotImplementedError(f"KV cache of '{model_type}' is not estimated on transformers "
                                          f"{compat.installed_version()}: its SSM / linear-attention state (config "
                                          f"'{field}') is estimated with transformers >= 5.0, whose caches keep it "
                                          "layer by layer")
            if getattr(cfg, field, None) is not None:
                raise NotImplementedError(f"KV cache of '{model_type}' is not estimated: its config has '{field}', "
                                          "the mark of SSM / linear-attention state this estimator does not model")
    n_layers = cfg.num_hidden_layers
    if model_type in NO_KV_CACHE:
        return [LayerSpec("none", 0, 0, 0, None)] * n_layers

    layer_cfgs = _per_layer_configs(cfg, n_layers)
    specs = []
    for i, layer_type in enumerate(_layer_types(cfg, layer_cfgs)):
        lc = layer_cfgs[i]
        state = state_spec(lc, model_type) if layer_type in LINEAR_LAYER_TYPES else None
        if layer_type in ("none", "linear_attention", "conv"):
            specs.append(LayerSpec("none", 0, 0, 0, None, state))
            continue
        layer_type = {"hybrid": "full_attention", "hybrid_sliding": "sliding_attention"}.get(layer_type, layer_type)
        if layer_type == "full_attention":
            kind, window = "full", None
        elif layer_type == "sliding_attention":
            kind, window = "sliding", lc.sliding_window
        elif layer_type == "chunked_attention":
            kind, window = "sliding", getattr(lc, "attention_chunk_size", None) or lc.sliding_window
        else:
            raise NotImplementedError(
                f"KV cache of '{model_type}' is not estimated: layer {i} is '{layer_type}', whose cached state "
                "(SSM / linear attention / sparse indexer) this estimator does not model"
            )
        if kind == "sliding" and not window:
            raise ValueError(f"layer {i} of '{model_type}' is '{layer_type}' but its config has no window size")

        if getattr(lc, "kv_lora_rank", None):  # multi-head latent attention
            if model_type not in MLA_LATENT_CACHE:
                raise NotImplementedError(f"latent attention of '{model_type}' is not estimated")
            if compat.mla_caches_latent():
                specs.append(LayerSpec(kind, 1, lc.kv_lora_rank, lc.qk_rope_head_dim, window, state))
            else:
                k_dim = lc.qk_nope_head_dim + lc.qk_rope_head_dim
                specs.append(LayerSpec(kind, lc.num_attention_heads, k_dim, lc.v_head_dim, window, state))
            continue

        kv_heads = _kv_heads(lc, model_type)
        if model_type == "mimo_v2_flash" and kind == "sliding":  # its sliding layers have twice the KV heads
            kv_heads *= 2
        k_dim = getattr(lc, "head_dim", None) or lc.hidden_size // lc.num_attention_heads
        if model_type == "zamba2":  # its shared attention blocks see the hidden states concatenated twice
            k_dim = lc.attention_head_dim
        v_dim = getattr(lc, "v_head_dim", None) or k_dim
        specs.append(LayerSpec(kind, kv_heads, k_dim, v_dim, window, state))
    return specs


# ----------------------------------------------------------------------------------------------------------------
# Estimating bytes
# ----------------------------------------------------------------------------------------------------------------


def dtype_nbytes(dtype: torch.dtype | str) -> int:
    """Bytes per element of a torch dtype or its name: the names users type (`kvbench.inputs.names.DTYPE_NAMES`:
    "float16", "bf16", ...), "torch.float32", and any other dtype torch names ("float8_e4m3fn", "double")."""
    if isinstance(dtype, str):
        name = dtype.removeprefix("torch.")
        name = DTYPE_NAMES.get(name, name)
        dtype = getattr(torch, name, None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"unknown dtype {name!r}")  # noqa: TRY004 - a bad name, not a bad type
    return torch.empty((), dtype=dtype).element_size()


def _layer_tokens(spec: LayerSpec, seq_len: int, last_step_tokens: int, reordered: bool,
                  max_cache_len: int | None) -> int:
    """Tokens of storage one layer holds per sequence (see the module docstring for the rules)."""
    if spec.kind == "none":
        return 0
    if max_cache_len is not None:  # static cache: preallocated, independent of seq_len
        return max_cache_len if spec.kind == "full" else min(spec.window, max_cache_len)
    if spec.kind == "full" or seq_len == 0:
        return seq_len
    keep = spec.window - 1  # a dynamic sliding layer keeps the last window - 1 tokens ...
    if reordered:  # ... as compact copies after a beam-search reorder
        return min(seq_len, keep)
    return min(seq_len - last_step_tokens, keep) + last_step_tokens  # ... else as a view of the last cat


# hybrid: 5.x generate unsets it, which leaves a DynamicCache (4.x builds a StaticCache: compat.hybrid_builds_static);
# dynamic_full (4.x and 5.0 only): a DynamicCache built without the config, every layer a full one
DYNAMIC_RULES = ("dynamic", "offloaded", "hybrid", "dynamic_full")
STATIC_RULES = ("static", "offloaded_static", "sliding_window", "hybrid_chunked", "offloaded_hybrid",
                "offloaded_hybrid_chunked")


def cache_rules(cache_implementation: str | None) -> str:
    """The rules an implementation's bytes follow: "dynamic", "static" or "quantized" (module docstring)."""
    if cache_implementation == "hybrid" and compat.hybrid_builds_static():
        return "static"
    if cache_implementation is None or cache_implementation in DYNAMIC_RULES:
        return "dynamic"
    if cache_implementation in STATIC_RULES:
        return "static"
    if cache_implementation == "quantized":
        return "quantized"
    raise ValueError(f"cache_implementation {cache_implementation!r} is not estimated here (dynamic, static, "
                     "offloaded, quantized and the deprecated names; the paged pool: kvbench.estimate.paged)")


def _nonzero(counts: dict[str, int]) -> dict[str, int]:
    return {kind: n for kind, n in counts.items() if n}


def kv_cache_bytes_by_layer_kind(config: Any, *, batch_size: int, seq_len: int, dtype: torch.dtype | str,
                                 num_beams: int = 1, cache_implementation: str | None = "dynamic",
                                 max_cache_len: int | None = None, last_step_tokens: int = 1) -> list[dict[str, int]]:
    """`kv_cache_bytes_at`, layer by layer and by kind: one dict per decoder layer, with key_value, and the
    conv_state / recurrent_state of linear-attention layers."""
    check_sizes(config, seq_len=seq_len, batch_size=batch_size, num_beams=num_beams, minimums={"seq_len": 0})
    rules = cache_rules(cache_implementation)
    if rules == "dynamic":
        max_cache_len = None
        last_step_tokens = max(1, min(last_step_tokens, seq_len))
    elif rules == "static":
        max_cache_len = seq_len if max_cache_len is None else max_cache_len
        if max_cache_len < seq_len:
            raise ValueError(f"a static cache of {max_cache_len} tokens cannot hold {seq_len}")
    else:
        raise ValueError("the quantized cache depends on the prompt and the steps: use estimate_kv_cache_bytes")
    if num_beams > 1 and getattr(text_config(config), "num_kv_shared_layers", 0) \
            and compat.beam_search_keeps_shared_kv_copies():
        raise NotImplementedError("beam search with KV-shared layers (Gemma-3n) in transformers 4.x: its cache keeps "
                                  "copies of the shared states that beam reordering leaves behind")
    sequences, nbytes = batch_size * num_beams, dtype_nbytes(dtype)
    layers = []
    for spec in kv_layer_specs(config):
        if cache_implementation == "dynamic_full" and spec.kind == "sliding":  # no config: no sliding layers
            spec = spec._replace(kind="full", window=None)
        tokens = _layer_tokens(spec, seq_len, last_step_tokens, num_beams > 1, max_cache_len)
        layer = {"key_value": sequences * spec.kv_heads * (spec.k_head_dim + spec.v_head_dim) * tokens * nbytes}
        if spec.state is not None and seq_len > 0:  # allocated by the first forward
            for kind, n in state_bytes(spec.state, sequences, nbytes).items():
                layer[kind] = layer.get(kind, 0) + n
        layers.append(layer)
    return layers


def kv_cache_bytes_by_layer(config: Any, **kwargs) -> list[int]:
    """Bytes each decoder layer's cache holds once ``seq_len`` positions have been fed through it (see
    `kv_cache_bytes_at`, their sum, for the arguments)."""
    return [sum(layer.values()) for layer in kv_cache_bytes_by_layer_kind(config, **kwargs)]


def kv_cache_bytes_by_kind_at(config: Any, **kwargs) -> dict[str, int]:
    """`kv_cache_bytes_at`, by kind: key_value, and the conv_state / recurrent_state of linear-attention layers."""
    out = {"key_value": 0, "conv_state": 0, "recurrent_state": 0}
    for layer in kv_cache_bytes_by_layer_kind(config, **kwargs):
        for kind, n in layer.items():
            out[kind] += n
    return _nonzero(out)


def kv_cache_bytes_at(config: Any, *, batch_size: int, seq_len: int, dtype: torch.dtype | str, num_beams: int = 1,
                      cache_implementation: str | None = "dynamic", max_cache_len: int | None = None,
                      last_step_tokens: int = 1) -> int:
    """Bytes the cache holds once ``seq_len`` positions have been fed through it.

    ``last_step_tokens`` is how many of them the latest forward fed: 1 while decoding, ``seq_len`` right after the
    prefill (a dynamic sliding layer then still holds the whole prompt, not just its window). For a static cache
    ``max_cache_len`` is its preallocated length (default: ``seq_len``). ``num_beams`` multiplies the batch, and
    beam search compacts sliding layers at every step."""
    return sum(kv_cache_bytes_by_kind_at(
        config, batch_size=batch_size, seq_len=seq_len, dtype=dtype, num_beams=num_beams,
        cache_implementation=cache_implementation, max_cache_len=max_cache_len, last_step_tokens=last_step_tokens,
    ).values())


def _after_generate(prompt_len: int, new_tokens: int) -> dict:
    """The cache `generate` returns, as `kv_cache_bytes_at`'s arguments: prompt_len + new_tokens - 1 positions
    seen (the last token is never fed), the last of them alone (the whole prompt when new_tokens == 1), a static
    cache of that length."""
    check_sizes(prompt_len=prompt_len, new_tokens=new_tokens)
    seq_len = prompt_len + new_tokens - 1
    return dict(seq_len=seq_len, max_cache_len=seq_len, last_step_tokens=prompt_len if new_tokens == 1 else 1)


def estimate_kv_cache_bytes_by_kind(config: Any, *, batch_size: int, prompt_len: int, new_tokens: int,
                                    dtype: torch.dtype | str, num_beams: int = 1,
                                    cache_implementation: str | None = "dynamic", quant_backend: str | None = None,
                                    quant_nbits: int | None = None,
                                    residual_length: int | None = None) -> dict[str, int]:
    """`estimate_kv_cache_bytes`, by kind (the kinds with bytes only)."""
    check_sizes(config, batch_size=batch_size, prompt_len=prompt_len, new_tokens=new_tokens, num_beams=num_beams)
    if cache_rules(cache_implementation) != "quantized":
        return kv_cache_bytes_by_kind_at(config, batch_size=batch_size, dtype=dtype, num_beams=num_beams,
                                         cache_implementation=cache_implementation,
                                         **_after_generate(prompt_len, new_tokens))
    return _nonzero(quant.quantized_cache_bytes(
        kv_layer_specs(config), quant_backend, quant_nbits, residual_length, sequences=batch_size * num_beams,
        prompt_len=prompt_len, new_tokens=new_tokens, dtype_bytes=dtype_nbytes(dtype), num_beams=num_beams))


def estimate_kv_cache_bytes(config: Any, *, batch_size: int, prompt_len: int, new_tokens: int,
                            dtype: torch.dtype | str, num_beams: int = 1,
                            cache_implementation: str | None = "dynamic", quant_backend: str | None = None,
                            quant_nbits: int | None = None, residual_length: int | None = None,
                            by_layer: bool = False) -> int | list[int]:
    """Bytes of the cache that ``model.generate`` returns after ``new_tokens`` tokens from a
    ``batch_size x prompt_len`` prompt (min_new_tokens = max_new_tokens = new_tokens, use_cache=True): it has seen
    ``prompt_len + new_tokens - 1`` positions, the last of them fed alone (or the whole prompt when
    new_tokens == 1); a static cache is sized ``prompt_len + new_tokens - 1``. The ``quant_*`` arguments and
    ``residual_length`` configure ``cache_implementation="quantized"`` (None: transformers' defaults).
    ``by_layer=True``: a list, one figure per decoder layer (not for the quantized cache)."""
    if by_layer:
        if cache_rules(cache_implementation) == "quantized":
            raise ValueError("by_layer: the quantized cache is estimated as a whole")
        return kv_cache_bytes_by_layer(config, batch_size=batch_size, dtype=dtype, num_beams=num_beams,
                                       cache_implementation=cache_implementation,
                                       **_after_generate(prompt_len, new_tokens))
    return sum(estimate_kv_cache_bytes_by_kind(
        config, batch_size=batch_size, prompt_len=prompt_len, new_tokens=new_tokens, dtype=dtype, num_beams=num_beams,
        cache_implementation=cache_implementation, quant_backend=quant_backend, quant_nbits=quant_nbits,
        residual_length=residual_length).values())


def kv_bytes_per_token(config: Any, dtype: torch.dtype | str, *, count_sliding: bool = False) -> int:
    """Bytes one more token adds to the cache of one sequence in the long-context steady state: the full-attention
    layers only, as sliding windows have stopped growing. ``count_sliding=True`` adds the sliding layers, i.e. the
    rate while their windows are still filling (the classic "KV bytes per token" of a model)."""
    kinds = ("full", "sliding") if count_sliding else ("full",)
    per_token = sum(s.kv_heads * (s.k_head_dim + s.v_head_dim) for s in kv_layer_specs(config) if s.kind in kinds)
    return per_token * dtype_nbytes(dtype)


def naive_kv_cache_bytes(config: Any, *, batch_size: int, seq_len: int, dtype: torch.dtype | str) -> int:
    """The textbook formula of the original study, 2 x layers x heads x (hidden / heads) x tokens x batch x bytes:
    deliberately blind to grouped-query attention, sliding windows and head_dim overrides."""
    cfg = text_config(check_config("config", config))
    check_sizes(batch_size=batch_size, seq_len=seq_len, minimums={"seq_len": 0})
    heads = cfg.num_attention_heads
    per_token = 2 * cfg.num_hidden_layers * heads * (cfg.hidden_size // heads)
    return per_token * seq_len * batch_size * dtype_nbytes(dtype)
