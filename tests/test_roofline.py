"""The decode byte model: what a cached decode step reads, by hand for two untied presets and a tied one, and against
the bytes of a real model and a real static cache."""

import pytest
import torch

import kvbench
from kvbench.estimate.roofline import decode_bytes_per_step, roofline
from kvbench.estimate.weights import decode_weight_bytes, weight_bytes_estimate
from kvbench.inputs.configs import preset_config

PHI3_PARAMS, PHI3_EMBED, PHI3_HIDDEN = 3_821_079_552, 32064 * 3072, 3072
PHI3_TOKEN_FP16 = 32 * 32 * 96 * 2 * 2  # layers x kv heads x head_dim x (keys, values) x 2 bytes
LLAMA_PARAMS, LLAMA_EMBED, LLAMA_HIDDEN = 8_030_261_248, 128256 * 4096, 4096
LLAMA_TOKEN_FP16 = 32 * 8 * 128 * 2 * 2


def test_phi3_weights_read_gather_one_row_not_the_table():
    config = preset_config("phi-3-mini-4k")
    read = decode_weight_bytes(config, torch.float16, 1)
    assert read == (PHI3_PARAMS - PHI3_EMBED + PHI3_HIDDEN) * 2 == 7_445_164_032
    assert weight_bytes_estimate(config, torch.float16) == PHI3_PARAMS * 2  # memory still holds every weight
    # the old figure (every weight) overstated the weights a step reads by 2.6% of itself
    assert (PHI3_PARAMS * 2 - read) / (PHI3_PARAMS * 2) == pytest.approx(0.0258, abs=5e-5)


def test_llama_weights_read_gather_batch_rows():
    config = preset_config("llama-3.1-8b")
    assert decode_weight_bytes(config, torch.float16, 4) == (LLAMA_PARAMS - LLAMA_EMBED + 4 * LLAMA_HIDDEN) * 2
    read = decode_weight_bytes(config, torch.float16, 1)
    assert (LLAMA_PARAMS * 2 - read) / (LLAMA_PARAMS * 2) == pytest.approx(0.0654, abs=5e-5)


def test_phi3_original_study_dynamic_and_static():
    config = preset_config("phi-3-mini-4k")
    weights = (PHI3_PARAMS - PHI3_EMBED + PHI3_HIDDEN) * 2
    # dynamic: after step k the cache holds 55 + k positions, k = 1..99: 105 on average (far below the 2047 window)
    dynamic = decode_bytes_per_step(config, kvbench.Scenario(55, 100), torch.float16)
    assert dynamic == weights + 105 * PHI3_TOKEN_FP16 == 7_486_451_712
    # static: the preallocated P + N - 1 = 154 positions at every step (not P + N = 155)
    static = decode_bytes_per_step(config, kvbench.Scenario(55, 100, cache_implementation="static"), torch.float16)
    assert static == weights + 154 * PHI3_TOKEN_FP16 == 7_505_719_296


def test_llama_batch_of_four():
    config = preset_config("llama-3.1-8b")
    weights = (LLAMA_PARAMS - LLAMA_EMBED + 4 * LLAMA_HIDDEN) * 2
    per_step = decode_bytes_per_step(config, kvbench.Scenario(128, 65, batch_size=4), torch.float16)
    assert per_step == weights + 4 * (128 + 32.5) * LLAMA_TOKEN_FP16 == 15_094_030_336


def test_tied_gpt2_reads_its_table_whole_once_as_the_lm_head():
    config = preset_config("gpt2")  # wte (50257 x 768) tied to the LM head; wpe (1024 x 768) only gathered
    params = 124_439_808  # the tied table counted once
    read = decode_weight_bytes(config, torch.float32, 2)
    assert read == (params - 1024 * 768 + 2 * (768 + 768)) * 4 == 494_625_792
    token = 12 * 12 * 64 * 2 * 4
    per_step = decode_bytes_per_step(config, kvbench.Scenario(10, 5, batch_size=2), torch.float32)
    assert per_step == read + 2 * 12.5 * token  # 11..14 positions after steps 1..4


@pytest.mark.parametrize("tied", [False, True])
def test_weights_read_match_a_real_model(tied):
    """The meta-device layout against a model with real tensors: every parameter's bytes, less each embedding table
    that is not the LM head, plus one row of each per sequence."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=300, max_position_embeddings=64, tie_word_embeddings=tied)
    model = AutoModelForCausalLM.from_config(config)
    table, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert (table is head) == tied
    every = sum(p.numel() * p.element_size() for p in model.parameters())
    expected = every - (0 if tied else table.nbytes) + 3 * table[0].nbytes
    assert decode_weight_bytes(config, torch.float32, 3) == expected


def test_static_cache_read_is_the_measured_cache(tiny_loaded):
    """A static cache's step reads the cache generate really allocated (P + N - 1 positions), measured in bytes."""
    scenario = kvbench.Scenario(9, 4, batch_size=2, cache_implementation="static")
    rec = kvbench.measure(tiny_loaded, scenario, repeats=1, warmup=0)
    weights = decode_weight_bytes(tiny_loaded.config, tiny_loaded.dtype, 2)
    assert rec["decode_bytes_per_step_estimate"] - weights == rec["kv_cache_bytes"] > 0


def test_without_cache_or_decode_step_there_is_no_byte_model():
    config = preset_config("tiny")
    assert decode_bytes_per_step(config, kvbench.Scenario(8, 4, use_cache=False), torch.float32) is None
    assert decode_bytes_per_step(config, kvbench.Scenario(8, 1), torch.float32) is None
    assert roofline(None, 100.0, 0.01) == {"decode_roofline_s": None, "achieved_bandwidth_gbps": None,
                                           "bandwidth_fraction": None, "achieved_bandwidth_device_gbps": None}
