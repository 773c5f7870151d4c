"""Commands start at once: help and argument errors import neither torch, transformers nor pandas, and
`import kvbench` stays as light while its API still loads on first use. Each check runs a fresh interpreter."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
HEAVY = ("torch", "transformers", "pandas", "numpy", "matplotlib")


def python(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=120)


def imported_modules(importtime_stderr: str) -> set[str]:
    """Module names from `python -X importtime` ("import time: self | cumulative | name" lines)."""
    return {line.rsplit("|", 1)[1].strip() for line in importtime_stderr.splitlines()
            if line.startswith("import time:") and line.count("|") == 2}


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


@pytest.mark.parametrize("argv,code", [
    (["--help"], 0),
    ([], 0),  # bare `kvbench`: the help
    (["run", "--help"], 0),
    (["compare", "--help"], 0),
    (["frontier", "--help"], 0),
    (["run", "--repeats", "abc"], 2),
    (["run", "--prompt-len", "abc"], 2),  # kvbench's own checks of a value, not only typer's
    (["run", "--batch-size", "99999999999999999999"], 2),  # too many digits: no model needed to say so
    (["run", "--use-cache", "maybe"], 2),
    (["run", "--repeats", "0"], 2),
    (["run", "--cache-implementation", "nope"], 2),
    (["run", "--dtype", "float99"], 2),
    (["run", "--model", "no-such-model"], 2),
    (["run", "--shard", "3/2"], 2),
    (["report"], 2),  # missing argument
    (["no-such-command"], 2),
])
def test_help_and_argument_errors_import_no_heavy_module(argv, code):
    done = python("-X", "importtime", "-m", "kvbench", *argv)
    assert done.returncode == code, done.stderr[-2000:]
    modules = imported_modules(done.stderr)
    assert "kvbench.cli.app" in modules  # the parse saw the real entry point
    assert heavy(modules) == []
    if code == 2:
        assert "kvbench: error:" in done.stderr


def test_a_prompt_beyond_any_tensor_is_refused_against_the_models_context():
    """A --prompt-len of 20 digits is refused naming the model's context, which reads the model's config (so this
    refusal, unlike the ones above, imports transformers): still one line and exit 2."""
    done = python("-m", "kvbench", "run", "--model", "tiny", "--prompt-len", "99999999999999999999")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == ("kvbench: error: --prompt-len: 99999999999999999999 exceeds tiny's "
                                                    "context of 2,048 tokens (max_position_embeddings)")


def test_the_check_sees_a_heavy_import():
    done = python("-X", "importtime", "-c", "import kvbench.estimate.kvcache")
    assert "torch" in heavy(imported_modules(done.stderr))


def test_import_kvbench_is_light_and_the_api_loads_on_use():
    code = """
import json, sys
import kvbench
light = sorted(m for m in sys.modules if m.split(".")[0] in %r)
from kvbench import Scenario, measure, run_sweep, UserError
names = {n: callable(getattr(kvbench, n)) or n == "__version__" for n in kvbench.__all__}
try:
    kvbench.no_such_name
    missing = None
except AttributeError as exc:
    missing = str(exc)
from kvbench.measuring.measure import measure as direct
print(json.dumps({"light": light, "names": names, "missing": missing, "same": measure is direct,
                  "dir": sorted(set(kvbench.__all__) - set(dir(kvbench))), "scenario": Scenario(4, 2).id}))
""" % (HEAVY,)
    done = python("-c", code)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout)
    assert out["light"] == []
    assert all(out["names"].values()) and {"measure", "load_model", "plan_capacity", "Scenario"} <= set(out["names"])
    assert out["missing"] == "module 'kvbench' has no attribute 'no_such_name'"
    assert out["same"] and out["dir"] == [] and out["scenario"] == "P4-N2-B1-cache-dynamic-greedy"


def test_an_argument_error_imports_no_more_than_help():
    """`kvbench run --prompt-len abc` is refused by the same parse as `kvbench run --help`: it imports no third-party
    package the help does not (before the check came first it imported torch, 2 s more than the help). Compared
    as imports, not seconds: a timing assertion fails on a busy machine."""
    def third_party(*args):
        return {m.split(".")[0] for m in imported_modules(python("-X", "importtime", *args).stderr)} - {"kvbench"}

    extra = third_party("-m", "kvbench", "run", "--prompt-len", "abc") - third_party("-m", "kvbench", "run", "--help")
    assert sorted(extra) == []
