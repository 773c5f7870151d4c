"""Set-up a user can choose: a plain install runs kvbench, each heavy optional part is an extra of its own, and the
test extra (what CI installs) still holds every one of them; run folders the tour creates are ignored by git while
the committed runs stay tracked."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")

ROOT = Path(__file__).resolve().parents[1]
HEAVY = {"ray": "ray", "selenium": "browser", "optimum-quanto": "quanto", "hqq": "hqq"}


def name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9._-]+(\[[^\]]*\])?", requirement).group(0).lower()


def extras() -> dict[str, list[str]]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def expanded(extra: str, table: dict) -> set[str]:
    """An extra's distributions, its kvbench[...] references followed (as pip does)."""
    out = set()
    for requirement in table[extra]:
        n = name(requirement)
        if n.startswith("kvbench["):
            for inner in n[len("kvbench["):-1].split(","):
                out |= expanded(inner.strip(), table)
        else:
            out.add(n)
    return out


def test_each_heavy_part_is_an_extra_of_its_own_and_the_test_extra_holds_them_all():
    table = extras()
    for dist, extra in HEAVY.items():
        assert expanded(extra, table) == {dist}
    assert set(HEAVY) | {"pytest-xdist"} <= expanded("test", table)
    deps = {name(r) for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    assert not deps & set(HEAVY)  # a plain `pip install -e .` pulls none of them


def test_the_readme_documents_the_plain_install_beside_the_test_extra():
    readme = (ROOT / "README.md").read_text()
    setup = readme[readme.index("## Set up"):readme.index("## Test command")]
    assert re.search(r'^pip install -e \. +#', setup, re.M) and 'pip install -e ".[test]"' in setup
    for extra in set(HEAVY.values()):
        assert f"[{extra}]" in setup, extra


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs the git checkout")
def test_run_folders_of_the_tour_are_ignored_and_committed_runs_stay_tracked():
    def ignored(*paths):
        done = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=ROOT, capture_output=True, text=True)
        return set(done.stdout.split())

    created = ["results/tour/records.jsonl", "results/tour/report/report.html",
               "results/20261207-135500-tiny/records.jsonl", "results/20261207-135500-phi-3-mini-4k/run.json"]
    assert ignored(*created) == set(created)
    tracked = subprocess.run(["git", "ls-files", "results"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert tracked and ignored(*tracked) == set()


def test_the_tour_says_timings_need_an_idle_machine_and_how_kvbench_flags_a_busy_one():
    from kvbench.report.summary import NOISY
    from kvbench.results.frame import SPREAD_LIMIT

    readme = (ROOT / "README.md").read_text()
    tour = readme[readme.index("## A two-minute tour"):readme.index("From Python:")]
    assert "Timings need an idle machine" in tour
    assert f"marks with `{NOISY}` a timing whose repeats lie more than {SPREAD_LIMIT:.0%} apart" in tour
