"""Generation one step at a time, as a table: per new token the chosen token and its probability, the top
candidates, the positions that step's forward processed, its latency and the cache bytes after it.

Built on the reference loop (`kvbench.measuring.engines.reference.decode`), so the tokens are generate's. Probabilities are
the model's -- ``softmax`` of the last position's logits -- and ``draw_prob`` is the chosen token's probability in
the distribution the choice was made from (EOS removed, as kvbench always generates exactly N tokens; when sampling,
after temperature, top-k and top-p). The step latency runs from the start of the step's forward to its chosen token
(on a GPU: CUDA events, read once at the end).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from ...errors import UserError
from ...inputs.decoding import Sampling
from ..instruments.cache_bytes import cache_nbytes
from ..instruments.clock import Clock
from ..loading.models import LoadedModel
from .reference import decode

COLUMNS = ["step", "positions", "token_id", "token", "prob", "draw_prob", "top_ids", "top_tokens", "top_probs",
           "step_s", "kv_cache_bytes"]


def load_tokenizer(path):
    """A tokenizer from a folder (a model's, or one saved with save_pretrained), a tokenizer.json file or a Hub id;
    None when a folder has none."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    target = Path(str(path)).expanduser()
    if target.is_file():
        try:
            return PreTrainedTokenizerFast(tokenizer_file=str(target))
        except Exception as exc:  # not a tokenizers JSON file
            raise UserError(f"--tokenizer {path}: not a tokenizer.json file ({str(exc).splitlines()[0]})") from None
    if target.is_dir() and not any(target.glob("tokenizer*")) and not any(target.glob("*.model")):
        return None
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as exc:  # offline, missing files, unknown id: one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load a tokenizer from {str(path)!r}: {first}") from None


def token_text(tokenizer, token_id: int) -> str | None:
    """The text of one token id, or None without a tokenizer (or for an id outside its vocabulary)."""
    if tokenizer is None or token_id >= len(tokenizer):
        return None
    return tokenizer.decode([token_id])


def step_table(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *, new_tokens: int,
               top_k: int = 5, use_cache: bool = True, sampling: Sampling | None = None, seed: int = 0,
               tokenizer=None, warmup: int = 0) -> pd.DataFrame:
    """One row per generated token of one sequence (module docstring). `top_k` is how many candidates each row
    lists; `sampling` (`kvbench.inputs.decoding.Sampling`: temperature, top-k, top-p) samples, None decodes
    greedily; `warmup` untimed decodes of the same prompt run first (the first forward of a process is slow)."""
    if input_ids.dim() == 1:
        input_ids = input_ids[None]
    if input_ids.shape[0] != 1:
        raise UserError(f"steps follows one sequence, got a batch of {input_ids.shape[0]}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise UserError(f"top_k (candidates shown) must be a positive integer, got {top_k!r}")
    if isinstance(model, LoadedModel):
        model = model.model
    device = input_ids.device
    clock, marks, rows = Clock(device), [], []
    settings = dict(new_tokens=new_tokens, use_cache=use_cache, seed=seed,
                    **(sampling.decode_kwargs() if sampling is not None else {}))
    for _ in range(warmup):
        for _step in decode(model, input_ids, attention_mask, **settings):
            pass
    steps = decode(model, input_ids, attention_mask, **settings)
    while True:
        start = clock.mark()
        step = next(steps, None)
        if step is None:
            break
        marks.append((start, clock.mark()))
        probs = torch.softmax(step.logits[0], dim=-1)
        drawn = torch.softmax(step.scores[0], dim=-1)
        chosen = int(step.tokens[0])
        top = torch.topk(probs, min(top_k, probs.shape[-1]))
        ids = [int(i) for i in top.indices]
        rows.append(dict(
            step=step.index + 1, positions=step.positions, token_id=chosen, token=token_text(tokenizer, chosen),
            prob=float(probs[chosen]), draw_prob=float(drawn[chosen]), top_ids=ids,
            top_tokens=[token_text(tokenizer, i) for i in ids], top_probs=[float(p) for p in top.values],
            kv_cache_bytes=cache_nbytes(step.cache) if use_cache else 0,
        ))
    for row, (start, end) in zip(rows, marks):
        row["step_s"] = clock.intervals([start, end])[0]
    return pd.DataFrame(rows, columns=COLUMNS)
