"""Quiet output: the pytest route filters torch's `torch.jit.script_method` deprecations at their source (the
project's pytest configuration), and every warning kvbench raises itself still shows."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

INNER = '''
import warnings


def test_imports_that_warn():
    import torch.utils.mkldnn  # noqa: F401 - 14 script_method deprecations at its first import
    from kvbench.results.schema import PartialLineWarning

    warnings.warn("a half-written line skipped", PartialLineWarning)
    warnings.warn("kvbench's own deprecation", DeprecationWarning)
'''


def test_torch_script_method_deprecations_are_filtered_and_kvbench_warnings_kept(tmp_path):
    (tmp_path / "test_inner.py").write_text(INNER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    env.pop("PYTEST_XDIST_WORKER", None)
    env.pop("PYTHONWARNINGS", None)
    done = subprocess.run([sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), "--rootdir",
                           str(tmp_path), str(tmp_path / "test_inner.py"), "-p", "no:cacheprovider", "-q"],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "`torch.jit.script_method` is deprecated" not in out
    assert "PartialLineWarning: a half-written line skipped" in out
    assert "DeprecationWarning: kvbench's own deprecation" in out


def test_the_time_estimate_line_is_one_line_when_piped(tiny_config_file, tmp_path, monkeypatch, capsys):
    """The line that says how long a slow sweep will take is never broken mid-sentence (piped output is 160 columns
    wide; the line, naming the model by its path, is longer)."""
    import kvbench.cli.run as run
    from kvbench.cli.app import main

    monkeypatch.setattr(run, "SLOW_SCENARIO_S", 0.0)  # tiny is fast: say it anyway
    monkeypatch.setattr(run, "SLOW_WEIGHT_BYTES", 0)
    assert main(["run", "--model", str(tiny_config_file), "--prompt-len", "4", "--new-tokens", "2", "--batch-size",
                 "1", "--use-cache", "on", "--repeats", "1", "--warmup", "0", "--out", str(tmp_path / "run")]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "per scenario expected" in line]
    assert len(lines) == 1 and len(lines[0]) > 160
    assert lines[0].rstrip().endswith("a GPU or a smaller grid is faster")


def test_a_run_prints_no_profiler_lines(tmp_path):
    """The allocation pass runs torch's profiler once per scenario; its native library printed "profiler_start" and
    "profiler_stop" to stderr at each (24 lines for the tour): a run's output is kvbench's own."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    done = subprocess.run([sys.executable, "-m", "kvbench", "run", "--model", "tiny", "--device", "cpu", "--prompt-len",
                           "8", "--new-tokens", "2", "--repeats", "1", "--warmup", "0", "--profile-steps", "--out",
                           str(tmp_path / "run")], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "profiler_st" not in done.stderr + done.stdout
    assert "SyncActivityProfilerHandler" not in done.stderr + done.stdout
