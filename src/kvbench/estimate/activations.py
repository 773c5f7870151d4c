"""The activations of one `generate` call at its two candidate peaks (the planner's memory model, beside the cache's
exact bytes in `plan_kv`): what torch tensors hold besides the weights and the cache, modelled from what the
allocation events of transformers' forwards show on the CPU (`kvbench.measuring.instruments.alloc_peak`, results/cpu-memory).

The prefill's peak is inside the last layer, at the larger of two moments:

* the MLP: the residual stream (the input embeddings, which the model's forward keeps, the residual, the normed
  copy, and the rotary tables cos and sin, 2 x head_dim a token; GPT-2-style blocks also keep the attention's output
  and the position embeddings' sum) and the MLP's intermediates alive together (`mlp_elements`);
* the attention: the stream, q, k, v and the attention output, keys expanded to every query head where scores are
  materialized, and the scores themselves where the kernel materializes them (`scores_materialized`: eager
  attention always; PyTorch's SDPA on the CPU when keys and values differ in head size, as multi-head latent
  attention's do, falling back to its math kernel) with their softmax in float32;
plus the masks transformers materializes (a boolean [P, K] per distinct window, broadcast over the batch).

The last decode step holds the logits (the LM head's S x vocab, generate's float32 copy, and the decoding's
float32 temporaries: sampling's softmax, beam search's log-softmax and scores over beams x vocab), and the grown
copy of one layer that a dynamic cache's `torch.cat` makes before freeing the old.
"""

from __future__ import annotations

from .. import compat
from ..inputs.configs import text_config

# MLP blocks without a gate: up, activation, down (GPT-2, GPT-NeoX, OPT, BLOOM, Falcon, Phi-1/2, ...)
UNGATED = {"gpt2", "gpt_neox", "opt", "bloom", "falcon", "phi", "gptj", "gpt_bigcode", "codegen", "starcoder2"}
FUSED_GATE_UP = {"phi3", "phimoe"}  # one projection makes gate and up; both halves stay alive (chunk views)
# activations transformers writes as Python formulas (each step a temporary of the intermediate's size)
FORMULA_ACTIVATIONS = {"gelu_new", "gelu_fast", "gelu_python", "quick_gelu", "gelu_accurate"}


def mlp_elements(config) -> int:
    """Elements per token alive at the MLP's peak: gated blocks hold the activation, the up projection and their
    product (3 x intermediate; a fused gate-up projection 4 x); ungated ones the up projection and the activation (a
    formula activation: 4 x intermediate); mixture-of-experts layers the routed copies of each token (k x hidden) and
    the expert's fused gate-up, activation and product (k x 4 x expert intermediate), plus shared experts. On 4.x,
    whose layers run one expert at a time (`compat.experts_loop_over_their_tokens`): the zeroed output (hidden) and
    one expert's share of the tokens, k / experts of them with routing balanced, each holding its copy, gate, up,
    activation, product, output and weighted output (3 x hidden + 4 x expert intermediate). A random model's busiest
    expert takes more or less than that share: on 4.57, tests/test_peak_estimate.py's Mixtral at P160 B2 peaks at
    2,361,512 bytes, estimated 2,375,680 (1.006x; 4,997,120 with 5.x's term)."""
    c = text_config(config)
    kind = getattr(c, "model_type", "")
    inter = getattr(c, "intermediate_size", None) or getattr(c, "n_inner", None) or 4 * c.hidden_size
    act = getattr(c, "hidden_act", None) or getattr(c, "activation_function", None) or ""
    if kind in UNGATED:
        dense = 4 * inter if act in FORMULA_ACTIVATIONS else 2 * inter
    else:
        dense = (4 if kind in FUSED_GATE_UP else 3) * inter
    experts = getattr(c, "num_experts_per_tok", None)
    if not experts:
        return dense
    expert_inter = getattr(c, "moe_intermediate_size", None) or inter
    count = getattr(c, "num_local_experts", None) or getattr(c, "num_experts", None) \
        or getattr(c, "n_routed_experts", None)
    if compat.experts_loop_over_their_tokens() and count:
        moe = c.hidden_size + round(experts / count * (3 * c.hidden_size + 4 * expert_inter))
    else:
        moe = experts * (c.hidden_size + 4 * expert_inter)
    shared = getattr(c, "n_shared_experts", None) or 0
    moe += 3 * shared * expert_inter
    dense_layers = getattr(c, "first_k_dense_replace", None) or 0
    return max(moe, dense) if dense_layers else moe


def stream_elements(config, head_dim: int) -> int:
    """Elements per token of the residual stream alive in a layer (see the module's doc)."""
    c = text_config(config)
    if getattr(c, "model_type", "") in UNGATED:
        return 6 * c.hidden_size
    return 4 * c.hidden_size + 2 * head_dim


