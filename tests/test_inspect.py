"""kvbench.inspect_model and `kvbench inspect`: the module tree of every preset, built on the meta device, adds up
to the model's parameters; its lines are print(model)'s; the cache figures are the estimator's."""

from __future__ import annotations

import json
from functools import lru_cache

import pytest
import torch

from kvbench.cli.app import main
from kvbench.estimate.inspect import _groups, _label, inspect_model, meta_model, section
from kvbench.estimate.weights import param_count
from kvbench.inputs.configs import list_presets, preset_config

PRESETS = list_presets()


@lru_cache(maxsize=None)
def inspected(name: str):
    return inspect_model(name, dtype="bfloat16")


@lru_cache(maxsize=None)
def model_of(name: str):
    return meta_model(preset_config(name), torch.bfloat16)


def children_of(modules, i: int) -> list[int]:
    depth, found = modules.loc[i, "depth"], []
    for j in range(i + 1, len(modules)):
        if modules.loc[j, "depth"] <= depth:
            break
        if modules.loc[j, "depth"] == depth + 1:
            found.append(j)
    return found


@pytest.mark.parametrize("name", PRESETS)
def test_module_parameters_add_up_to_the_model_total(name):
    frame, model = inspected(name), model_of(name)
    total = sum(p.numel() for p in model.parameters())  # tied weights once
    assert total == param_count(preset_config(name)) == frame.attrs["params"]
    modules = section(frame, "module")
    assert modules.loc[0, "params"] == total and modules.loc[0, "bytes"] == total * 2
    leaves = [i for i in range(len(modules)) if not children_of(modules, i)]
    assert sum(modules.loc[leaves, "params"]) == total
    for i in range(len(modules)):  # no preset keeps parameters on a module that has children
        kids = children_of(modules, i)
        if kids:
            assert modules.loc[i, "params"] == sum(modules.loc[kids, "params"]), modules.loc[i, "path"]
    components = section(frame, "component").set_index("name")
    assert "other" not in components.index  # every parameter has a kind
    assert components.loc["total", "params"] == total
    assert components.drop("total")["params"].sum() == total
    assert components.drop("total")["bytes"].sum() == components.loc["total", "bytes"] == total * 2


@pytest.mark.parametrize("name", PRESETS)
def test_tree_lines_are_print_models_lines(name):
    modules = section(inspected(name), "module")
    ours = ["  " * d + label for d, label in zip(modules["depth"], modules["name"])]
    theirs = [line.removesuffix("(") for line in repr(model_of(name)).splitlines() if line.strip() != ")"]
    assert ours == theirs


def test_folding_and_tied_weights():
    phi3 = section(inspected("phi-3-mini-4k"), "module").set_index("path")
    layers = phi3.loc["model.layers.0-31"]
    assert layers["name"] == "(0-31): 32 x Phi3DecoderLayer" and layers["repeats"] == 32
    assert phi3.loc["model.layers.0-31.self_attn.qkv_proj", "params"] == 32 * 3072 * 9216
    assert phi3.loc["lm_head", "params"] == 32064 * 3072 and phi3.loc["lm_head", "kind"] == "lm_head"
    gpt2 = section(inspected("gpt2"), "module").set_index("path")
    assert gpt2.loc["lm_head", "params"] == 0 and gpt2.loc["lm_head", "note"] == "weight tied to transformer.wte.weight"
    assert section(inspected("gpt2"), "component").set_index("name").loc["embeddings", "params"] == (50257 + 1024) * 768


def test_a_layer_that_differs_is_not_folded():
    layers = torch.nn.ModuleList([torch.nn.Linear(4, 4), torch.nn.Linear(4, 4), torch.nn.Linear(4, 8)])
    lines = [f"({n}): {len(names)} x {_label(None, c)}" if len(names) > 1 else _label(n, c)
             for n, names, c in _groups(layers)]
    assert lines == ["(0-1): 2 x Linear(in_features=4, out_features=4, bias=True)",
                     "(2): Linear(in_features=4, out_features=8, bias=True)"]
    assert all(line in repr(layers) for line in lines)


