"""A decoding loop in plain torch, as the guide writes it by hand and as a serving loop runs it: no `generate`.

`reference_generate(model, input_ids, ...)` returns what ``generate(...).sequences`` returns -- the prompt and
exactly `new_tokens` new ids per row -- and draws the same tokens as

    torch.manual_seed(seed)
    model.generate(input_ids, attention_mask=mask, do_sample=..., temperature=..., top_k=top_k or 0,
                   top_p=top_p or 1.0, min_new_tokens=new_tokens, max_new_tokens=new_tokens, use_cache=...)

in float32 (tests/test_reference.py checks it token for token), because it does what generate does:

* the cache: a `DynamicCache` built from the model's text config, passed from one forward to the next; the first
  forward feeds the prompt, each later one the last token alone. Without the cache every forward feeds the whole
  sequence so far.
* positions: ``position_ids = cumsum(attention_mask) - 1`` (0 at padding), extended by one per token and sliced to
  the tokens fed; ``cache_position`` too where the model's forward takes it (transformers 4.x). An attention mask
  of all ones is dropped, as generate drops it (no padding: the model's own causal mask).
* logits: ``logits_to_keep=1`` where the forward takes it (only the last position goes through the LM head), read
  as float32.
* the processors, in the order of `GenerationMixin._get_logits_processor`: EOS is suppressed at every step
  (`MinNewTokensLengthLogitsProcessor`, as min_new_tokens = new_tokens asks), then, when sampling only,
  temperature (when != 1), top-k (when set and > 0), top-p (when < 1).
* the choice: argmax for greedy; ``torch.multinomial(softmax(scores), 1)`` for sampling, seeded once with
  ``torch.manual_seed(seed)`` before the first forward.

Other generation-config processors (repetition penalty, bad words, forced tokens, ...) are not applied: a model whose
generation_config sets them decodes differently here than under generate. Beam search is generate's alone.

`decode(...)` is the same loop one step at a time: it yields a `Step` per new token (raw logits, processed scores,
chosen ids, positions fed, the cache after the forward) -- what `kvbench steps` shows.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from ...errors import UserError
from ...compat import cache_from_output
from ...inputs.configs import text_config
from ...inputs.decoding import check_sampling


@dataclass
class Step:
    """One new token per row: the forward that produced it and the choice."""

    index: int  # 0 for the token the prefill produced
    positions: int  # sequence positions this forward processed (P, then 1 with the cache; P + index without)
    logits: torch.Tensor  # [batch, vocab] float32, the model's last-position logits
    scores: torch.Tensor  # [batch, vocab] after the processors (what the choice is made from)
    tokens: torch.Tensor  # [batch] the chosen ids
    cache: Any  # the cache after this forward (None without one)


def eos_ids(model) -> list[int]:
    """The ids generate treats as end of sequence: the generation config's, else the model config's."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = getattr(model.config, "eos_token_id", None)
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


