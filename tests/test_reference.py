"""kvbench.reference_generate against transformers' generate: the same tokens, token for token, in float32, on tiny
random-weights models of six architectures, for every strategy, with and without the cache."""

from __future__ import annotations

import warnings
from functools import lru_cache

import pytest
import torch
import transformers

from kvbench.estimate.kvcache import estimate_kv_cache_bytes
from kvbench.estimate.positions import positions_per_call
from kvbench.compat import cache_from_output
from kvbench.measuring.instruments.cache_bytes import cache_nbytes
from kvbench.measuring.instruments.clock import Clock
from kvbench.measuring.instruments.forwards import record_forwards
from kvbench.measuring.engines.reference import decode, process_logits, reference_generate

warnings.filterwarnings("ignore")
transformers.logging.set_verbosity_error()
SPECIAL = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "vocab_size": 128}
BASE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 128, **SPECIAL}
WINDOW = 8  # the prompts (10 tokens) are longer than the sliding windows
ARCHS = {
    "llama": ("LlamaConfig", BASE),
    "phi3": ("Phi3Config", {**BASE, "sliding_window": WINDOW}),
    "mistral": ("MistralConfig", {**BASE, "sliding_window": WINDOW}),
    "qwen2": ("Qwen2Config", BASE),
    "gemma2": ("Gemma2Config", {**BASE, "head_dim": 24, "sliding_window": WINDOW}),
    "gpt2": ("GPT2Config", dict(n_embd=64, n_layer=2, n_head=4, n_positions=128, **SPECIAL)),
}
# name -> (do_sample, temperature, top_k, top_p)
STRATEGIES = {
    "greedy": (False, 1.0, None, None),
    "sample": (True, 1.0, None, None),
    "temperature": (True, 0.6, None, None),
    "top_k": (True, 1.0, 5, None),
    "top_p": (True, 1.0, None, 0.8),
    "combined": (True, 1.3, 20, 0.9),
}
BATCH, PROMPT, NEW = 2, 10, 6


@lru_cache(maxsize=None)
def tiny_model(arch: str):
    """Random weights, the LM head scaled so the next-token distribution is far from uniform (temperature, top-k
    and top-p then change what is drawn)."""
    class_name, kwargs = ARCHS[arch]
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(getattr(transformers, class_name)(**kwargs))
    with torch.no_grad():
        model.get_output_embeddings().weight.mul_(20)
    return model.float().eval()


def prompt(batch=BATCH, length=PROMPT):
    return torch.randint(3, 128, (batch, length), generator=torch.Generator().manual_seed(1))


def generated(model, ids, mask, strategy, use_cache, seed):
    do_sample, temperature, top_k, top_p = STRATEGIES[strategy]
    torch.manual_seed(seed)
    return model.generate(ids, attention_mask=mask, do_sample=do_sample, temperature=temperature, top_k=top_k or 0,
                          top_p=top_p or 1.0, min_new_tokens=NEW, max_new_tokens=NEW, use_cache=use_cache)


def referenced(model, ids, mask, strategy, use_cache, seed):
    do_sample, temperature, top_k, top_p = STRATEGIES[strategy]
    return reference_generate(model, ids, mask, new_tokens=NEW, use_cache=use_cache, do_sample=do_sample,
                              temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "nocache"])
@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("arch", list(ARCHS))
def test_same_tokens_as_generate(arch, strategy, use_cache):
    model, ids = tiny_model(arch), prompt()
    mask = torch.ones_like(ids)
    want = generated(model, ids, mask, strategy, use_cache, seed=7)
    got = referenced(model, ids, mask, strategy, use_cache, seed=7)
    assert got.shape == (BATCH, PROMPT + NEW)
    assert torch.equal(got, want)


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "nocache"])
@pytest.mark.parametrize("strategy", ["greedy", "combined"])
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_same_tokens_as_generate_with_left_padding(arch, strategy, use_cache):
    """Positions come from the attention mask (GPT-2's learned position embeddings see them directly)."""
    model, ids = tiny_model(arch), prompt()
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    ids = ids.masked_fill(mask == 0, 0)
    assert torch.equal(referenced(model, ids, mask, strategy, use_cache, seed=3),
                       generated(model, ids, mask, strategy, use_cache, seed=3))


def test_each_parameter_changes_the_draw():
    """The strategies really differ (a loop that ignored top-k or top-p would still pass nothing above by luck)."""
    model, ids = tiny_model("llama"), prompt()
    runs = {s: referenced(model, ids, None, s, True, seed=7) for s in STRATEGIES if s != "greedy"}
    others = [name for name, seq in runs.items() if name != "sample" and torch.equal(seq, runs["sample"])]
    assert not others


def test_processors_are_transformers_in_transformers_order():
    from transformers.generation.logits_process import (
        LogitsProcessorList,
        MinNewTokensLengthLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0)) * 3
    ids = torch.zeros(3, 4, dtype=torch.long)
    theirs = LogitsProcessorList([MinNewTokensLengthLogitsProcessor(4, 5, [2, 7]), TemperatureLogitsWarper(0.7),
                                  TopKLogitsWarper(10), TopPLogitsWarper(0.85)])(ids, logits)
    ours = process_logits(logits, eos=[2, 7], do_sample=True, temperature=0.7, top_k=10, top_p=0.85)
    assert torch.equal(ours, theirs)
    assert torch.isinf(ours[:, [2, 7]]).all() and (torch.isfinite(ours).sum(-1) <= 10).all()
    greedy = process_logits(logits, eos=[2], temperature=0.7, top_k=10)  # warpers only apply when sampling
    assert torch.equal(greedy[:, 3:], logits[:, 3:])


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache", "nocache"])
@pytest.mark.parametrize("arch", ["llama", "phi3"])
def test_forwards_positions_and_cache_bytes_are_generates(arch, use_cache):
    model, ids = tiny_model(arch), prompt()
    with record_forwards(model, Clock(torch.device("cpu"))) as log:
        steps = list(decode(model, ids, new_tokens=NEW, use_cache=use_cache))
    assert log.positions == [s.positions for s in steps] == positions_per_call(PROMPT, NEW, use_cache)
    if not use_cache:
        assert all(s.cache is None for s in steps)
        return
    torch.manual_seed(0)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), min_new_tokens=NEW, max_new_tokens=NEW,
                         do_sample=False, return_dict_in_generate=True)
    expected = estimate_kv_cache_bytes(model.config, batch_size=BATCH, prompt_len=PROMPT, new_tokens=NEW,
                                       dtype=torch.float32)
    assert cache_nbytes(steps[-1].cache) == cache_nbytes(cache_from_output(out)) == expected


@pytest.mark.parametrize("kwargs, named", [
    ({"new_tokens": 0}, "new_tokens"), ({"temperature": 0.0}, "temperature"), ({"top_k": -1}, "top_k"),
    ({"top_p": 1.5}, "top_p"),
])
def test_bad_parameters_are_refused(kwargs, named):
    from kvbench.errors import UserError

    args = {"new_tokens": 2, **kwargs}
    with pytest.raises(UserError, match=named):
        reference_generate(tiny_model("llama"), prompt(), **args)
