"""The pool of paged attention (continuous batching, ``generate_batch``): its size, and the blocks requests use.

kvbench always sizes the pool explicitly (by default transformers sizes it from free memory: 0.6 of free RAM on a
CPU), for one scenario's requests to run side by side without preemption: ``page_size`` tokens a page (256 by
default), ``num_blocks = batch x ceil((P + N - 1) / page_size)`` (a request holds the P + N - 1 positions it
feeds) and ``max_batch_tokens = batch x P`` (every prompt prefilled in one batch).

Rules of ``ContinuousBatchingConfig`` / ``PagedAttentionCache`` (transformers 5.24; tests/test_paged.py checks
them on real pools), for a model of full-attention layers only (one allocator):

* a page holds ``2 x kv_heads x head_dim x bytes x page_size`` (keys and values of ``page_size`` tokens, one layer);
  a block is a page of every layer; a sector is ``lcm(block, 128)`` bytes;
* ``num_blocks`` asks for ``ceil(num_blocks x block / sector)`` sectors (at least 1), and the pool is one uint8
  tensor of that many sectors plus two never-allocated trash sectors;
* a request holds ``ceil(positions / page_size)`` blocks, released when it finishes.

transformers 5.17 (``compat.paged_layout() == "per_layer"``, the page option named ``block_size``) keeps a key and a
value tensor per layer instead, of ``num_blocks + 2`` blocks each (two trash blocks): the pool is
``(num_blocks + 2) x block``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from .. import compat
from .kvcache import dtype_nbytes, kv_layer_specs

PAGE_SIZE = 256  # ContinuousBatchingConfig's default
TRASH_SECTORS = 2
SECTOR_ALIGNMENT = 128


class PagedSizing(NamedTuple):
    page_size: int
    num_blocks: int
    max_batch_tokens: int


def paged_sizing(batch_size: int, prompt_len: int, new_tokens: int, page_size: int = PAGE_SIZE) -> PagedSizing:
    """The pool kvbench asks for: every request of the scenario at once, none preempted."""
    per_request = math.ceil((prompt_len + new_tokens - 1) / page_size)
    return PagedSizing(page_size, batch_size * per_request, batch_size * prompt_len)


def _block_bytes(config: Any, dtype: torch.dtype | str, page_size: int) -> int:
    specs = [s for s in kv_layer_specs(config) if s.kind != "none" or s.state is not None]
    if any(s.kind != "full" or s.state is not None or s.k_head_dim != s.v_head_dim for s in specs):
        raise NotImplementedError("the paged pool is estimated for models of full-attention layers only")
    if len({(s.kv_heads, s.k_head_dim) for s in specs}) != 1:
        raise NotImplementedError("the paged pool is estimated for layers of one shape only")
    page = 2 * specs[0].kv_heads * specs[0].k_head_dim * dtype_nbytes(dtype) * page_size
    return page * len(specs)


def paged_pool_bytes(config: Any, *, dtype: torch.dtype | str, num_blocks: int, page_size: int = PAGE_SIZE) -> int:
    """Bytes of the pool ``PagedAttentionCache`` reserves (its ``cache_tensor``)."""
    block = _block_bytes(config, dtype, page_size)
    if compat.paged_layout() == "per_layer":  # 5.17: per-layer tensors of num_blocks + 2 blocks
        return (num_blocks + TRASH_SECTORS) * block
    sector = math.lcm(block, SECTOR_ALIGNMENT)
    sectors = max(1, math.ceil(num_blocks * block / sector))
    return (sectors + TRASH_SECTORS) * sector


def paged_used_bytes(config: Any, *, dtype: torch.dtype | str, batch_size: int, prompt_len: int, new_tokens: int,
                     page_size: int = PAGE_SIZE) -> int:
    """Bytes of the blocks the scenario's requests hold when they finish (all of them at once)."""
    blocks = batch_size * math.ceil((prompt_len + new_tokens - 1) / page_size)
    return blocks * _block_bytes(config, dtype, page_size)
