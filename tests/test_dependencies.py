"""Every third-party module kvbench imports is a declared dependency (pyproject.toml), and one declared only as an
optional extra is imported inside a function (lazily), so kvbench runs without it. Read with `ast` (nothing under
src/ is imported), at the top of a module and inside functions alike."""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "kvbench"

# Import names whose distribution has another name, for the distributions that may not be installed here (optional
# extras) or where two distributions provide one name (the deprecated `pynvml` package and nvidia-ml-py).
DISTRIBUTION_OF = {
    "pynvml": "nvidia-ml-py",
    "yaml": "pyyaml",
    "PIL": "pillow",
    "sklearn": "scikit-learn",
    "optimum": "optimum-quanto",  # kvbench's only use of the optimum namespace: `optimum.quanto`
    "hqq": "hqq",
    "ray": "ray",
    "selenium": "selenium",  # the [test] extra's browser driver
}


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    return normalize(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement.strip()).group(0))


def declared() -> tuple[set[str], dict[str, set[str]]]:
    """(the dependencies, {extra: its dependencies}) of pyproject.toml, as normalized names."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    table = project.get("optional-dependencies", {})

    def names(extra: str) -> set[str]:  # an extra's distributions, its kvbench[a,b] references followed as pip does
        out = set()
        for r in table[extra]:
            inner = re.fullmatch(r"\s*kvbench\[([^\]]*)\]\s*", r)
            out |= (set().union(*(names(e.strip()) for e in inner.group(1).split(","))) if inner
                    else {requirement_name(r)})
        return out

    return {requirement_name(r) for r in project["dependencies"]}, {extra: names(extra) for extra in table}


def third_party_imports(source: str, local: set[str] = frozenset()) -> list[tuple[str, int, bool]]:
    """(top-level name, line, inside a function) of every absolute import -- `import x`, `from x import y`, and
    `compat.require("x", ...)`, kvbench's import of an optional package -- that is neither the standard library,
    kvbench, nor one of the `local` modules (tests' helpers)."""
    tree = ast.parse(source)
    in_function: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            in_function |= {id(inner) for inner in ast.walk(node) if inner is not node}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "require"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            names = [node.args[0].value]
        else:
            continue
        for name in names:
            top = name.split(".")[0]
            if top not in sys.stdlib_module_names and top not in {"kvbench", "__future__", *local}:
                found.append((top, node.lineno, id(node) in in_function))
    return found


@functools.lru_cache(maxsize=1)
def installed() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def distributions(import_name: str) -> set[str]:
    """The distributions that provide an import name (none when it is not installed and not in DISTRIBUTION_OF)."""
    if import_name in DISTRIBUTION_OF:
        return {DISTRIBUTION_OF[import_name]}
    return {normalize(dist) for dist in installed().get(import_name, ())}


def problems(files: dict[str, str], allowed: set[str], extras: dict[str, set[str]],
             local: set[str] = frozenset()) -> list[str]:
    """One line per undeclared import, per unknown import name, and per optional extra imported at module level."""
    optional = {dist: extra for extra, dists in extras.items() for dist in dists if dist not in allowed}
    bad = []
    for where, source in files.items():
        for name, line, lazy in third_party_imports(source, local):
            dists = distributions(name)
            if not dists:
                bad.append(f"{where}:{line}: imports {name!r}, which no installed distribution provides: install it "
                           "and declare it in pyproject.toml (or add it to DISTRIBUTION_OF in this test)")
            elif dists & allowed:
                continue
            elif dists & optional.keys():
                if not lazy:
                    extra = optional[min(dists & optional.keys())]
                    bad.append(f"{where}:{line}: imports {name!r} (extra [{extra}]) at module level: import "
                               "it inside the function that needs it, with a message naming the pip install")
            else:
                bad.append(f"{where}:{line}: imports {name!r} (distribution {', '.join(sorted(dists))}), which "
                           "pyproject.toml does not declare")
    return bad


def sources(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in sorted(folder.rglob("*.py"))}


def test_every_import_of_src_is_declared():
    deps, extras = declared()
    bad = problems(sources(SRC), deps, extras)
    assert not bad, "\n".join(bad)


def test_every_import_of_the_tests_is_a_dependency_or_in_the_test_extra():
    deps, extras = declared()
    files = {**sources(ROOT / "tests"), **sources(ROOT / "bench")}
    local = {Path(name).stem for name in files}  # helper modules of tests/ and bench/ (bench_support, ...)
    bad = problems(files, deps | extras["test"], {}, local)
    assert not bad, "\n".join(bad)


def test_the_check_catches_undeclared_unknown_and_eager_optional_imports():
    deps, extras = declared()
    extras = {**extras, "fancy": {"pyyaml"}}
    source = "\n".join([
        "import os, json",  # standard library
        "from . import units",  # relative: kvbench itself
        "import kvbench.errors",
        "import torch.nn",  # declared
        "import pynvml",  # declared as nvidia-ml-py
        "from typer import Typer",
        "import selenium.webdriver",  # line 7: only the [test] extra, at module level
        "import yaml",  # line 8: an extra at module level
        "def lazy():",
        "    import yaml",  # an extra, lazily: fine
        "    from no_such_module_xyz import thing",  # line 11: nothing provides it
        "import pytest_benchmark",  # declared
        "def quantize():",
        "    return compat.require('yaml', 'kvbench[fancy]', 'x')",  # an extra through kvbench's require: fine
        "compat.require('hqq', 'hqq', 'x')",  # line 15: at module level, and in no extra
    ])
    found = problems({"x.py": source}, deps, extras)
    assert [line.split(": ")[0] for line in found] == ["x.py:7", "x.py:8", "x.py:11", "x.py:15"], found
    assert "'yaml' (extra [fancy]) at module level" in found[1]
    assert "which no installed distribution provides" in found[2]
    # A distribution that is installed but not declared (pytest-benchmark depends on it; kvbench does not).
    assert problems({"y.py": "import pluggy"}, deps - {"pluggy"}, {}) == [
        "y.py:1: imports 'pluggy' (distribution pluggy), which pyproject.toml does not declare"]
