"""Bundled presets and GPU table: they load, build, and match the published figures.

Full-size presets are instantiated on the meta device only (no memory, a few seconds in all).
"""

from __future__ import annotations

import json
from importlib import resources

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from kvbench.compat import cache_from_output, rope_parameters

PRESETS_DIR = resources.files("kvbench") / "presets"
GPUS_JSON = resources.files("kvbench") / "data" / "gpus.json"

# Parameter counts of the real checkpoints (FACTS.md); tied embeddings are counted once.
EXPECTED_PARAMS = {
    "phi-3-mini-4k": 3_821_079_552,
    "llama-3.1-8b": 8_030_261_248,
    "mistral-7b": 7_241_732_096,
    "qwen2.5-7b": 7_615_616_512,
    "gemma-2-9b": 9_241_705_984,
    "tinyllama-1.1b": 1_100_048_384,
    "gpt2": 124_439_808,
}
SYNTHETIC = {"tiny"}
ALL_PRESETS = sorted(EXPECTED_PARAMS) + sorted(SYNTHETIC)

# Attention geometry from FACTS.md: layers, query heads, kv heads, head_dim.
EXPECTED_GEOMETRY = {
    "phi-3-mini-4k": (32, 32, 32, 96),
    "llama-3.1-8b": (32, 32, 8, 128),
    "mistral-7b": (32, 32, 8, 128),
    "qwen2.5-7b": (28, 28, 4, 128),
    "gemma-2-9b": (42, 16, 8, 256),
    "tinyllama-1.1b": (22, 32, 4, 64),
    "gpt2": (12, 12, 12, 64),
}

# Every GPU of FACTS.md, by one alias each.
FACTS_GPUS = ["t4", "l4", "a10g", "a100-40gb", "a100-80gb", "h100-sxm", "h100-pcie", "h200", "rtx4090", "l40s"]


def load_preset(name: str) -> dict:
    return json.loads((PRESETS_DIR / f"{name}.json").read_text())


def build_config(name: str):
    d = load_preset(name)
    d.pop("_kvbench")
    return AutoConfig.for_model(**d)


def meta_param_count(config) -> int:
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    # parameters() yields a tied weight once.
    return sum(p.numel() for p in model.parameters())


def test_preset_files_are_exactly_the_known_ones():
    on_disk = sorted(p.name[: -len(".json")] for p in PRESETS_DIR.iterdir() if p.name.endswith(".json"))
    assert on_disk == sorted(ALL_PRESETS)


@pytest.mark.parametrize("name", ALL_PRESETS)
def test_preset_loads_and_has_kvbench_block(name):
    d = load_preset(name)
    meta = d["_kvbench"]
    assert set(meta) >= {"hub_id", "description"}
    assert isinstance(meta["description"], str) and meta["description"]
    if name in SYNTHETIC:
        assert meta["hub_id"] is None
    else:
        assert isinstance(meta["hub_id"], str) and "/" in meta["hub_id"]
    assert isinstance(d["model_type"], str)
    assert d["architectures"] and d["architectures"][0].endswith(("ForCausalLM", "LMHeadModel"))


@pytest.mark.parametrize("name", ALL_PRESETS)
def test_preset_config_builds(name):
    d = load_preset(name)
    config = build_config(name)
    assert config.model_type == d["model_type"]
    assert "_kvbench" not in config.to_dict()


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS))
def test_full_size_parameter_count(name):
    assert meta_param_count(build_config(name)) == EXPECTED_PARAMS[name]


@pytest.mark.parametrize("name", sorted(EXPECTED_GEOMETRY))
def test_attention_geometry(name):
    c = build_config(name)
    layers, heads, kv_heads, head_dim = EXPECTED_GEOMETRY[name]
    assert c.num_hidden_layers == layers
    assert c.num_attention_heads == heads
    # GPT-2 has no num_key_value_heads: one KV head per query head.
    assert (getattr(c, "num_key_value_heads", None) or c.num_attention_heads) == kv_heads
    assert (getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads) == head_dim


def test_sliding_windows():
    assert build_config("phi-3-mini-4k").sliding_window == 2047
    assert build_config("mistral-7b").sliding_window == 4096
    # Qwen2.5 carries sliding_window in its config but does not use it.
    assert build_config("qwen2.5-7b").sliding_window is None
    assert rope_parameters(build_config("llama-3.1-8b"))["rope_type"] == "llama3"
    gemma = build_config("gemma-2-9b")
    assert gemma.sliding_window == 4096
    assert gemma.tie_word_embeddings
    assert gemma.layer_types[:2] == ["sliding_attention", "full_attention"]
    assert gemma.layer_types.count("sliding_attention") == 21


