"""The planner's arithmetic against hand-computed cases (figures from FACTS.md and the models' config.json).

Every expected number below is written out from the models' shapes (layers x kv_heads x head_dim x 2 x bytes x
tokens, windows capped), independently of kvcache.py and capacity.py.
"""

import pandas as pd
import pytest
import torch

from kvbench.errors import UserError
from kvbench.estimate import capacity
from kvbench.estimate.capacity import Calibration
from kvbench.plan.plan import plan_capacity, resolve_target
from kvbench.units import parse_bytes

MIB, GIB = 2**20, 2**30
OVERHEAD = 500 * MIB

# Phi-3-mini-4k-instruct: 32 layers, 32 KV heads, head_dim 96, sliding window 2047 on every layer, 3,821,079,552 params
PHI3_PARAMS = 3_821_079_552
PHI3_TOKEN_FP16 = 32 * 32 * 96 * 2 * 2  # bytes per token per sequence, all layers = 393216
# Llama-3.1-8B: 32 layers, 8 KV heads, head_dim 128, full attention, 8,030,261,248 params
LLAMA_PARAMS = 8_030_261_248
LLAMA_TOKEN_BF16 = 32 * 8 * 128 * 2 * 2  # 131072
# Gemma-2-9B: 42 layers (21 sliding with window 4096 on even layers, 21 full), 8 KV heads, head_dim 256
GEMMA_LAYER_TOKEN_FP16 = 8 * 256 * 2 * 2  # 8192 bytes per token per layer
T4_USABLE = int(14.75 * GIB)  # FACTS.md: ~14.75 GiB usable by torch on a T4


@pytest.fixture(scope="module")
def t4():
    return resolve_target("T4")


def test_phi3_t4_window_does_not_matter_below_it(t4):
    assert t4.usable_bytes == T4_USABLE and t4.bandwidth_gbps == 320
    w = capacity.make_workload("phi-3-mini-4k", "float16")
    assert PHI3_TOKEN_FP16 == 393216
    # batch 8, context 1024, 128 new tokens: prompt 896; the decode cache holds 1023 < 2047 tokens: no window effect
    assert capacity.kv_prefill_bytes(w, 8, 896, 1024) == 8 * 896 * PHI3_TOKEN_FP16
    assert capacity.kv_decode_bytes(w, 8, 1024, 128) == 8 * 1023 * PHI3_TOKEN_FP16
    row = capacity.breakdown(w, t4, 8, 1024, 128)
    assert row["weights_bytes"] == PHI3_PARAMS * 2
    assert row["overhead_bytes"] == OVERHEAD


def test_phi3_t4_window_matters_at_decode_not_at_prefill(t4):
    w = capacity.make_workload("phi-3-mini-4k", "float16")
    # context 4096, 128 new: the prefill holds all 3968 prompt tokens in every (sliding) layer ...
    assert capacity.kv_prefill_bytes(w, 1, 3968, 4096) == 3968 * PHI3_TOKEN_FP16
    # ... the last step (4095 fed) holds the window's 2046 kept tokens + the one just fed, a view of 2047
    assert capacity.kv_decode_bytes(w, 1, 4096, 128) == 2047 * PHI3_TOKEN_FP16
    assert capacity.kv_decode_bytes(w, 1, 4096, 128) < 4095 * PHI3_TOKEN_FP16  # the textbook formula
    # a long generation from a short prompt peaks at decode, capped by the window
    row = capacity.breakdown(w, t4, 1, 4096, 3000)
    assert row["kv_prefill_bytes"] == 1096 * PHI3_TOKEN_FP16
    assert row["peak_phase"] == "decode" and row["kv_cache_bytes"] == 2047 * PHI3_TOKEN_FP16


