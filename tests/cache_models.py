"""Tiny random-weights models of the architectures the cache tests run (GQA, sliding window, MLA, SSM, hybrids),
and one generate call the way kvbench makes it (exactly N new tokens)."""

from __future__ import annotations

import warnings

import pytest
import torch
import transformers

from kvbench.compat import generate_call_kwargs

warnings.filterwarnings("ignore")
transformers.logging.set_verbosity_error()

SPECIAL = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "vocab_size": 128}
WINDOW = 8
# hidden 128 / 4 heads: head_dim 32 with 2 KV heads, so quanto's 64-value groups divide every KV tensor
ATTN = {"hidden_size": 128, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 256, **SPECIAL}
SSM = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, **SPECIAL)
MAMBA2 = dict(mamba_n_heads=8, mamba_d_head=16, mamba_n_groups=2, mamba_d_state=8, mamba_d_conv=4, mamba_expand=2,
              mamba_chunk_size=16)
MOE = dict(n_routed_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1, moe_intermediate_size=32,
           first_k_dense_replace=1)

# name -> (config class, kwargs, what it stands for)
ARCHS = {
    "llama": ("LlamaConfig", ATTN, "grouped-query attention"),
    "mistral": ("MistralConfig", {**ATTN, "sliding_window": WINDOW}, "sliding window"),
    "gemma2": ("Gemma2Config", {**ATTN, "head_dim": 24, "sliding_window": WINDOW}, "alternating windows"),
    "deepseek_v3": ("DeepseekV3Config", {**ATTN, "num_key_value_heads": 4, "kv_lora_rank": 64, "q_lora_rank": 32,
                                         "qk_rope_head_dim": 64, "qk_nope_head_dim": 16, "v_head_dim": 32, **MOE},
                    "multi-head latent attention"),
    "mamba2": ("Mamba2Config", dict(hidden_size=64, num_hidden_layers=2, state_size=16, expand=2, head_dim=16,
                                    num_heads=8, n_groups=2, conv_kernel=4, chunk_size=16, **SPECIAL), "SSM only"),
    "jamba": ("JambaConfig", dict(**SSM, num_hidden_layers=4, attn_layer_period=2, attn_layer_offset=1,
                                  expert_layer_period=2, expert_layer_offset=1, num_experts=2, num_experts_per_tok=1,
                                  mamba_d_state=8, mamba_d_conv=4, mamba_expand=2, mamba_dt_rank=8,
                                  use_mamba_kernels=False), "Mamba + attention layers"),
    "falcon_h1": ("FalconH1Config", dict(**SSM, num_hidden_layers=2, head_dim=16, mamba_d_ssm=128, **MAMBA2),
                  "hybrid layers (SSM beside attention)"),
    "qwen3_next": ("Qwen3NextConfig", dict(**SSM, num_hidden_layers=2, head_dim=16,
                                           layer_types=["linear_attention", "full_attention"], linear_num_key_heads=2,
                                           linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=8,
                                           linear_conv_kernel_dim=4, num_experts=2, num_experts_per_tok=1,
                                           moe_intermediate_size=32, shared_expert_intermediate_size=32),
                   "gated delta net + attention"),
    "lfm2": ("Lfm2Config", dict(**SSM, num_hidden_layers=2, layer_types=["conv", "full_attention"], conv_L_cache=3),
             "short convolution + attention"),
}

# more SSM hybrids, checked in dynamic and static caches only (the matrix above covers the decodings)
MORE_SSM = {
    "bamba": ("BambaConfig", dict(**SSM, num_hidden_layers=2, attn_layer_indices=[1], **MAMBA2), "Mamba-2 + attention"),
    "granitemoehybrid": ("GraniteMoeHybridConfig", dict(**SSM, num_hidden_layers=2, layer_types=["mamba", "attention"],
                                                        num_local_experts=2, num_experts_per_tok=1,
                                                        shared_intermediate_size=64, **MAMBA2), "Mamba-2 + MoE"),
    "nemotron_h": ("NemotronHConfig", dict(**SSM, head_dim=16,
                                           layer_types=["linear_attention", "full_attention", "mlp"],
                                           mamba_num_heads=8, mamba_head_dim=16, n_groups=2, ssm_state_size=8,
                                           conv_kernel=4, expand=2, chunk_size=16), "Mamba-2, attention, MLP"),
    "zamba2": ("Zamba2Config", dict(**{**SSM, "num_key_value_heads": 4}, num_hidden_layers=3,
                                    layers_block_type=["mamba", "hybrid", "mamba"], mamba_d_state=8, mamba_d_conv=4,
                                    mamba_expand=2, mamba_ngroups=2, mamba_headdim=16, n_mamba_heads=8,
                                    chunk_size=16, use_mem_rope=False, num_mem_blocks=1),
               "Mamba-2 with a shared attention block"),
    # zamba ties its shared attention block across hybrid layers: at least two of them (layers 2, 5, 8)
    "zamba": ("ZambaConfig", dict(**SSM, num_hidden_layers=9, attn_layer_period=3, attn_layer_offset=2,
                                  mamba_d_state=8, mamba_d_conv=4, mamba_expand=2, n_mamba_heads=2, mamba_dt_rank=8,
                                  use_mamba_kernels=False), "multi-head Mamba with a shared attention block"),
}


def build(arch: str, dtype=torch.float32):
    """(config, model) of a tiny random-weights model; skipped where this transformers lacks the architecture."""
    class_name, kwargs, _ = {**ARCHS, **MORE_SSM}[arch]
    cls = getattr(transformers, class_name, None)
    if cls is None:
        pytest.skip(f"{class_name} is not in transformers {transformers.__version__}")
    config = cls(**kwargs)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config)
    return config, model.to(dtype).eval()


def skip_if_refused(config, model, impl: str = "dynamic", *, prompt_len: int = 12, new_tokens: int = 3,
                    batch: int = 1, num_beams: int = 1, **quant):
    """Skip, with kvbench's own one-line refusal as the reason, what the installed transformers cannot run (or
    kvbench cannot estimate on it): the refusals naming a release ("needs transformers >= X (installed Y)"), which
    test_caches.py tests themselves. Any other refusal is left to fail the test."""
    from kvbench import Scenario
    from kvbench.estimate.kvcache import kv_layer_specs
    from kvbench.measuring.engines import caches

    try:
        kv_layer_specs(config)
    except NotImplementedError as exc:
        if "is estimated with transformers >=" in str(exc):
            pytest.skip(str(exc))
        raise
    decoding = "beam" if num_beams > 1 else "greedy"
    scenario = Scenario(prompt_len, new_tokens, batch, cache_implementation=impl, decoding=decoding,
                        num_beams=num_beams, **quant)
    problem = caches.cache_problem(model, config, torch.device("cpu"), scenario)
    if problem and "needs transformers >=" in problem:
        pytest.skip(problem)


def generate(model, batch: int, prompt_len: int, new_tokens: int, **kwargs):
    """generate for exactly `new_tokens` tokens from a random prompt, returning the dict output."""
    model.__dict__.pop("_previous_max_cache_length", None)  # each static cache sized for its own call
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 100, (batch, prompt_len), generator=generator)
    torch.manual_seed(0)
    options = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False,
               "return_dict_in_generate": True, "use_cache": True, "pad_token_id": 0}
    return model.generate(ids, attention_mask=torch.ones_like(ids), **generate_call_kwargs({**options, **kwargs}))