def test_tiny_is_small_phi3_with_gqa():
    c = build_config("tiny")
    assert c.model_type == "phi3"
    assert c.num_key_value_heads < c.num_attention_heads
    assert c.hidden_size // c.num_attention_heads == 32
    assert c.sliding_window is None
    assert meta_param_count(c) < 10_000_000


def scaled_down(name: str):
    """Same architecture and keys as the preset, 2 layers and a hidden size of 64, windows shrunk to 16."""
    d = load_preset(name)
    d.pop("_kvbench")
    if d["model_type"] == "gpt2":
        d.update(n_layer=2, n_embd=64, n_head=4)
    else:
        gqa = d["num_key_value_heads"] < d["num_attention_heads"]
        d.update(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
                 num_key_value_heads=2 if gqa else 4)
        if "head_dim" in d:
            d["head_dim"] = 16
        if "query_pre_attn_scalar" in d:
            d["query_pre_attn_scalar"] = 16
        for key in ("sliding_window", "sliding_window_size"):
            if d.get(key) and d.get("use_sliding_window", True):
                d[key] = 16
        if "max_window_layers" in d:
            d["max_window_layers"] = 2
    return AutoConfig.for_model(**d)


@pytest.mark.parametrize("name", ALL_PRESETS)
def test_scaled_down_copy_generates(name):
    """No key of the JSON breaks generate; a sliding window caps the cache of its layers."""
    torch.manual_seed(0)
    config = scaled_down(name)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    prompt, new = 24, 4
    ids = torch.randint(3, 1000, (2, prompt))
    with torch.inference_mode():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                             do_sample=False, use_cache=True, return_dict_in_generate=True, pad_token_id=0)
    assert out.sequences.shape == (2, prompt + new)
    lengths = [layer.keys.shape[-2] for layer in cache_from_output(out).layers]
    assert len(lengths) == 2
    window = getattr(config, "sliding_window", None)
    # Phi-3 and Mistral have no layer_types: their window applies to every layer.
    layer_types = getattr(config, "layer_types", None) or ["sliding_attention" if window else "full_attention"] * 2
    for length, kind in zip(lengths, layer_types):
        if window and kind == "sliding_attention":
            assert length < prompt + new - 1
        else:
            assert length == prompt + new - 1


# --------------------------------------------------------------------------- GPU table


def load_gpus() -> dict:
    return json.loads(GPUS_JSON.read_text())


def test_gpu_table_shape():
    table = load_gpus()
    assert isinstance(table["_doc"], str) and table["_doc"]
    keys = {"name", "aliases", "memory_bytes", "usable_bytes", "bandwidth_gbps", "fp16_tflops", "bf16_tflops",
            "fp32_tflops", "source", "nvml_names"}
    for g in table["gpus"]:
        assert keys <= set(g), g["name"]
        assert isinstance(g["memory_bytes"], int) and g["memory_bytes"] > 0
        assert g["usable_bytes"] is None or 0 < g["usable_bytes"] < g["memory_bytes"]
        for k in ("bandwidth_gbps", "fp16_tflops", "fp32_tflops"):
            assert g[k] > 0, (g["name"], k)
        assert g["bf16_tflops"] is None or g["bf16_tflops"] > 0
        assert g["aliases"] and all(a == a.lower() for a in g["aliases"])
        assert g["nvml_names"] and g["source"]


def test_gpu_aliases_unique_and_cover_facts():
    gpus = load_gpus()["gpus"]
    aliases = [a for g in gpus for a in g["aliases"]]
    assert len(aliases) == len(set(aliases))
    assert len({g["name"] for g in gpus}) == len(gpus)
    assert set(FACTS_GPUS) <= set(aliases)
    by_alias = {a: g for g in gpus for a in g["aliases"]}
    assert by_alias["t4"]["bf16_tflops"] is None
    assert by_alias["h100"] is by_alias["h100-sxm"]
    assert by_alias["a100"]["memory_bytes"] == 40 * 2**30


def test_nvml_names_resolve_to_their_own_gpu():
    """Longest-substring matching (the rule _doc states) picks each card for its own NVML name."""
    gpus = load_gpus()["gpus"]

    def match(device_name: str):
        hits = [(len(s), g["name"]) for g in gpus for s in g["nvml_names"] if s in device_name]
        return max(hits)[1] if hits else None

    for g in gpus:
        for s in g["nvml_names"]:
            assert match("NVIDIA " + s if not s.startswith(("NVIDIA", "Tesla")) else s) == g["name"]
    assert match("NVIDIA L40S") == "NVIDIA L40S"
    assert match("NVIDIA L4") == "NVIDIA L4"
    assert match("NVIDIA H100 80GB HBM3") == "NVIDIA H100 SXM"
    assert match("NVIDIA H100 PCIe") == "NVIDIA H100 PCIe"
    assert match("Tesla T4") == "NVIDIA T4"