def test_phi3_static_cache_preallocates_the_window(t4):
    w = capacity.make_workload("phi-3-mini-4k", "float16", cache_implementation="static")
    # static: every sliding layer is preallocated to min(window, context - 1) = 2047 tokens from the start
    assert capacity.kv_prefill_bytes(w, 2, 3968, 4096) == 2 * 2047 * PHI3_TOKEN_FP16
    assert capacity.kv_decode_bytes(w, 2, 4096, 128) == 2 * 2047 * PHI3_TOKEN_FP16
    # below the window the static cache holds context - 1 tokens, however short the prompt
    assert capacity.kv_prefill_bytes(w, 1, 10, 1000) == 999 * PHI3_TOKEN_FP16


def total(model, batch, context, new, dtype="float16"):
    """The plan's total at one point: the searches below are checked against it on both sides of their answer (the
    activations themselves are checked against measured peaks in test_peak_estimate.py, not against a formula)."""
    w = capacity.make_workload(model, dtype)
    big = capacity.Target("big", 2**62, None)
    return capacity.breakdown(w, big, batch, context, new)["total_bytes"]


def phi3_total(batch, context, new):
    return total("phi-3-mini-4k", batch, context, new)


def test_phi3_t4_breakdown_by_hand(t4):
    w = capacity.make_workload("phi-3-mini-4k", "float16")
    row = capacity.breakdown(w, t4, 1, 4096, 128)
    kv_p = 3968 * PHI3_TOKEN_FP16  # the prefill holds the whole prompt
    assert row["kv_prefill_bytes"] == kv_p and row["activation_prefill_bytes"] > 0
    parts = row["weights_bytes"] + row["kv_cache_bytes"] + row["kv_transient_bytes"] + row["activation_bytes"]
    assert row["weights_bytes"] == PHI3_PARAMS * 2 and row["total_bytes"] == parts + OVERHEAD
    assert row["fits"] and row["headroom_bytes"] == T4_USABLE - row["total_bytes"]
    # decode roofline: every weight but the embedding table (one 3072-wide row gathered) and the whole cache, once
    # per step at 320 GB/s
    read = (PHI3_PARAMS - 32064 * 3072 + 3072) * 2 + 2047 * PHI3_TOKEN_FP16
    assert row["decode_bytes_per_step"] == read
    assert row["decode_step_roofline_s"] == pytest.approx(read / 320e9)
    assert row["decode_step_s"] is None  # not calibrated


def test_phi3_t4_longest_context_and_most_sequences(t4):
    plan = plan_capacity("Phi-3-mini-4k", "t4", dtype="float16", batch_sizes=[1, 8], contexts=[1024, 4096])
    longest = plan[plan.question == "longest_context"].set_index("batch_size")
    # batch 1 reaches the 4096-token context window
    assert longest.loc[1, "context_len"] == 4096 and longest.loc[1, "limit"] == "context window"
    # batch 8: the memory boundary, checked against the hand-computed totals on both sides
    c = int(longest.loc[8, "context_len"])
    assert longest.loc[8, "limit"] == "memory"
    assert phi3_total(8, c, 128) <= T4_USABLE < phi3_total(8, c + 1, 128)
    most = plan[plan.question == "most_sequences"].set_index("context_len")
    for context in (1024, 4096):
        b = int(most.loc[context, "batch_size"])
        assert phi3_total(b, context, 128) <= T4_USABLE < phi3_total(b + 1, context, 128)


def llama_total(batch, context, new):
    return total("llama-3.1-8b", batch, context, new, "bfloat16")


def test_llama_8b_a100_80gb():
    a100 = resolve_target("A100-80GB")
    assert a100.usable_bytes == 85_040_352_461 and a100.bandwidth_gbps == 2039
    plan = plan_capacity("llama-3.1-8b", "a100-80gb", batch_sizes=[1, 8], contexts=[4096, 131072])
    assert set(plan["dtype"]) == {"bfloat16"}  # the config's dtype, supported by an A100
    grid = plan[plan.question == "breakdown"].set_index(["batch_size", "context_len"])
    assert grid.loc[(1, 131072), "kv_prefill_bytes"] == 130944 * LLAMA_TOKEN_BF16
    assert grid.loc[(1, 131072), "kv_decode_bytes"] == 131071 * LLAMA_TOKEN_BF16  # GQA: 8 KV heads of 32
    for (b, c), total in grid["total_bytes"].items():
        assert total == llama_total(b, c, 128)
    longest = plan[plan.question == "longest_context"].set_index("batch_size")
    assert longest.loc[1, "context_len"] == 131072 and longest.loc[1, "limit"] == "context window"
    c = int(longest.loc[8, "context_len"])
    assert llama_total(8, c, 128) <= a100.usable_bytes < llama_total(8, c + 1, 128)
    most = plan[plan.question == "most_sequences"].set_index("context_len")
    b = int(most.loc[4096, "batch_size"])
    assert llama_total(b, 4096, 128) <= a100.usable_bytes < llama_total(b + 1, 4096, 128)


