"""The layout stays true: imports run one way between the stages of the flow, with no cycle, and no module grows
past about 400 lines. Read from the source with `ast` (nothing is imported)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "kvbench"

# Each part of the package (the first name below `kvbench`) and the parts it may import. The order is the flow:
# inputs -> estimate (analytic) and results -> measuring -> report / plan -> cli -> the entry points.
BASE = {"errors", "units", "version", "compat"}
ALLOWED = {
    "errors": set(),
    "version": set(),
    "compat": {"errors"},
    "units": {"errors"},
    "inputs": BASE,
    "estimate": BASE | {"inputs"},
    "results": BASE | {"inputs"},
    "measuring": BASE | {"inputs", "estimate", "results"},
    "report": BASE | {"inputs", "estimate", "results"},
    "plan": BASE | {"inputs", "estimate", "results", "measuring"},
    "scale": BASE | {"inputs", "estimate", "results", "measuring"},
    "cli": BASE | {"inputs", "estimate", "results", "measuring", "report", "plan", "scale"},
    "pytest_plugin": BASE | {"inputs", "estimate", "results", "measuring"},
    "__init__": BASE | {"inputs", "estimate", "results", "measuring", "report", "plan"},
    "__main__": {"cli"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every kvbench module a file imports, at the top or inside functions, relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module_name(path).split(".")
    if path.name != "__init__.py":  # a module's package is its parent; a package's, itself
        package = package[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["_LAZY"]:
            # a PEP 562 table (kvbench/__init__.py): name -> ".module", imported on first use
            for value in node.value.values:
                level = len(value.value) - len(value.value.lstrip("."))
                found.add(".".join(package[: len(package) - level + 1] + [value.value[level:]]))
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "kvbench"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "kvbench":
                continue
            for alias in node.names:  # `from . import plots` imports the module kvbench.report.plots
                sub = f"{target}.{alias.name}"
                is_module = (SRC.parent / Path(*sub.split("."))).with_suffix(".py").exists()
                found.add(sub if is_module else target)
    return found


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in sorted(SRC.rglob("*.py"))}


def part(module: str) -> str:
    names = module.split(".")
    return names[1] if len(names) > 1 else "__init__"


def direction_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in graph.items():
        here = part(module)
        for target in sorted(targets):
            there = part(target)
            if there != here and there not in ALLOWED[here]:
                bad.append(f"{module} imports {target} ({here} may import: {', '.join(sorted(ALLOWED[here]))})")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle between modules (a package's __init__ counts as a module), found by depth-first search."""
    found, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return found


def cli_violations(graph: dict[str, set[str]]) -> list[str]:
    """Command modules import `kvbench.cli.common` and the layers below, never another command module or `app`."""
    bad = []
    for module, targets in graph.items():
        if part(module) != "cli" or module in ("kvbench.cli", "kvbench.cli.app", "kvbench.cli.common"):
            continue
        bad += [f"{module} imports {t}" for t in targets if part(t) == "cli" and t != "kvbench.cli.common"]
    return bad


def test_every_part_is_known():
    assert {part(m) for m in import_graph()} <= set(ALLOWED)


def test_imports_run_one_way():
    assert direction_violations(import_graph()) == []


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_command_modules_do_not_import_each_other():
    assert cli_violations(import_graph()) == []


def test_the_checks_catch_what_they_look_for():
    graph = import_graph()
    graph["kvbench.estimate.kvcache"] = graph["kvbench.estimate.kvcache"] | {"kvbench.measuring.loading.models"}
    assert any("kvbench.estimate.kvcache imports kvbench.measuring.loading.models" in v for v in direction_violations(graph))
    graph["kvbench.units"] = graph["kvbench.units"] | {"kvbench.errors"}
    graph["kvbench.errors"] = {"kvbench.units"}
    assert ["kvbench.errors", "kvbench.units", "kvbench.errors"] in cycles(graph)
    graph["kvbench.cli.run"] = graph["kvbench.cli.run"] | {"kvbench.cli.app"}
    assert cli_violations(graph) == ["kvbench.cli.run imports kvbench.cli.app"]


def test_the_lazy_api_table_counts_as_imports():
    assert {"kvbench.measuring.measure", "kvbench.plan.plan", "kvbench.errors"} <= import_graph()["kvbench"]


