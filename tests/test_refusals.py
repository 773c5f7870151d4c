"""A refused command leaves nothing behind: every `kvbench run` refused for bad input, run in an empty working
folder with the default run folder (results/<time>-<model>), leaves that folder empty; so does the pytest route
(`pytest bench --kv-model ...`), which must refuse before pytest-benchmark creates .benchmarks/."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvbench.cli.app import main

ROOT = Path(__file__).resolve().parents[1]


def broken(folder: Path) -> Path:
    path = folder / "broken.json"
    path.write_text("{broken")
    return path


def no_model_type(folder: Path) -> Path:
    path = folder / "config.json"
    path.write_text(json.dumps({"hidden_size": 8}))
    return path


def empty_folder(folder: Path) -> Path:
    (folder / "model").mkdir()
    return folder / "model"


REFUSALS = {  # what is refused: the arguments (a callable makes a file outside the working folder)
    "unknown model": ["--model", "no-such-model"],
    "bad dtype": ["--dtype", "float99"],
    "a device torch cannot give": ["--device", "cuda:99"],
    "not a device": ["--device", "tpu"],
    "context overflow": ["--prompt-len", "5000"],
    "broken config file": ["--model", broken],
    "config without model_type": ["--model", no_model_type],
    "folder without config.json": ["--model", empty_folder],
    "prompt length not a number": ["--prompt-len", "abc"],
    "too many digits": ["--prompt-len", "99999999999999999999"],
    "new tokens beyond int64": ["--new-tokens", "99999999999999999999"],
    "a 5,000-digit prompt length": ["--prompt-len", "9" * 5000],
    "batch size beyond int64": ["--batch-size", "99999999999999999999"],
    "bad use-cache": ["--use-cache", "maybe"],
    "no repeats": ["--repeats", "0"],
    "unknown cache": ["--cache-implementation", "nope"],
    "compile without static": ["--compile", "on"],
    "beam of one": ["--decoding", "beam", "--num-beams", "1"],
    "bad shard": ["--shard", "3/2"],
    "bad executor": ["--executor", "slurm"],
    "max-memory alone": ["--max-memory", "0=1GiB"],
    "bad on-oom": ["--on-oom", "stop"],
    "resume of nothing": ["--resume", "no-such-run"],
}

NAMED = {  # what the line must say, where a case has more to say than that it was refused
    "too many digits": "--prompt-len: 99999999999999999999 exceeds tiny's context of 2,048 tokens "
                       "(max_position_embeddings)",
    "new tokens beyond int64": "--new-tokens: 99999999999999999999 exceeds tiny's context of 2,048 tokens",
    "a 5,000-digit prompt length": "--prompt-len: 99999999999999999999... (5,000 digits) exceeds tiny's context",
    "batch size beyond int64": "--batch-size: '99999999999999999999' is too large (more than 18 digits)",
}


@pytest.mark.parametrize("case", REFUSALS)
def test_a_refused_run_leaves_its_working_folder_empty(case, tmp_path, monkeypatch, capsys):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    args = [a(tmp_path) if callable(a) else a for a in REFUSALS[case]]
    monkeypatch.chdir(cwd)
    assert main(["run", *[str(a) for a in args]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kvbench: error: ") and err.count("\n") == 1, err
    assert NAMED.get(case, "") in err
    assert sorted(p.name for p in cwd.iterdir()) == []


def test_a_refusal_after_the_run_folder_was_made_removes_its_parents_too(tmp_path, monkeypatch, capsys):
    """A failure once the run folder exists (the model fails to load) removes the folder and the results/ it made."""
    import kvbench.measuring.loading.models as models
    from kvbench.errors import UserError

    def refuse(*args, **kwargs):
        raise UserError("cannot load it")

    monkeypatch.setattr(models, "load_model", refuse)
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--out", "results/a/b"]) == 2
    assert "cannot load it" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [["--kv-model", "no-such-model"], ["--kv-model", "/no/such/config.json"]])
def test_a_refused_bench_session_leaves_no_benchmarks_folder(tmp_path, args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    env.pop("PYTEST_XDIST_WORKER", None)
    done = subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "bench" / "test_bench_sweep.py"), *args,
                           "-p", "no:cacheprovider", "-q"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, done.stdout[-2000:] + done.stderr[-2000:]
    assert "kvbench:" in done.stderr
    assert list(tmp_path.iterdir()) == []