def test_gemma2_head_dim_and_alternating_windows():
    w = capacity.make_workload("gemma-2-9b", "float16")
    # context 8192, 128 new: full layers hold 8191 tokens, sliding ones their 4096-token window (view of the cat)
    assert capacity.kv_decode_bytes(w, 1, 8192, 128) == 21 * GEMMA_LAYER_TOKEN_FP16 * (8191 + 4096)
    # head_dim is 256, not hidden / heads = 224
    assert capacity.kv_decode_bytes(w, 1, 8192, 128) != 21 * (8 * 224 * 2 * 2) * (8191 + 4096)
    # the prefill holds the whole 8064-token prompt in all 42 layers
    assert capacity.kv_prefill_bytes(w, 1, 8064, 8192) == 42 * GEMMA_LAYER_TOKEN_FP16 * 8064
    # below the window both kinds hold every token
    assert capacity.kv_decode_bytes(w, 2, 2048, 128) == 2 * 42 * GEMMA_LAYER_TOKEN_FP16 * 2047
    static = capacity.make_workload("gemma-2-9b", "float16", cache_implementation="static")
    assert capacity.kv_prefill_bytes(static, 1, 100, 8192) == 21 * GEMMA_LAYER_TOKEN_FP16 * (8191 + 4096)


def test_gemma2_attention_activations_follow_the_attention_transformers_runs():
    """Gemma-2 runs eager attention where transformers' Gemma-2 has no SDPA (5.24: soft-capping) and SDPA where it
    has (4.57, 5.17): with eager, scores and masks grow with the prompt squared; with SDPA and no mask, neither."""
    from transformers import AutoModelForCausalLM

    w = capacity.make_workload("gemma-2-9b", "float16")
    tiny = type(w.config)(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                          num_key_value_heads=1, head_dim=16, vocab_size=128)  # a Gemma2Config, like the preset's
    runs = AutoModelForCausalLM.from_config(tiny).config._attn_implementation  # what transformers picks for it
    assert runs in ("eager", "sdpa") and w.dims.eager == (runs == "eager") and w.dims.head_dim == 256
    p = 1024
    grows = capacity.activation_prefill_bytes(w, 1, 2 * p, 4096) / capacity.activation_prefill_bytes(w, 1, p, 4096)
    # eager: the scores grow with the prompt squared; SDPA without a mask: the activations grow linearly
    assert grows > 3 if w.dims.eager else grows == pytest.approx(2, rel=0.01)


def test_beams_expand_the_prefill_and_compact_sliding_layers():
    per_token = 32 * 8 * 128 * 2 * 2  # Mistral-7B: 32 layers, 8 KV heads, head_dim 128, window 4096
    w = capacity.make_workload("mistral-7b", "float16", num_beams=4)
    # prefill: batch x beams sequences of the whole prompt, nothing reordered yet
    assert capacity.kv_prefill_bytes(w, 1, 8064, 8192) == 4 * 8064 * per_token
    # decode: beam reorders make compact copies of the window - 1 = 4095 kept tokens
    assert capacity.kv_decode_bytes(w, 1, 8192, 128) == 4 * 4095 * per_token
    greedy = capacity.make_workload("mistral-7b", "float16")
    assert capacity.kv_decode_bytes(greedy, 1, 8192, 128) == 4096 * per_token  # a view of the last cat
    llama = capacity.make_workload("llama-3.1-8b", "bfloat16", num_beams=4)
    assert capacity.kv_decode_bytes(llama, 2, 1024, 128) == 8 * 1023 * LLAMA_TOKEN_BF16