def test_relative_imports_resolve_to_real_modules():
    graph = import_graph()
    for module, targets in graph.items():
        for target in targets:
            assert target in graph, f"{module} imports {target}, which is not a module of kvbench"


@pytest.mark.parametrize("path", sorted(SRC.rglob("*.py")), ids=lambda p: str(p.relative_to(SRC)))
def test_no_module_over_400_lines(path):
    assert len(path.read_text(encoding="utf-8").splitlines()) <= 400


# measuring/ in rooms (README "Architecture"): each may import the rooms before it, never one after it.
MEASURING_ORDER = ["loading", "instruments", "engines", "record", "measure", "harness"]


def measuring_room(module: str) -> str | None:
    names = module.split(".")
    return names[2] if len(names) > 2 and names[1] == "measuring" else None


def room_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in graph.items():
        here = measuring_room(module)
        for target in sorted(targets):
            there = measuring_room(target)
            if here and there and MEASURING_ORDER.index(there) > MEASURING_ORDER.index(here):
                bad.append(f"{module} imports {target} ({here} comes before {there})")
    return bad


def test_measuring_holds_its_rooms_and_nothing_else():
    top = {p.stem if p.is_file() else p.name for p in (SRC / "measuring").iterdir()
           if p.name != "__pycache__" and p.name != "__init__.py"}
    assert top == set(MEASURING_ORDER)


def test_measuring_rooms_import_one_way():
    graph = import_graph()
    assert room_violations(graph) == []
    graph["kvbench.measuring.instruments.clock"] = graph["kvbench.measuring.instruments.clock"] | {
        "kvbench.measuring.harness.runner"}
    assert room_violations(graph) == ["kvbench.measuring.instruments.clock imports kvbench.measuring.harness.runner "
                                      "(instruments comes before harness)"]


MAX_PARAMETERS = 12  # outside cli/: a function that needs more takes a small dataclass of them instead
MAX_MODULES = 15  # per folder, __init__.py not counted


def parameter_count(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Parameters a function takes, *args and **kwargs one each, a method's self or cls not counted."""
    a = node.args
    names = [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs] + [p.arg for p in (a.vararg, a.kwarg) if p]
    return len([n for n in names if n not in ("self", "cls")])


def long_signatures(root: Path = SRC) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        if path.relative_to(root).parts[0] == "cli":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and parameter_count(node) > MAX_PARAMETERS:
                bad.append(f"{path.relative_to(root)}:{node.lineno} {node.name} takes {parameter_count(node)}")
    return bad


def crowded_folders(root: Path = SRC) -> list[str]:
    folders = {p.parent for p in root.rglob("*.py")}
    counts = {f: len([p for p in f.glob("*.py") if p.name != "__init__.py"]) for f in folders}
    return [f"{f.relative_to(root.parent)}: {n} modules" for f, n in sorted(counts.items()) if n > MAX_MODULES]


def test_no_function_outside_cli_takes_more_than_12_parameters():
    assert long_signatures() == []


def test_no_folder_holds_more_than_15_modules():
    assert crowded_folders() == []


def test_the_size_checks_count_what_they_say(tmp_path):
    (tmp_path / "cli").mkdir()
    (tmp_path / "wide").mkdir()
    twelve = ", ".join(f"a{i}" for i in range(11))
    (tmp_path / "ok.py").write_text(f"class C:\n    def m(self, {twelve}, *, k): ...\n")  # 12 without self
    (tmp_path / "cli" / "run.py").write_text(f"def run({twelve}, b, c, d): ...\n")  # cli/ may take more
    (tmp_path / "big.py").write_text(f"def f({twelve}, *rest, **more): ...\n")  # 11 + *rest + **more = 13
    assert long_signatures(tmp_path) == ["big.py:1 f takes 13"]
    for i in range(16):
        (tmp_path / "wide" / f"m{i}.py").write_text("")
    (tmp_path / "wide" / "__init__.py").write_text("")
    assert crowded_folders(tmp_path) == [f"{tmp_path.name}/wide: 16 modules"]
    (tmp_path / "wide" / "m15.py").unlink()
    assert crowded_folders(tmp_path) == []
