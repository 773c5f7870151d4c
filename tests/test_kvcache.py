"""kvbench.estimate.kvcache (and kvbench.measuring.instruments.cache_bytes) against the caches transformers really builds.

Tiny random-weights models (2 layers, hidden 64) of a dozen architectures run ``generate`` for exactly N new
tokens; the bytes their cache holds must equal the estimate from the config alone, to the byte.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import transformers

from kvbench.compat import cache_from_output
from kvbench.estimate.kvcache import (
    LayerSpec,
    dtype_nbytes,
    estimate_kv_cache_bytes,
    kv_bytes_per_token,
    kv_cache_bytes_at,
    kv_layer_specs,
    naive_kv_cache_bytes,
)
from kvbench.measuring.instruments.cache_bytes import cache_nbytes, cache_visible_nbytes

warnings.filterwarnings("ignore")
transformers.logging.set_verbosity_error()
WINDOW = 8  # sliding window of the tiny models: the "long" prompts exceed it, the "short" ones do not
SPECIAL = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "vocab_size": 128}
BASE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 128, **SPECIAL}


def _config(class_name: str, **kwargs):
    cls = getattr(transformers, class_name, None)
    if cls is None:
        pytest.skip(f"{class_name} is not in transformers {transformers.__version__}")
    return cls(**kwargs)


# name -> (config class, kwargs): GQA, MQA, windows (all / mixed / chunked), head_dim overrides, MLA, no-cache layers
ARCHS = {
    "llama": ("LlamaConfig", BASE),
    "mistral": ("MistralConfig", {**BASE, "sliding_window": WINDOW}),
    "phi3": ("Phi3Config", {**BASE, "sliding_window": WINDOW}),
    "qwen2": ("Qwen2Config", {**BASE, "use_sliding_window": True, "sliding_window": WINDOW, "max_window_layers": 1}),
    "gemma2": ("Gemma2Config", {**BASE, "head_dim": 24, "sliding_window": WINDOW}),
    "gemma3_text": ("Gemma3TextConfig", {**BASE, "head_dim": 24, "sliding_window": WINDOW,
                                         "layer_types": ["sliding_attention", "full_attention"]}),
    "gpt2": ("GPT2Config", dict(n_embd=64, n_layer=2, n_head=4, n_positions=128, **SPECIAL)),
    "gpt_bigcode": ("GPTBigCodeConfig", dict(n_embd=64, n_layer=2, n_head=4, n_positions=128, multi_query=True,
                                             **SPECIAL)),
    "falcon": ("FalconConfig", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, multi_query=True,
                                    new_decoder_architecture=False, **SPECIAL)),
    "falcon_new_arch": ("FalconConfig", dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                             new_decoder_architecture=True, num_kv_heads=2, **SPECIAL)),
    "opt": ("OPTConfig", dict(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                              word_embed_proj_dim=64, max_position_embeddings=128, **SPECIAL)),
    "gpt_neox": ("GPTNeoXConfig", {**BASE, "num_key_value_heads": None}),
    "deepseek_v3": ("DeepseekV3Config", {**BASE, "num_key_value_heads": 4, "kv_lora_rank": 32, "q_lora_rank": 32,
                                         "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 16,
                                         "n_routed_experts": 4, "num_experts_per_tok": 2, "n_group": 1,
                                         "topk_group": 1, "moe_intermediate_size": 32, "first_k_dense_replace": 1}),
    "llama4_chunked": ("Llama4TextConfig", {**BASE, "attention_chunk_size": WINDOW, "num_local_experts": 2,
                                            "intermediate_size_mlp": 128, "no_rope_layers": [1, 0],
                                            "layer_types": ["chunked_attention", "full_attention"]}),
    "nemotron_h_moe_layer": ("NemotronHConfig", {**BASE, "layer_types": ["full_attention", "moe"], "n_routed_experts": 2,
                                                 "moe_intermediate_size": 32, "moe_shared_expert_intermediate_size": 32,
                                                 "num_experts_per_tok": 1, "n_group": 1, "topk_group": 1}),
}
# (arch, cache_implementation) that some transformers versions cannot generate at all (not an estimation matter):
# 5.17 passes `block_sequence_ids` to create_chunked_causal_mask, which rejects it, with a static cache.
KNOWN_GENERATE_FAILURES = {("llama4_chunked", "static")}
# name -> (batch, prompt_len, new_tokens, generate kwargs, dtype)
VARIANTS = {
    "greedy-B1-short": (1, 5, 3, {}, torch.float32),
    "greedy-B3-long": (3, 13, 4, {}, torch.float32),
    "prefill-only-long": (1, 13, 1, {}, torch.float32),
    "sample-B1-long": (1, 13, 4, {"do_sample": True}, torch.float32),
    "beam2-B1-long": (1, 13, 3, {"num_beams": 2}, torch.float32),
    "beam3-B3-short": (3, 5, 2, {"num_beams": 3}, torch.float32),
    "static-B1-long": (1, 13, 3, {"cache_implementation": "static"}, torch.float32),
    "static-B3-short": (3, 4, 2, {"cache_implementation": "static"}, torch.float32),
    "bf16-B3-long": (3, 13, 3, {}, torch.bfloat16),
}


def _model(arch: str, dtype=torch.float32):
    class_name, kwargs = ARCHS[arch]
    config = _config(class_name, **kwargs)
    torch.manual_seed(0)
    try:
        model = transformers.AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError) as exc:  # an architecture this transformers cannot build as configured
        pytest.skip(f"{arch} cannot be built with transformers {transformers.__version__}: {exc}")
    return config, model.to(dtype).eval()


def _generate(model, batch: int, prompt_len: int, new_tokens: int, **kwargs):
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 100, (batch, prompt_len), generator=generator)
    torch.manual_seed(0)
    options = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False,
               "return_dict_in_generate": True, "use_cache": True, "pad_token_id": 0}
    return model.generate(ids, attention_mask=torch.ones_like(ids), **{**options, **kwargs})


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("arch", list(ARCHS))
def test_estimate_matches_generated_cache(arch, variant):
    batch, prompt_len, new_tokens, kwargs, dtype = VARIANTS[variant]
    config, model = _model(arch, dtype)
    try:
        out = _generate(model, batch, prompt_len, new_tokens, **kwargs)
    except Exception as exc:
        if (arch, kwargs.get("cache_implementation")) in KNOWN_GENERATE_FAILURES:
            pytest.skip(f"transformers {transformers.__version__} cannot generate this: {exc}")
        raise
    assert out.sequences.shape == (batch, prompt_len + new_tokens)
    measured = cache_nbytes(cache_from_output(out))
    estimated = estimate_kv_cache_bytes(config, batch_size=batch, prompt_len=prompt_len, new_tokens=new_tokens,
                                        dtype=dtype, num_beams=kwargs.get("num_beams", 1),
                                        cache_implementation=kwargs.get("cache_implementation", "dynamic"))
    assert measured == estimated > 0


def test_cache_covers_prompt_plus_new_minus_one():
    _, model = _model("llama")
    out = _generate(model, 2, 7, 5)
    keys = cache_from_output(out).layers[0].keys
    assert keys.shape == (2, 2, 7 + 5 - 1, 16)


def test_sliding_layer_storage_exceeds_visible_tensor():
    """A dynamic sliding layer keeps window-1 tokens as a view of the last torch.cat: after a long prefill the
    storage holds the whole prompt, after a decode step `window` tokens; beam search compacts it."""
    _, model = _model("mistral")
    per_token = 2 * 2 * 16 * 4 * 2  # layers x kv_heads x head_dim x float32 x (keys + values)
    prefill = cache_from_output(_generate(model, 1, 20, 1))
    assert cache_visible_nbytes(prefill) == (WINDOW - 1) * per_token
    assert cache_nbytes(prefill) == 20 * per_token
    decoded = cache_from_output(_generate(model, 1, 20, 4))
    assert (cache_visible_nbytes(decoded), cache_nbytes(decoded)) == ((WINDOW - 1) * per_token, WINDOW * per_token)
    beams = cache_from_output(_generate(model, 1, 20, 4, num_beams=2))
    assert cache_visible_nbytes(beams) == cache_nbytes(beams) == 2 * (WINDOW - 1) * per_token
    # full-attention layers: storage and visible agree
    full = cache_from_output(_generate(_model("llama")[1], 1, 20, 4))
    assert cache_visible_nbytes(full) == cache_nbytes(full)


def test_static_cache_size_and_stickiness():
    """generate preallocates P+N-1 tokens per full layer, min(window, P+N-1) per sliding layer; the length sticks to
    the model object, so a later shorter call keeps the larger cache."""
    config, model = _model("gemma2")
    long_out = _generate(model, 1, 13, 4, cache_implementation="static")
    layers = cache_from_output(long_out).layers
    assert layers[0].keys.shape[2] == WINDOW and layers[1].keys.shape[2] == 13 + 4 - 1
    short_out = _generate(model, 1, 3, 2, cache_implementation="static")
    long_bytes = estimate_kv_cache_bytes(config, batch_size=1, prompt_len=13, new_tokens=4, dtype=torch.float32,
                                         cache_implementation="static")
    assert cache_nbytes(cache_from_output(short_out)) == long_bytes


def test_cache_nbytes_shapes_and_deduplication():
    assert cache_nbytes(None) == cache_visible_nbytes(None) == 0
    k, v = torch.zeros(1, 2, 5, 4), torch.zeros(1, 2, 5, 4, dtype=torch.float16)
    legacy = ((k, v), (k.clone(), v.clone()))
    assert cache_nbytes(legacy) == 2 * (160 + 80)
    assert cache_nbytes(((k, v), (k, v))) == 160 + 80  # the same tensors twice count once
    buffer = torch.zeros(10, 8)
    views = (buffer[:5], buffer[5:], buffer[2:4])
    assert cache_nbytes(views) == 320 and cache_visible_nbytes(views) == 384  # overlapping views: visible > held
    assert cache_nbytes({"state": [torch.zeros(3)], "counter": torch.tensor(7)}) == 12  # 0-dim counters skipped


def test_kv_cache_bytes_at_rules():
    config = _config("MistralConfig", **{**BASE, "sliding_window": WINDOW})
    per_token = 2 * 2 * (16 + 16) * 2  # layers x kv_heads x (k + v dims) x fp16 bytes

    def at(seq, **kw):
        return kv_cache_bytes_at(config, batch_size=1, seq_len=seq, dtype="float16", **kw)

    assert at(5) == 5 * per_token  # below the window: everything
    assert at(100) == WINDOW * per_token  # decoding: window - 1 kept + the step's token
    assert at(100, last_step_tokens=100) == 100 * per_token  # right after a 100-token prefill
    assert at(100, num_beams=2) == 2 * (WINDOW - 1) * per_token  # compacted by beam reordering
    assert at(5, cache_implementation="static", max_cache_len=40) == WINDOW * per_token
    assert at(0) == 0
    with pytest.raises(ValueError):
        at(5, cache_implementation="quantized")


def test_specs_of_notable_configs():
    gemma2 = _config("Gemma2Config", **{**BASE, "head_dim": 24, "sliding_window": WINDOW})
    assert kv_layer_specs(gemma2) == [LayerSpec("sliding", 2, 24, 24, WINDOW), LayerSpec("full", 2, 24, 24, None)]
    bigcode = _config("GPTBigCodeConfig", n_embd=64, n_layer=3, n_head=4, multi_query=True)
    assert kv_layer_specs(bigcode) == [LayerSpec("full", 1, 16, 16, None)] * 3
    qwen2 = _config("Qwen2Config", **{**BASE, "sliding_window": WINDOW})  # use_sliding_window defaults to False
    assert {s.kind for s in kv_layer_specs(qwen2)} == {"full"}


def test_custom_caches_and_unchecked_states_raise():
    for class_name, kwargs in [("RwkvConfig", {}), ("RecurrentGemmaConfig", {}), ("MiniMaxConfig", {})]:
        config = getattr(transformers, class_name, None)
        if config is None:
            continue
        with pytest.raises(NotImplementedError, match="not estimated"):
            estimate_kv_cache_bytes(config(**kwargs), batch_size=1, prompt_len=4, new_tokens=2, dtype="float16")


def test_naive_formula_and_bytes_per_token():
    phi3 = _config("Phi3Config", hidden_size=3072, intermediate_size=8192, num_hidden_layers=32,
                   num_attention_heads=32, num_key_value_heads=32, sliding_window=2047, vocab_size=32064)
    # the original study: 375 MiB for 1000 tokens in fp16, windows ignored
    assert naive_kv_cache_bytes(phi3, batch_size=1, seq_len=1000, dtype=torch.float16) == 375 * 2**20
    assert kv_bytes_per_token(phi3, "float16") == 0  # every layer slides: no growth once the windows are full
    assert kv_bytes_per_token(phi3, "float16", count_sliding=True) == 2 * 32 * 32 * 96 * 2
    assert estimate_kv_cache_bytes(phi3, batch_size=1, prompt_len=55, new_tokens=4000, dtype="float16") == \
        2047 * 2 * 32 * 32 * 96 * 2
    llama31 = _config("LlamaConfig", hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=8, intermediate_size=14336)
    assert kv_bytes_per_token(llama31, "bfloat16") == 131072  # 128 KiB per token: GQA makes it 4x below naive
    assert naive_kv_cache_bytes(llama31, batch_size=1, seq_len=1, dtype="bf16") == 4 * 131072


def test_dtype_names():
    assert [dtype_nbytes(d) for d in ("float16", "bf16", "torch.float32", torch.bfloat16, "float8_e4m3fn")] == \
        [2, 2, 4, 2, 1]
    with pytest.raises(ValueError):
        dtype_nbytes("float13")
