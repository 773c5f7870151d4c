"""Allocated bytes at the peak of a call, where the peak occurs and what it is made of, on any device.

One instrument for the CPU and CUDA: torch's profiler with `profile_memory=True` reports every allocation and free of
torch's allocator on the device, in order, each with the allocator's running total. The peak held during the call
above the level just before it is the largest running total minus the level before the first event: the same
quantity as CUDA's `max_memory_allocated` above `memory_allocated` before the call (the device is the one choice).
The CPU allocator reports a free only for a block whose size it learned while a memory profile ran, so freeing a
tensor made before profiling is not seen: the figure then counts that tensor as still held (never below the truth).

Around the call the instrument labels scopes with `record_function` (model forward pre/post hooks, the LM head, the
attention modules, transformers' cache methods), so each allocation knows the forward call it ran in and what made
it. The peak's parts are the blocks alive at the peak, grouped by label: the KV cache (made by the cache's methods,
plus `held`, a cache built before the call), the logits (the LM head's output), the attention's transient buffers
(made inside attention modules, the cache's excluded), generate's own work between forwards (the float32 copy of
the logits, sampling, beam bookkeeping) and the rest of the forward (MLP, norms, embeddings, the residual stream).
"""

from __future__ import annotations

import contextlib
import time

import torch

from .profile import quiet_profile

SOURCE = "torch.profiler allocation events"
PARTS = ("kv_cache", "logits", "attention", "generate", "rest")
_FORWARD, _LOGITS, _ATTENTION, _CACHE = "kvbench::forward ", "kvbench::logits", "kvbench::attention", "kvbench::cache"
CACHE_METHODS = ("update", "update_conv_state", "update_recurrent_state", "update_indexer", "reorder_cache",
                 "batch_repeat_interleave", "early_initialization")


def _scope(name: str):
    """A pre-hook and a post-hook that open and close a profiler range named `name` (a callable: per call)."""
    stack = []

    def pre(module, args):
        rf = torch.autograd.profiler.record_function(name() if callable(name) else name)
        rf.__enter__()
        stack.append(rf)

    def post(module, args, output):
        if stack:
            stack.pop().__exit__(None, None, None)

    return pre, post


def _attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Modules whose class names an attention block (the outermost ones: `...Attention`, `...Attn`)."""
    found = []
    for _, module in model.named_modules():
        name = type(module).__name__.lower()
        if ("attention" in name or name.endswith("attn")) and not any(
                module is m or _contains(m, module) for m in found):
            found.append(module)
    return found


def _contains(outer: torch.nn.Module, inner: torch.nn.Module) -> bool:
    return any(m is inner for m in outer.modules())


@contextlib.contextmanager
def _labelled(model: torch.nn.Module | None):
    """The scopes on the model (forward k, LM head, attention) and on transformers' cache methods for the block."""
    handles, patched = [], []
    calls = [0]
    if model is not None:
        def forward_name():
            calls[0] += 1
            return f"{_FORWARD}{calls[0] - 1}"

        scopes = [(model, forward_name)]
        try:
            head = model.get_output_embeddings()
            if isinstance(head, torch.nn.Module):
                scopes.append((head, _LOGITS))
        except (AttributeError, NotImplementedError):
            pass
        scopes += [(m, _ATTENTION) for m in _attention_modules(model)]
        for module, name in scopes:
            pre, post = _scope(name)
            handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
        try:
            from transformers.cache_utils import Cache
        except ImportError:  # pragma: no cover - transformers is a dependency
            Cache = None
        for method in CACHE_METHODS if Cache is not None else ():
            original = Cache.__dict__.get(method)
            if original is None:
                continue

            def wrapped(*args, _original=original, **kwargs):
                with torch.autograd.profiler.record_function(_CACHE):
                    return _original(*args, **kwargs)

            setattr(Cache, method, wrapped)
            patched.append((Cache, method, original))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for cls, method, original in patched:
            setattr(cls, method, original)