# KV bytes per token in bfloat16 from each model's published architecture: keys and values x layers x KV heads x
# head_dim x 2 bytes (every layer counted, sliding ones too; each window is over 1k tokens)
PUBLISHED_KV_PER_TOKEN = {
    "gpt2": 2 * 12 * 12 * 64 * 2,  # 12 layers, 12 heads of 64
    "llama-3.1-8b": 2 * 32 * 8 * 128 * 2,  # 32 layers, 8 KV heads of 128
    "mistral-7b": 2 * 32 * 8 * 128 * 2,
    "phi-3-mini-4k": 2 * 32 * 32 * 96 * 2,  # 32 layers, 32 heads of 96 (no GQA)
    "qwen2.5-7b": 2 * 28 * 4 * 128 * 2,  # 28 layers, 4 KV heads of 128
    "tinyllama-1.1b": 2 * 22 * 4 * 64 * 2,  # 22 layers, 4 KV heads of 64
    "gemma-2-9b": 2 * 42 * 8 * 256 * 2,  # 42 layers, 8 KV heads of 256
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_KV_PER_TOKEN))
def test_kv_figures_are_the_published_architectures(name):
    frame, config = inspected(name), preset_config(name)
    kv = section(frame, "kv_cache").set_index("name")
    assert kv.loc["per token", "bytes"] == PUBLISHED_KV_PER_TOKEN[name]
    assert kv.loc["per 1k tokens", "bytes"] == 1000 * PUBLISHED_KV_PER_TOKEN[name]
    values = section(frame, "config").set_index("name")["value"]
    assert values["layers"] == config.num_hidden_layers and values["vocab"] == config.vocab_size


def test_config_figures_of_sliding_models():
    phi3 = section(inspected("phi-3-mini-4k"), "config").set_index("name")["value"]
    assert (phi3["sliding window"], phi3["sliding layers"], phi3["KV heads"], phi3["head_dim"]) == ("2047", "0-31",
                                                                                                    "32", "96")
    gemma = section(inspected("gemma-2-9b"), "config").set_index("name")["value"]
    assert gemma["sliding layers"] == "0,2,...,40 (every 2nd)" and gemma["head_dim"] == "256"
    assert gemma["layer types"] == "21 x sliding_attention, 21 x full_attention"
    assert section(inspected("llama-3.1-8b"), "config").set_index("name")["value"]["sliding window"] == "none"
    # Phi-3 is multi-head attention: exact and naive agree per token before the window fills, not at 4096 tokens
    kv = section(inspected("phi-3-mini-4k"), "kv_cache").set_index("name")
    assert kv.loc["per token", "bytes"] == kv.loc["per token", "naive_bytes"] == 2 * 32 * 32 * 96 * 2
    assert kv.loc["at the context window", "bytes"] == 2047 * 2 * 32 * 32 * 96 * 2


@pytest.mark.parametrize("fmt", ["table", "csv", "json"])
def test_inspect_command(fmt, capsys):
    assert main(["inspect", "--model", "tiny", "--format", fmt]) == 0
    out = capsys.readouterr().out
    if fmt == "json":
        data = json.loads(out)
        assert set(data) == {"model", "dtype", "modules", "components", "config", "kv_cache"}
        assert data["modules"][0]["params"] == param_count(preset_config("tiny"))
    elif fmt == "csv":
        assert out.splitlines()[0].startswith("section,path,depth,name,kind,repeats,params,bytes")
    else:
        assert "(0-3): 4 x Phi3DecoderLayer" in out and "KV cache" in out and "naive" in out


@pytest.mark.parametrize("args, named", [(["--model", "nope"], "nope"), (["--dtype", "int3"], "int3"),
                                         (["--format", "xml"], "xml")])
def test_inspect_refuses_bad_input_in_one_line(args, named, capsys):
    argv = ["inspect", "--model", "tiny"] + args
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and named in err