def process_logits(logits: torch.Tensor, *, eos: list[int] = (), do_sample: bool = False, temperature: float = 1.0,
                   top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Next-token scores from float32 logits [batch, vocab], as generate's processors make them (module docstring)."""
    scores = logits.clone()
    if len(eos):  # MinNewTokensLengthLogitsProcessor: no EOS before min_new_tokens
        mask = torch.isin(torch.arange(scores.shape[-1], device=scores.device), torch.tensor(eos, device=scores.device))
        scores = torch.where(mask, -float("inf"), scores)
    if not do_sample:
        return scores
    if temperature != 1.0:  # TemperatureLogitsWarper
        scores = scores / temperature
    if top_k:  # TopKLogitsWarper: drop what is below the k-th largest score
        k = min(top_k, scores.shape[-1])
        scores = scores.masked_fill(scores < torch.topk(scores, k)[0][..., -1, None], -float("inf"))
    if top_p is not None and top_p < 1.0:  # TopPLogitsWarper: the smallest set whose probability exceeds top_p
        sorted_scores, order = torch.sort(scores, descending=False)
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
        remove = cumulative <= (1 - top_p)
        remove[..., -1:] = 0  # keep at least one token
        scores = scores.masked_fill(remove.scatter(1, order, remove), -float("inf"))
    return scores


def choose(scores: torch.Tensor, do_sample: bool) -> torch.Tensor:
    if do_sample:
        return torch.multinomial(torch.nn.functional.softmax(scores, dim=-1), num_samples=1).squeeze(1)
    return torch.argmax(scores, dim=-1)


def _forward_args(model) -> set[str]:
    return set(inspect.signature(model.forward).parameters)


def new_cache(model):
    """An empty DynamicCache for the model, built as generate builds it."""
    from transformers import DynamicCache

    config = text_config(model.config)
    try:
        return DynamicCache(config=config)
    except TypeError:  # transformers versions whose DynamicCache takes no config
        return DynamicCache()


def decode(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *, new_tokens: int,
           use_cache: bool = True, do_sample: bool = False, temperature: float = 1.0, top_k: int | None = None,
           top_p: float | None = None, seed: int = 0) -> Iterator[Step]:
    """The reference loop one step at a time (module docstring): yields a `Step` per new token."""
    if isinstance(new_tokens, bool) or not isinstance(new_tokens, int) or new_tokens < 1:
        raise UserError(f"new_tokens must be a positive integer, got {new_tokens!r}")
    check_sampling(temperature, top_k, top_p)
    if input_ids.dim() != 2 or input_ids.shape[1] < 1:
        raise UserError(f"input_ids must be [batch, prompt_len >= 1], got shape {tuple(input_ids.shape)}")
    args = _forward_args(model)
    cache_arg = "cache" if "cache" in args else "past_key_values"
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(input_ids.device)
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    padded = not bool((mask == 1).all())
    eos = eos_ids(model)
    sequence, cache = input_ids, new_cache(model) if use_cache else None
    torch.manual_seed(seed)
    for index in range(new_tokens):
        fed = sequence.shape[1] if index == 0 or not use_cache else 1
        kwargs: dict[str, Any] = {"input_ids": sequence[:, -fed:], "use_cache": use_cache}
        if "position_ids" in args:
            kwargs["position_ids"] = positions[:, -fed:]
        if padded:
            kwargs["attention_mask"] = mask
        if use_cache:
            kwargs[cache_arg] = cache
            if "cache_position" in args:
                past = sequence.shape[1] - fed
                kwargs["cache_position"] = torch.arange(past, past + fed, device=sequence.device)
        if "logits_to_keep" in args:
            kwargs["logits_to_keep"] = 1
        with torch.no_grad():
            out = model(**kwargs)
        if use_cache and cache_from_output(out) is not None:
            cache = cache_from_output(out)
        logits = out.logits[:, -1].to(copy=True, dtype=torch.float32, device=sequence.device)
        del out
        scores = process_logits(logits, eos=eos, do_sample=do_sample, temperature=temperature, top_k=top_k,
                                top_p=top_p)
        tokens = choose(scores, do_sample)
        sequence = torch.cat([sequence, tokens[:, None]], dim=-1)
        positions = torch.cat([positions, positions[:, -1:] + 1], dim=-1)
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=-1)
        yield Step(index=index, positions=fed, logits=logits, scores=scores, tokens=tokens, cache=cache)


def reference_generate(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                       new_tokens: int, use_cache: bool = True, do_sample: bool = False, temperature: float = 1.0,
                       top_k: int | None = None, top_p: float | None = None, seed: int = 0) -> torch.Tensor:
    """Prompt + exactly `new_tokens` new ids per row, decoded in plain torch (no `generate`): greedy, or sampling
    with temperature, top-k and top-p, with or without the cache. The same tokens as generate in float32."""
    steps = decode(model, input_ids, attention_mask, new_tokens=new_tokens, use_cache=use_cache, do_sample=do_sample,
                   temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    return torch.cat([input_ids, *(step.tokens[:, None] for step in steps)], dim=-1)


@dataclass
class ReferenceOutput:
    """What measure reads from a generate output: the sequences, and the cache (None without one)."""

    sequences: torch.Tensor
    cache: Any


def reference_run(model, inputs: dict, scenario) -> ReferenceOutput:
    """A Scenario's generation through the reference loop (greedy or sampling, dynamic cache or none)."""
    if scenario.decoding not in ("greedy", "sample") or scenario.cache_implementation not in ("dynamic", None):
        raise UserError(f"{scenario.id}: the reference engine decodes greedy or sample with a dynamic cache or none")
    sample = scenario.decoding == "sample"
    last = None
    tokens = []
    for last in decode(model, inputs["input_ids"], inputs.get("attention_mask"), new_tokens=scenario.new_tokens,
                       use_cache=scenario.use_cache, do_sample=sample, temperature=scenario.temperature or 1.0,
                       top_k=scenario.top_k, top_p=scenario.top_p, seed=scenario.seed):
        tokens.append(last.tokens[:, None])
    return ReferenceOutput(torch.cat([inputs["input_ids"], *tokens], dim=-1), last.cache)