def allocation_events(prof, device: torch.device) -> list[tuple[int, int, int, int, tuple[str, ...]]]:
    """(time, size (negative: a free), running total, address, enclosing scope names) of every allocation event on
    `device`, in order."""
    from torch._C._profiler import _EventType

    events, index = [], [0]
    want = torch.device(device)

    def walk(nodes, scopes):
        for node in nodes:
            if node.tag == _EventType.Allocation:
                extra = node.extra_fields
                dev = extra.device
                if dev.type == want.type and (want.index is None or dev.index in (None, want.index)):
                    index[0] += 1
                    events.append((node.start_time_ns, index[0], extra.alloc_size, extra.total_allocated,
                                   extra.ptr, scopes))
            name = node.name
            walk(node.children, scopes + (name,) if name.startswith("kvbench::") else scopes)

    walk(prof.profiler.kineto_results.experimental_event_tree(), ())
    events.sort(key=lambda e: (e[0], e[3] - e[2], e[1]))  # time, then the level before the event
    return [(t, size, total, ptr, scopes) for t, _, size, total, ptr, scopes in events]


def _label(scopes: tuple[str, ...]) -> str:
    names = set(scopes)
    if _CACHE in names:
        return "kv_cache"
    if _LOGITS in names:
        return "logits"
    if _ATTENTION in names:
        return "attention"
    return "rest" if any(s.startswith(_FORWARD) for s in scopes) else "generate"


def _forward_index(scopes: tuple[str, ...]) -> int | None:
    found = [int(s[len(_FORWARD):]) for s in scopes if s.startswith(_FORWARD)]
    return found[0] if found else None


def peak_of(events, held: int = 0) -> dict:
    """The peak above the level before the first event, its forward call and its parts (see the module's doc)."""
    if not events:
        return {"peak_allocated_delta_bytes": held, "peak_allocated_forward": None,
                "peak_allocated_phase": None, **{f"peak_allocated_{p}_bytes": 0 for p in PARTS},
                "peak_allocated_kv_cache_bytes": held}
    base = events[0][2] - events[0][1]
    live: dict[int, tuple[int, str]] = {}
    best, best_live, best_at, last_forward = 0, {}, None, None
    for _, size, total, ptr, scopes in events:
        forward = _forward_index(scopes)
        last_forward = forward if forward is not None else last_forward
        if size > 0:
            live[ptr] = (size, _label(scopes))
        else:
            live.pop(ptr, None)
        if total - base > best:
            best, best_live = total - base, dict(live)
            best_at = (forward, last_forward)
    parts = dict.fromkeys(PARTS, 0)
    for size, label in best_live.values():
        parts[label] += size
    parts["rest"] += best - sum(parts.values())  # frees of blocks made before the call (rare): the rest's
    parts["kv_cache"] += held
    forward, after = best_at if best_at else (None, None)
    step = forward if forward is not None else after
    return {
        "peak_allocated_delta_bytes": best + held,
        "peak_allocated_forward": step,  # the forward call (0: the prefill) in or after which the peak occurs
        "peak_allocated_phase": None if step is None else (
            ("prefill" if step == 0 else "decode") + ("" if forward is not None else ", after the forward")),
        **{f"peak_allocated_{p}_bytes": v for p, v in parts.items()},
    }


@contextlib.contextmanager
def allocation_peak(device: torch.device | str, model: torch.nn.Module | None = None, held: int = 0):
    """Yields a dict filled after the block: the allocated peak above the level before it (`held`: bytes of a cache
    built before the block and counted as the block's), its phase and parts, the source and the pass's cost."""
    from torch.profiler import ProfilerActivity

    out: dict = {}
    device = torch.device(device)
    start = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    activities = [ProfilerActivity.CPU]
    with _labelled(model), quiet_profile(activities=activities, profile_memory=True) as prof:
        yield out
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    out.update(peak_of(allocation_events(prof, device), held))
    out["peak_allocated_source"] = SOURCE
    out["peak_allocated_pass_s"] = time.perf_counter() - start
