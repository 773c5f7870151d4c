"""The constant-size state of linear-attention layers (Mamba, Mamba-2, gated delta nets, short convolutions).

transformers 5.x keeps it in the cache beside the KV of attention layers (``LinearAttentionLayer``: ``conv_states``
and ``recurrent_states``; ``hybrid`` layers keep both a state and keys/values). Per sequence it does not grow with
the sequence, and it is the same in dynamic and static caches; beam search multiplies its batch like the KV's.

Rules found by experiment (transformers 5.24, float32/bfloat16/float16 on CPU; tests/test_caches.py checks them):
the convolution state is [batch, channels, kernel] in the model dtype; the recurrent (SSM) state is float32 whatever
the model dtype (the scan accumulates in float32 and the cache keeps it so). Channels and state shapes by family:

* Mamba (mamba, falcon_mamba, jamba): conv [I, K], recurrent [I, S] (I the inner width, S the state size).
* Zamba's multi-head Mamba (zamba): conv [I, K], recurrent [H, I / H, S]: the same bytes as Mamba's (transformers
  5.25; its hybrid layers keep the state beside the shared attention block's keys and values).
* Mamba-2 (mamba2, bamba, granitemoehybrid, nemotron_h, falcon_h1, zamba2): conv [I + 2 G S, K] (G groups),
  recurrent [H, D, S] (H heads of D).
* gated delta net (qwen3_next, qwen3_5, olmo_hybrid): conv [2 Hk Dk + Hv Dv, K], recurrent [Hv, Dk, Dv].
* Kimi delta attention (kimi_linear): conv [3 H D, K], recurrent [H, D, D].
* short convolution (lfm2, lfm2_moe, lfm3): conv [hidden, L_cache], no recurrent state.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class StateSpec(NamedTuple):
    """The per-sequence state of one linear-attention layer: shapes without the batch dimension (None: none)."""

    conv_shape: tuple[int, ...] | None
    recurrent_shape: tuple[int, ...] | None


RECURRENT_STATE_BYTES = 4  # float32, whatever the model dtype
LINEAR_LAYER_TYPES = ("linear_attention", "conv", "hybrid", "hybrid_sliding")


def _mamba1(inner: int, kernel: int, state: int) -> StateSpec:
    return StateSpec((inner, kernel), (inner, state))


def _mamba2(inner: int, groups: int, state: int, kernel: int, heads: int, head_dim: int) -> StateSpec:
    return StateSpec((inner + 2 * groups * state, kernel), (heads, head_dim, state))


def _gated_delta(c: Any) -> StateSpec:
    kh, kd, vh, vd = c.linear_num_key_heads, c.linear_key_head_dim, c.linear_num_value_heads, c.linear_value_head_dim
    return StateSpec((2 * kh * kd + vh * vd, c.linear_conv_kernel_dim), (vh, kd, vd))


def _bamba(c: Any) -> StateSpec:
    return _mamba2(int(c.mamba_expand * c.hidden_size), c.mamba_n_groups, c.mamba_d_state, c.mamba_d_conv,
                   c.mamba_n_heads, c.mamba_d_head)


def _short_conv(c: Any) -> StateSpec:
    return StateSpec((c.hidden_size, c.conv_L_cache), None)


STATES = {
    "mamba": lambda c: _mamba1(c.intermediate_size, c.conv_kernel, c.state_size),
    "falcon_mamba": lambda c: _mamba1(c.intermediate_size, c.conv_kernel, c.state_size),
    "jamba": lambda c: _mamba1(c.mamba_expand * c.hidden_size, c.mamba_d_conv, c.mamba_d_state),
    "zamba": lambda c: StateSpec((c.mamba_expand * c.hidden_size, c.mamba_d_conv),
                                 (c.n_mamba_heads, c.mamba_expand * c.hidden_size // c.n_mamba_heads, c.mamba_d_state)),
    "mamba2": lambda c: _mamba2(int(c.expand * c.hidden_size), c.n_groups, c.state_size, c.conv_kernel,
                                c.num_heads, c.head_dim),
    "bamba": _bamba,
    "granitemoehybrid": _bamba,
    "nemotron_h": lambda c: _mamba2(c.mamba_num_heads * c.mamba_head_dim, c.n_groups, c.ssm_state_size,
                                    c.conv_kernel, c.mamba_num_heads, c.mamba_head_dim),
    "falcon_h1": lambda c: _mamba2(c.mamba_d_ssm or int(c.mamba_expand * c.hidden_size), c.mamba_n_groups,
                                   c.mamba_d_state, c.mamba_d_conv, c.mamba_n_heads, c.mamba_d_head),
    "zamba2": lambda c: _mamba2(int(c.mamba_expand * c.hidden_size), c.mamba_ngroups, c.mamba_d_state,
                                c.mamba_d_conv, c.n_mamba_heads, c.mamba_headdim),
    "qwen3_next": _gated_delta,
    "qwen3_5_text": _gated_delta,
    "qwen3_5_moe_text": _gated_delta,
    "olmo_hybrid": _gated_delta,
    "kimi_linear": lambda c: StateSpec((3 * c.linear_num_heads * c.linear_head_dim, c.linear_conv_kernel_dim),
                                       (c.linear_num_heads, c.linear_head_dim, c.linear_head_dim)),
    "lfm2": _short_conv,
    "lfm2_moe": _short_conv,
    "lfm3": _short_conv,
}


def state_spec(cfg: Any, model_type: str) -> StateSpec:
    """The state of one linear-attention layer of this (text) config; NotImplementedError for a family whose state
    has not been checked against real caches."""
    if model_type not in STATES:
        raise NotImplementedError(f"KV cache of '{model_type}' is not estimated: the shape of its linear-attention "
                                  "state has not been checked against a real cache")
    if getattr(cfg, "number_of_conv_states", 1) != 1:
        raise NotImplementedError(f"KV cache of '{model_type}' is not estimated: several conv states per layer")
    return STATES[model_type](cfg)


def _numel(shape: tuple[int, ...] | None) -> int:
    out = 1 if shape is not None else 0
    for n in shape or ():
        out *= n
    return out


def state_bytes(spec: StateSpec, sequences: int, dtype_bytes: int) -> dict[str, int]:
    """Bytes of one layer's state for ``sequences`` sequences (batch x beams), by kind."""
    return {"conv_state": sequences * _numel(spec.conv_shape) * dtype_bytes,
            "recurrent_state": sequences * _numel(spec.recurrent_shape) * RECURRENT_STATE_BYTES}
