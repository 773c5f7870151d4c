"""The sequence positions each of generate's forward calls processes, with and without the cache."""

from __future__ import annotations


def positions_per_call(prompt_len: int, new_tokens: int, use_cache: bool) -> list[int]:
    """Positions each of generate's N forward calls processes: [P, 1, 1, ...] with the cache, [P, P+1, ...] without."""
    if use_cache:
        return [prompt_len] + [1] * (new_tokens - 1)
    return [prompt_len + k for k in range(new_tokens)]


def positions_processed_estimate(prompt_len: int, new_tokens: int, use_cache: bool) -> int:
    """Sequence positions that forward passes process per sequence during one generate.

    With the cache: the prompt once, then one position per step ([P, 1, 1, ...]).
    Without: every step re-reads the whole sequence ([P, P+1, ..., P+N-1]).
    """
    if use_cache:
        return prompt_len + new_tokens - 1
    return new_tokens * prompt_len + new_tokens * (new_tokens - 1) // 2