def test_quantized_kv_int4_and_int8_are_aliases():
    """--kv-dtype int4 / int8 are the quantized cache (quanto 4 bits / hqq 8 bits), planned by its exact rules
    (tests/test_plan_caches.py checks those)."""
    w = capacity.make_workload("llama-3.1-8b", "bfloat16", kv_dtype="int4")
    assert (w.cache_implementation, w.quant_backend, w.quant_nbits, w.quant_residual_length) == ("quantized", "quanto",
                                                                                              4, 128)
    assert w.kv_dtype == "bfloat16"  # the residual and the dequantized layer
    w8 = capacity.make_workload("llama-3.1-8b", "bfloat16", kv_dtype="int8")
    assert (w8.quant_backend, w8.quant_nbits) == ("hqq", 8)
    with pytest.raises(UserError, match="full-attention"):
        capacity.make_workload("phi-3-mini-4k", "float16", kv_dtype="int4")
    with pytest.raises(UserError, match="one or the other"):
        capacity.make_workload("llama-3.1-8b", "bfloat16", kv_dtype="int8", cache_implementation="static")


def test_auto_dtype_follows_the_card():
    assert capacity.make_workload("phi-3-mini-4k", "auto", target=resolve_target("t4")).dtype == torch.float16
    assert capacity.make_workload("phi-3-mini-4k", "auto", target=resolve_target("a100")).dtype == torch.bfloat16
    assert capacity.make_workload("phi-3-mini-4k", "float32").kv_dtype == "float32"


@pytest.mark.parametrize("text,expected", [
    ("16GiB", 16 * GIB), ("14.75GiB", int(14.75 * GIB)), ("24GB", 24 * 10**9), ("1.5e10", 15 * 10**9),
    ("512 MiB", 512 * MIB), ("80gb", 80 * 10**9),
])
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["lots", "16 GiBs", "-4GiB", "0", "12", "1e30", ""])
def test_parse_bytes_refuses(text):
    with pytest.raises(UserError, match="--memory"):
        parse_bytes(text)


def test_targets():
    assert resolve_target("h100").name == "NVIDIA H100 SXM"
    capped = resolve_target("a100-80gb", memory="14.75GiB")
    assert capped.usable_bytes == int(14.75 * GIB) and capped.bandwidth_gbps == 2039
    bare = resolve_target(None, memory="16GiB")
    assert bare.usable_bytes == 16 * GIB and bare.bandwidth_gbps is None
    assert resolve_target("l4").usable_bytes == 24 * GIB  # usable not observed: the nominal size, said so
    assert "nominal" in resolve_target("l4").source
    with pytest.raises(UserError, match="unknown GPU"):
        resolve_target("voodoo5")


def test_no_local_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="no --gpu or --memory"):
        resolve_target(None)


def test_plan_refuses_bad_settings():
    with pytest.raises(UserError, match="context window"):
        plan_capacity("phi-3-mini-4k", "t4", contexts=[8192])
    with pytest.raises(UserError, match="longer than --new-tokens"):
        plan_capacity("phi-3-mini-4k", "t4", contexts=[100], new_tokens=128)
    with pytest.raises(UserError, match="--kv-dtype"):
        plan_capacity("phi-3-mini-4k", "t4", kv_dtype="int3")
    with pytest.raises(UserError, match="unknown model"):
        plan_capacity("phi-4-giga", "t4")


def test_weights_that_do_not_fit_give_a_plan_where_nothing_fits():
    plan = plan_capacity("llama-3.1-8b", "t4", batch_sizes=[1], contexts=[1024])
    assert not plan["fits"].any()
    assert set(plan.loc[plan.question != "breakdown", "limit"]) == {"memory: nothing fits"}


