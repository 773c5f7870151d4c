"""What the pytest plugin's --kv-* options ask for (`KVSettings`), its grids (--kv-grid), and the line that names
them under pytest's "collected ..." (`settings_line`)."""

from __future__ import annotations

from dataclasses import dataclass

from .scenario import QUICK, Scenario

# The grids (--kv-grid); --kv-prompt-len, --kv-new-tokens, ... replace one axis of the chosen grid.
# `small`, the default, is two cached/uncached pairs (a short and a long prompt): `pytest bench/ --benchmark-only`
# in under a minute on a 2-core CPU with `tiny`. `quick` is `kvbench run`'s default grid (--kv-full's).
GRIDS = {
    "small": dict(prompt_len="16,256", new_tokens="32", batch_size="1", use_cache="both",
                  cache_implementation="dynamic"),
    "quick": dict(
        prompt_len=QUICK["prompt_len"], new_tokens=QUICK["new_tokens"], batch_size=QUICK["batch_size"],
        use_cache="both", cache_implementation="dynamic",
    ),
    "standard": dict(
        prompt_len="64,256,1024", new_tokens="64,256", batch_size="1,8", use_cache="both",
        cache_implementation="dynamic,static",
    ),
    "long": dict(
        prompt_len="1024,3072", new_tokens="256,1024", batch_size="1,8", use_cache="both",
        cache_implementation="dynamic",
    ),
}
USE_CACHE = {"on": (True,), "off": (False,), "both": (True, False)}
# The axes a --kv-grid sets (each replaced by its --kv-* option); axes of Scenario (tests/test_axes.py).
GRID_AXES = tuple(GRIDS["quick"])


@dataclass(frozen=True)
class KVSettings:
    """What the --kv-* options ask for."""

    model: str
    device: str
    dtype: str
    grid: str
    scenarios: tuple[Scenario, ...]
    rounds: int
    warmup_rounds: int
    profile_steps: bool = False
    on_oom: str = "continue"
    full: bool = False

    def run_options(self):
        """The run's settings as the one options object every way of running a sweep builds (`RunOptions`)."""
        from .options import RunOptions

        return RunOptions(repeats=self.rounds, warmup=self.warmup_rounds, profile_steps=self.profile_steps,
                          on_oom=self.on_oom, device=self.device, dtype=self.dtype)


def settings_line(s: KVSettings) -> str:
    """`kvbench: tiny on cpu in float32, grid small: 4 scenarios (prompt 16,256 x new tokens 32 x ...)`."""
    dtype = "float32" if s.dtype == "auto" and s.device == "cpu" else s.dtype
    axes_ = [("prompt", "prompt_len"), ("new tokens", "new_tokens"), ("batch", "batch_size")]
    shape = " x ".join(f"{label} {','.join(map(str, dict.fromkeys(getattr(c, f) for c in s.scenarios)))}"
                       for label, f in axes_)
    caches = ",".join(dict.fromkeys(c.cache_implementation if c.use_cache else "off" for c in s.scenarios))
    return (f"kvbench: {s.model} on {s.device} in {dtype}, grid {s.grid}: {len(s.scenarios)} scenarios ({shape} x "
            f"cache {caches}), {s.rounds} rounds + {s.warmup_rounds} warm-up each"
            + ("" if s.full else "; the full size: --kv-full (see docs/bench.md)"))