def scores_materialized(w) -> bool:
    """Whether attention writes the B x H x P x K scores: eager always; SDPA on the CPU where keys and values differ
    in head size (its flash kernel needs them equal, so the math kernel runs)."""
    d = w.dims
    return d.eager or d.v_head_dim != d.head_dim


def masks(w, q_len: int, kv_len: int) -> int:
    """Attention masks transformers materializes and keeps through the layers (one per distinct window): always with
    eager attention; with SDPA only where `is_causal` cannot stand in: a sliding window the keys reach, or a
    multi-token query shorter than the keys of a dynamic cache (a static cache's prefill keeps none on the CPU:
    measured, results/cpu-memory)."""
    if w.dims.eager:
        return len(w.dims.windows)
    if w.rules == "static":
        return sum(1 for win in w.dims.windows if win is not None and kv_len >= win)
    return sum(1 for win in w.dims.windows
               if (win is not None and kv_len >= win) or not (q_len == 1 or kv_len == q_len))


def score_bytes(w) -> int:
    """Bytes per element of the B x H x P x K scores at their peak where they are materialized: eager attention
    holds the scores, their float32 softmax and its cast back (one copy when the dtype is float32; soft-capping's
    temporaries fit within it); SDPA's math kernel the scores, their softmax and a boolean of masked positions."""
    e = w.compute_bytes
    if w.dims.eager:
        return e + 4 + (e if e != 4 else 0)
    return 2 * e + 1


def activation_prefill_bytes(w, sequences: int, prompt_len: int, context_len: int) -> int:
    """Activations at the peak of the prefill (S = batch x beams sequences of P tokens, e bytes, K keys attended: P,
    or a static cache's length context - 1): the larger of the MLP's moment (the stream and the MLP's
    intermediates) and the attention's (the stream less the layer's residual sum, and the attention's working set),
    plus the masks. The logits of the last position are made after the last layer's peak."""
    d, e, s, p = w.dims, w.compute_bytes, sequences, prompt_len
    keys = context_len - 1 if w.rules == "static" else p
    stream = s * p * stream_elements(w.config, d.head_dim) * e
    mlp = stream + s * p * mlp_elements(w.config) * e
    attention = stream - s * p * d.hidden * e
    if d.eager:  # the rotated queries (keys and values are the cache's), keys expanded to every query head
        attention += s * p * d.heads * d.head_dim * e
        if d.heads != d.kv_heads:
            attention += s * d.heads * keys * (d.head_dim + d.v_head_dim) * e
        attention += s * d.heads * p * keys * score_bytes(w)
    else:  # q, k, v, and the attention's output; SDPA's math kernel adds its scores and one scaled copy of q
        attention += s * p * (2 * d.heads * d.head_dim + d.kv_heads * (d.head_dim + d.v_head_dim) + d.hidden) * e
        if scores_materialized(w):
            attention += s * d.heads * (p * keys * score_bytes(w) + p * d.head_dim * e)
    # eager: a float mask per window over the batch; SDPA: a boolean one, broadcast
    mask_bytes = s * e if d.eager else 1
    return max(mlp, attention) + masks(w, p, keys) * p * keys * mask_bytes


def decoding_temporaries(w, sequences: int) -> int:
    """generate's float32 working set over the vocabulary at a step: the logits' copy, and sampling's softmax or
    beam search's log-softmax and its running scores (S = batch x beams sequences)."""
    vocab = w.dims.vocab
    decoding = "beam" if w.num_beams > 1 else w.decoding
    copies = {"sample": 2, "beam": 3}.get(decoding, 1)
    return sequences * vocab * 4 * copies


def activation_decode_bytes(w, batch_size: int, context_len: int, new_tokens: int, layer_bytes: int) -> int:
    """The working set of the last decode step (S = batch x beams sequences, T = context - 1 cached tokens): the
    LM head's logits and generate's float32 temporaries; `layer_bytes`, the grown copy of one layer a dynamic cache
    makes; where scores are materialized, keys expanded to every query head and the S x heads x T scores; the masks."""
    d, e, s = w.dims, w.compute_bytes, batch_size * w.num_beams
    seq_len = context_len - 1
    working = s * d.vocab * e + decoding_temporaries(w, s)
    working += layer_bytes if w.rules == "dynamic" else 0
    if scores_materialized(w):
        if d.heads != d.kv_heads:
            working += d.heads // d.kv_heads * layer_bytes
        working += s * d.heads * seq_len * (2 * e + 4)
    return working + masks(w, 1, seq_len) * seq_len