def test_calibration_changes_the_terms(t4):
    w = capacity.make_workload("phi-3-mini-4k", "float16")
    cal = Calibration(activation_scale=2.0, activation_offset_bytes=MIB, overhead_bytes=300 * MIB,
                      bandwidth_fraction=0.5, step_overhead_s=0.001, source="test")
    row = capacity.breakdown(w, t4, 1, 4096, 128, cal)
    plain = capacity.breakdown(w, t4, 1, 4096, 128)
    assert row["activation_prefill_bytes"] == 2 * plain["activation_prefill_bytes"] + MIB
    assert row["overhead_bytes"] == 300 * MIB
    assert row["decode_step_s"] == pytest.approx(0.001 + 2 * row["decode_step_roofline_s"])


def test_memory_only_target_has_no_roofline():
    plan = plan_capacity("tiny", None, memory="1GiB", dtype="float32", batch_sizes=[1], contexts=[1024])
    assert plan["decode_step_roofline_s"].isna().all()
    assert plan.loc[plan.question == "longest_context", "limit"].item() == "context window"


TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=256,
            max_position_embeddings=128)


@pytest.mark.parametrize("model_type,extra", [
    ("llama", dict(num_key_value_heads=2)),
    ("phi3", dict(num_key_value_heads=4, sliding_window=31, pad_token_id=0)),
    ("gemma2", dict(num_key_value_heads=2, head_dim=32, sliding_window=16)),
    ("mistral", dict(num_key_value_heads=1, sliding_window=16)),
    ("qwen2", dict(num_key_value_heads=2)),
    ("gpt2", dict(n_embd=64, n_layer=2, n_head=4, n_positions=128)),
])
def test_param_count_equals_the_instantiated_model(model_type, extra):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(model_type, **{**TINY, **extra})
    model = AutoModelForCausalLM.from_config(config)
    instantiated = sum(p.numel() for p in model.parameters())
    w = capacity.make_workload(config, "float32")
    assert w.weight_bytes == instantiated * 4
    assert w.weight_bytes == sum(p.numel() * p.element_size() for p in model.parameters())


def test_local_gpu_detection(monkeypatch):
    """No --gpu and no --memory: the local GPU, its memory as torch sees it, its bandwidth from NVML or the table."""
    import kvbench.measuring.instruments.nvml

    class Props:
        name, total_memory = "Tesla T4", 15_835_660_288

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Props())
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    monkeypatch.setattr(kvbench.measuring.instruments.nvml, "nvml_gpu_info", lambda device: {})
    local = resolve_target(None)
    assert (local.name, local.usable_bytes, local.bandwidth_gbps, local.bf16) == ("Tesla T4", 15_835_660_288, 320,
                                                                                   False)
    monkeypatch.setattr(kvbench.measuring.instruments.nvml, "nvml_gpu_info", lambda device: {"gpu_bandwidth_gbps": 320.064})
    assert resolve_target("local").bandwidth_gbps == 320.064
    plan = plan_capacity("phi-3-mini-4k", batch_sizes=[1], contexts=[1024])
    assert set(plan["gpu"]) == {"Tesla T4"} and set(plan["dtype"]) == {"float16"}  # bf16 model, no bf16 here


def test_cache_settings_travel_as_one_object_or_as_keywords():
    from kvbench.plan.plan import CacheSettings

    grid = dict(batch_sizes=[1], contexts=[1024])
    by_keywords = plan_capacity("llama-3.1-8b", "t4", dtype="float16", kv_dtype="int4", **grid)
    by_object = plan_capacity("llama-3.1-8b", "t4", settings=CacheSettings(dtype="float16", kv_dtype="int4"), **grid)
    pd.testing.assert_frame_equal(by_keywords, by_object)
    assert set(by_object["cache_implementation"]) == {"quantized"}  # int4: the quantized cache (quanto, 4 bits)
    mixed = plan_capacity("llama-3.1-8b", "t4", settings=CacheSettings(dtype="float32"), dtype="float16", **grid)
    assert set(mixed["dtype"]) == {"float16"}  # a keyword overrides the object's field
    with pytest.raises(TypeError, match="kv_dtyp"):
        plan_capacity("llama-3.1-8b", "t4", kv_dtyp="int4", **grid)
