"""`kvbench steps`: generation step by step -- the chosen token, its probability, the top candidates, the positions
each forward processed, each step's latency and the cache bytes after it (kvbench.measuring.engines.steps)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..errors import UserError
from .common import Table, console

FORMATS = ("table", "csv", "json")


def steps_command(
    model: str = typer.Option("tiny", help="preset name, path to config.json or model folder, or Hub id"),
    prompt: Optional[str] = typer.Option(None, help="prompt text (needs a tokenizer: the model folder's, the Hub "
                                                    "model's, or --tokenizer)"),
    prompt_len: Optional[int] = typer.Option(None, help="a prompt of P random token ids instead of text"),
    new_tokens: int = typer.Option(10, help="tokens to generate"),
    top_k: int = typer.Option(5, help="candidates listed per step"),
    decoding: str = typer.Option("greedy", help="greedy or sample"),
    temperature: float = typer.Option(1.0, help="sampling temperature (--decoding sample)"),
    sample_top_k: Optional[int] = typer.Option(None, help="sample among the k most likely tokens only"),
    top_p: Optional[float] = typer.Option(None, help="sample among the smallest set of probability > top_p"),
    seed: int = typer.Option(0, help="seed of the random prompt and of sampling"),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="decode with the KV cache or without it"),
    warmup: int = typer.Option(1, help="untimed decodes of the same prompt before the timed one"),
    tokenizer: Optional[Path] = typer.Option(None, help="tokenizer folder or tokenizer.json (presets have none)"),
    device: str = typer.Option("auto", help="auto (a GPU where there is one), cpu, cuda, cuda:N"),
    dtype: str = typer.Option("auto", help="auto (float32 on CPU; the model's half type on GPU), float16, "
                                           "bfloat16, float32"),
    format: str = typer.Option("table", "--format", help="table, csv or json"),
    trust_remote_code: bool = typer.Option(False, help="allow a Hub model's own code to run"),
):
    """One row per generated token: chosen token and probability, top candidates, positions the forward processed,
    step latency, cache bytes after the step."""
    import torch

    from ..inputs.configs import resolve_spec
    from ..measuring.loading.models import load_model, synthetic_inputs
    from ..inputs.decoding import Sampling
    from ..measuring.engines.steps import load_tokenizer, step_table

    if format not in FORMATS:
        raise UserError(f"--format: {format!r} is not one of {', '.join(FORMATS)}")
    if decoding not in ("greedy", "sample"):
        raise UserError(f"--decoding: {decoding!r} is not one of greedy, sample (steps follows one sequence)")
    if (prompt is None) == (prompt_len is None):
        raise UserError("give one of --prompt TEXT or --prompt-len P")
    if prompt_len is not None and prompt_len < 1:
        raise UserError(f"--prompt-len: {prompt_len} is not a positive integer")
    if new_tokens < 1:
        raise UserError(f"--new-tokens: {new_tokens} is not a positive integer")
    if warmup < 0:
        raise UserError(f"--warmup: {warmup} must be 0 or more")
    if seed < 0:
        raise UserError(f"--seed: {seed} must be 0 or more")
    sampling = Sampling(temperature, sample_top_k, top_p)  # checked before the model loads, greedy or not
    sampling = sampling if decoding == "sample" else None
    _, _, source, weights = resolve_spec(model, trust_remote_code)
    folder = Path(model).expanduser()
    where = tokenizer or weights or (folder if folder.is_dir() else None)
    tok = load_tokenizer(where) if where is not None else None
    if prompt is not None and tok is None:
        raise UserError(f"--prompt needs a tokenizer and {model!r} ({source}) has none: "
                        "pass --tokenizer PATH or use --prompt-len P")
    torch.manual_seed(seed)  # random weights (presets, config files) are the same from one call to the next
    loaded = load_model(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    if prompt is not None:
        ids = tok(prompt, return_tensors="pt").input_ids.to(loaded.device)
        if ids.shape[1] == 0:
            raise UserError(f"--prompt {prompt!r} has no tokens")
    else:
        ids = synthetic_inputs(loaded.config, 1, prompt_len, loaded.device, seed)["input_ids"]
    if loaded.context_len and ids.shape[1] + new_tokens > loaded.context_len:
        raise UserError(f"prompt ({ids.shape[1]} tokens) + --new-tokens {new_tokens} exceeds {loaded.name}'s "
                        f"context of {loaded.context_len} tokens")
    with torch.inference_mode():
        table = step_table(loaded, ids, new_tokens=new_tokens, top_k=top_k, use_cache=cache, sampling=sampling,
                           seed=seed, tokenizer=tok, warmup=warmup)
    if format == "csv":
        out = table.copy()
        for col in ("top_ids", "top_tokens", "top_probs"):
            out[col] = out[col].map(json.dumps)
        typer.echo(out.to_csv(index=False), nl=False)
    elif format == "json":
        from ..results.schema import json_safe

        data = {"model": loaded.name, "device": str(loaded.device), "dtype": str(loaded.dtype).removeprefix("torch."),
                "prompt_ids": ids[0].tolist(), "decoding": decoding, "use_cache": cache,
                "steps": json_safe(table.to_dict("records"))}
        typer.echo(json.dumps(data, indent=1))
    else:
        print_steps(table, loaded, ids.shape[1], decoding, cache)


def shown(text, token_id) -> str:
    return repr(text) if text is not None else str(token_id)


def print_steps(table, loaded, prompt_len: int, decoding: str, cache: bool) -> None:
    from ..units import fmt_bytes, fmt_seconds

    title = (f"{loaded.name} on {loaded.device} in {str(loaded.dtype).removeprefix('torch.')}: {decoding}, "
             f"{'with' if cache else 'without'} the cache, prompt of {prompt_len} tokens")
    out = Table(title=title)
    for col in ("step", "positions", "token", "prob", "top candidates", "step time", "KV cache"):
        out.add_column(col, justify="left" if col in ("token", "top candidates") else "right")
    for r in table.to_dict("records"):
        top = ", ".join(f"{shown(t, i)} {p:.4f}" for i, t, p in zip(r["top_ids"], r["top_tokens"], r["top_probs"]))
        out.add_row(str(r["step"]), str(r["positions"]), shown(r["token"], r["token_id"]), f"{r['prob']:.4f}", top,
                    fmt_seconds(r["step_s"]), fmt_bytes(r["kv_cache_bytes"]))
    console.print(out)
