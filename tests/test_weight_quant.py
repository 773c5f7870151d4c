"""Quantized weights in the planner (`--weight-quant int8|int4`): the bytes estimated from the config alone against
the bytes of a real model that transformers loads with optimum-quanto (`QuantoConfig(weights=...)`), and one case
worked out by hand."""

from __future__ import annotations

import pytest
import torch
import transformers

from kvbench.estimate.weights import weight_bytes_estimate

pytest.importorskip("optimum.quanto")

LLAMA = dict(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, vocab_size=300, bos_token_id=1,
             eos_token_id=2, pad_token_id=0)
CASES = {
    # in_features <= 128 everywhere but down_proj (200: no group of 128, 96 or 64 divides it): per-row int4 scales
    "llama-96": (transformers.LlamaConfig, dict(hidden_size=96, intermediate_size=200, **LLAMA)),
    # groups of 128 (in 256), and of 64 for down_proj (in 320)
    "llama-256": (transformers.LlamaConfig, dict(hidden_size=256, intermediate_size=320, **LLAMA)),
    "llama-tied": (transformers.LlamaConfig, dict(hidden_size=256, intermediate_size=512, tie_word_embeddings=True,
                                                  **LLAMA)),
    # GPT-2's projections are Conv1D, not nn.Linear: nothing is converted
    "gpt2": (transformers.GPT2Config, dict(n_embd=64, n_layer=2, n_head=4, vocab_size=300, n_positions=64,
                                           bos_token_id=1, eos_token_id=2)),
    "mixtral": (transformers.MixtralConfig, dict(hidden_size=256, intermediate_size=256, num_local_experts=4,
                                                 num_experts_per_tok=2, **LLAMA)),
}


def _leaves(t):
    if hasattr(t, "__tensor_flatten__"):  # quanto's quantized tensors: data, scales, shifts
        for name in t.__tensor_flatten__()[0]:
            yield from _leaves(getattr(t, name))
    else:
        yield t


def held_bytes(model) -> int:
    """Storage bytes of every parameter (quantized ones through their inner tensors: data, scales, shifts), each
    storage once."""
    storages = {}
    for t in (p.data for p in model.parameters()):
        for leaf in _leaves(t):
            storages[leaf.untyped_storage().data_ptr()] = leaf.untyped_storage().nbytes()
    return sum(storages.values())


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("quant", ["int8", "int4"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_estimate_equals_the_bytes_quanto_holds(case, quant, dtype, tmp_path):
    cls, kwargs = CASES[case]
    config = cls(**kwargs)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).to(dtype).save_pretrained(tmp_path)
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            tmp_path, quantization_config=transformers.QuantoConfig(weights=quant), dtype=dtype)
    except RuntimeError as exc:  # 4.57's Mixtral experts (nn.Linear) in bfloat16 int4: quanto's CPU packing refuses
        pytest.skip(f"optimum-quanto cannot load it on transformers {transformers.__version__}: {exc}")
    assert weight_bytes_estimate(config, dtype, quant) == held_bytes(model)


def test_int8_and_int4_by_hand():
    """llama-96 in float16. Per layer the linears are q, o (96 x 96), k, v (48 x 96), gate, up (200 x 96) and down
    (96 x 200): 85,248 weights over 784 output features, 7 layers; 2 layers. The rest stays float16: embeddings and
    LM head 2 x 300 x 96, norms 96 x 5: 58,080 values (116,160 B).
    int8: per layer 85,248 + 784 x 2 B = 86,816; 2 x 86,816 + 116,160 = 289,792.
    int4: half a byte a weight (42,624), every layer's inputs <= 128 or (down, 200) without a group size of 128, 96,
    64 dividing them, so a scale and a shift per output feature: 784 x 2 x 2 B = 3,136; per layer
    42,624 + 3,136 = 45,760; 2 x 45,760 + 116,160 = 207,680."""
    cls, kwargs = CASES["llama-96"]
    config = cls(**kwargs)
    assert weight_bytes_estimate(config, torch.float16) == (2 * 85_248 + 58_080) * 2
    assert weight_bytes_estimate(config, torch.float16, "int8") == 289_792
    assert weight_bytes_estimate(config, torch.float16, "int4") == 207_680


def test_unknown_quantization_is_named():
    cls, kwargs = CASES["gpt2"]
    with pytest.raises(ValueError, match="weight_quant: 'int3'"):
        weight_bytes_estimate(cls(**kwargs), torch.float16, "int3")


@pytest.mark.parametrize("memory, option", [("10GiB", "int8"), ("6GiB", "int4"), ("2GiB", None)])
def test_advice_names_the_option_that_fits(memory, option, capsys):
    """mistral-7b in float16 (13.5 GiB of weights) on smaller cards: the advice names the first --weight-quant
    with which the plan fits (and following it gives a plan where batch 1 fits), never a smaller --dtype, since
    nothing is smaller than float16 for a float16 plan."""
    from kvbench.cli.app import main

    assert main(["plan", "--model", "mistral-7b", "--memory", memory, "--dtype", "float16", "--batch-sizes", "1",
                 "--contexts", "1024"]) == 0
    out = capsys.readouterr().out
    assert "nothing fits" in out and "--dtype" not in out.split("nothing fits")[1]
    if option is None:
        assert "a GPU with more memory" in out
        return
    assert f"try --weight-quant {option}" in out
    assert main(["plan", "--model", "mistral-7b", "--memory", memory, "--dtype", "float16", "--batch-sizes", "1",
                 "--contexts", "1024", "--weight-quant", option, "--format", "json"]) == 0
    import json

    plan = json.loads(capsys.readouterr().out)
    assert all(row["fits"] for row in plan if row["question"] == "breakdown")
