"""`pytest bench/` as a user runs it, from the repository root with no options: what it collects (the default
grid is small, so `--benchmark-only` finishes in about a minute on a 2-core CPU; docs/bench.md) and the line that
names what it measures; `--kv-full` brings back the full-size grid. Collection only: nothing is timed here."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def collect(*args) -> tuple[list[str], str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    env.pop("PYTEST_XDIST_WORKER", None)
    done = subprocess.run([sys.executable, "-m", "pytest", "bench/", "--collect-only", "-q", "-p", "no:cacheprovider",
                           "-p", "no:randomly", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return [line for line in done.stdout.splitlines() if "::" in line], done.stdout


def test_the_default_is_two_cached_uncached_pairs_and_names_itself():
    ids, out = collect()
    # by hand: the study's 2 (cache on, off) + the overhead's 3 + the small grid's 2 prompts x 1 x 1 x 2 caches = 4
    # + the sweep cost's 1 (collected; under --benchmark-only it skips without --kv-full)
    assert len(ids) == 2 + 3 + 4 + 1, ids
    assert [i.split("::")[1] for i in ids if "test_bench_sweep.py" in i] == [
        "test_generate[P16-N32-B1-cache-dynamic-greedy]", "test_generate[P16-N32-B1-nocache-greedy]",
        "test_generate[P256-N32-B1-cache-dynamic-greedy]", "test_generate[P256-N32-B1-nocache-greedy]",
    ]
    assert ("kvbench: tiny on cpu in float32, grid small: 4 scenarios (prompt 16,256 x new tokens 32 x batch 1 x "
            "cache dynamic,off), 5 rounds + 1 warm-up each; the full size: --kv-full") in out


def test_kv_full_is_the_quick_grid_and_kv_grid_still_wins():
    ids, out = collect("--kv-full")
    assert len(ids) == 2 + 3 + 3 * 1 * 2 * 2 + 1, ids  # quick: prompts 16,64,256 x 32 x batch 1,4 x cache on/off
    assert "grid quick: 12 scenarios (prompt 16,64,256 x new tokens 32 x batch 1,4 x cache dynamic,off)" in out
    assert "--kv-full" not in out.split("grid quick")[1].splitlines()[0]
    ids, out = collect("--kv-full", "--kv-grid", "small", "--kv-rounds", "2")
    assert len(ids) == 2 + 3 + 4 + 1 and "grid small: 4 scenarios" in out and "2 rounds + 1 warm-up" in out
