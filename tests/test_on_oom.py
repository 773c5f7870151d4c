"""--on-oom skip-larger: once a scenario runs out of memory, the scenarios larger than it along the size axes (same
settings otherwise) are recorded as "skipped", naming it, and never generate; "continue" (the default) measures
them. Out-of-memory is injected where the GPU raises it: in model.generate, for cached batches of 2 and more with
prompts of 8 tokens and more.
"""

from __future__ import annotations

import json

import pytest
import torch

import kvbench.measuring.loading.models as models_module
from kvbench import Scenario
from kvbench.cli.app import main
from kvbench.errors import UserError
from kvbench.inputs.scenario import grid
from kvbench.measuring.harness.resume import larger_than
from kvbench.measuring.harness.runner import run_sweep
from kvbench.results.store import load_results

OOM = "CUDA out of memory. Tried to allocate 2.00 GiB"
GRID = grid([4, 8, 16], [2], [1, 2], use_cache=[True, False])


def inject_oom(model, monkeypatch, calls: list):
    """model.generate raises torch.OutOfMemoryError for cached batches >= 2 with prompts >= 8; `calls` gets the
    (batch, prompt, use_cache) of every generate."""
    real = model.generate

    def generate(*args, **kwargs):
        batch, prompt = kwargs["input_ids"].shape
        calls.append((batch, prompt, kwargs["use_cache"]))
        if kwargs["use_cache"] and batch >= 2 and prompt >= 8:
            raise torch.OutOfMemoryError(OOM)
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "generate", generate)


def statuses(records) -> dict:
    return {r["scenario_id"]: r["status"] for r in records}


OOM_ID, LARGER_ID = "P8-N2-B2-cache-dynamic-greedy", "P16-N2-B2-cache-dynamic-greedy"


def test_larger_than_needs_every_size_at_least_as_large_and_the_rest_the_same():
    base = Scenario(8, 2, 2)
    assert larger_than(Scenario(16, 2, 2), base) and larger_than(Scenario(8, 4, 2), base)
    assert larger_than(Scenario(8, 2, 4), base) and larger_than(Scenario(16, 4, 4), base)
    assert not larger_than(base, base)  # the same scenario is not larger
    assert not larger_than(Scenario(16, 2, 1), base)  # longer but a smaller batch
    assert not larger_than(Scenario(16, 2, 2, use_cache=False), base)  # other settings
    assert not larger_than(Scenario(16, 2, 2, cache_implementation="static"), base)
    assert not larger_than(Scenario(16, 2, 2, seed=1), base)


def test_skip_larger_records_larger_scenarios_as_skipped_naming_the_oom(tiny_loaded, monkeypatch, tmp_path):
    calls = []
    inject_oom(tiny_loaded.model, monkeypatch, calls)
    records = run_sweep(tiny_loaded, GRID, tmp_path / "run", repeats=1, warmup=0, on_oom="skip-larger")
    got = statuses(records)
    assert got[OOM_ID] == "oom" and got[LARGER_ID] == "skipped"
    assert [s for s in got.values()].count("skipped") == 1  # P16-B1 (smaller batch) and the uncached rows ran
    assert got["P16-N2-B1-cache-dynamic-greedy"] == "ok" and got["P16-N2-B2-nocache-greedy"] == "ok"
    skipped = next(r for r in records if r["status"] == "skipped")
    assert OOM_ID in skipped["error"] and "out of memory" in skipped["error"]
    assert (2, 16, True) not in calls  # the skipped scenario never generated
    on_disk = load_results(tmp_path / "run")
    assert statuses(on_disk.to_dict("records")) == got  # recorded, and read back, as returned
    assert json.loads((tmp_path / "run" / "run.json").read_text())["on_oom"] == "skip-larger"


def test_continue_is_the_default_and_measures_the_larger_scenarios(tiny_loaded, monkeypatch, tmp_path):
    calls = []
    inject_oom(tiny_loaded.model, monkeypatch, calls)
    records = run_sweep(tiny_loaded, GRID, tmp_path / "run", repeats=1, warmup=0)
    assert statuses(records)[LARGER_ID] == "oom" and (2, 16, True) in calls
    assert "skipped" not in statuses(records).values()


def test_resume_keeps_skipped_records_and_skips_after_an_oom_of_the_run_before(tiny_loaded, monkeypatch, tmp_path):
    calls = []
    inject_oom(tiny_loaded.model, monkeypatch, calls)
    run = tmp_path / "run"
    first = run_sweep(tiny_loaded, GRID, run, repeats=1, warmup=0, on_oom="skip-larger")
    assert statuses(first)[LARGER_ID] == "skipped"
    # killed before the skipped record was written: the oom record of the run before still skips it
    lines = (run / "records.jsonl").read_text().splitlines(keepends=True)
    (run / "records.jsonl").write_text("".join(line for line in lines if '"skipped"' not in line))
    calls.clear()
    again = run_sweep(tiny_loaded, None, run, repeats=1, warmup=0, resume=True)  # on_oom: the run's own
    assert calls == [] and statuses(again) == statuses(first)
    assert len(load_results(run)) == len(GRID)


def test_resume_with_continue_measures_the_skipped_scenarios(tiny_loaded, monkeypatch, tmp_path):
    calls = []
    inject_oom(tiny_loaded.model, monkeypatch, calls)
    run = tmp_path / "run"
    run_sweep(tiny_loaded, GRID, run, repeats=1, warmup=0, on_oom="skip-larger")
    monkeypatch.undo()  # the memory is there now
    again = run_sweep(tiny_loaded, None, run, repeats=1, warmup=0, resume=True, on_oom="continue")
    got = statuses(again)
    assert got[LARGER_ID] == "ok" and got[OOM_ID] == "oom"  # oom records stay done; skipped ones are measured
    on_disk = load_results(run)
    assert len(on_disk) == len(GRID) and on_disk["scenario_id"].is_unique


def test_on_oom_is_checked_before_any_work(tiny_loaded, tmp_path):
    with pytest.raises(UserError, match="on_oom must be one of continue, skip-larger, got 'skip'"):
        run_sweep(tiny_loaded, GRID, tmp_path / "run", on_oom="skip")
    assert not (tmp_path / "run").exists()


@pytest.fixture
def cli_oom(monkeypatch):
    """`kvbench run` in this process, its model's generate failing as inject_oom says."""
    real, calls = models_module.load_model, []

    def load_model(*args, **kwargs):
        loaded = real(*args, **kwargs)
        inject_oom(loaded.model, monkeypatch, calls)
        return loaded

    monkeypatch.setattr(models_module, "load_model", load_model)
    return calls


def test_cli_skip_larger_prints_the_skipped_and_resume_with_continue_measures_them(cli_oom, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["run", "--model", "tiny", "--prompt-len", "4,8,16", "--new-tokens", "2", "--batch-size", "1,2",
            "--use-cache", "on", "--repeats", "1", "--warmup", "0"]
    assert main([*args, "--out", str(run), "--on-oom", "skip-larger"]) == 0
    out = capsys.readouterr().out
    assert f"skipped {LARGER_ID}: not run: larger than {OOM_ID}" in out
    assert (2, 16, True) not in cli_oom
    assert main(["run", "--resume", str(run)]) == 0  # the run's --on-oom: nothing to measure
    assert (2, 16, True) not in cli_oom
    capsys.readouterr()
    assert main(["run", "--resume", str(run), "--on-oom", "continue"]) == 0  # asked for: measured again
    assert (2, 16, True) in cli_oom
    got = statuses(load_results(run).to_dict("records"))
    assert got[LARGER_ID] == "oom" and len(got) == 6


@pytest.mark.parametrize("extra, named", [
    (["--on-oom", "skip"], "--on-oom: 'skip' is not one of continue, skip-larger"),
])
def test_cli_refuses_an_on_oom_it_cannot_do(extra, named, tmp_path, capsys):
    assert main(["run", "--out", str(tmp_path / "never"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and named in err
    assert not (tmp_path / "never").exists()


def test_skipped_records_are_read_by_report_and_compare(tiny_loaded, monkeypatch, tmp_path, capsys):
    import pandas as pd

    calls = []
    inject_oom(tiny_loaded.model, monkeypatch, calls)
    run = tmp_path / "run"
    run_sweep(tiny_loaded, grid([4, 8, 16], [2], [1, 2], use_cache=[True]), run, repeats=1, warmup=0,
              on_oom="skip-larger")
    assert main(["report", str(run), "--out", str(tmp_path / "report")]) == 0
    failures = pd.read_csv(tmp_path / "report" / "tables" / "failures.csv")
    assert sorted(failures["status"]) == ["oom", "skipped"]
    assert OOM_ID in failures.loc[failures["status"] == "skipped", "error"].item()
    capsys.readouterr()
    main(["compare", str(run), str(run)])
    assert f"{LARGER_ID} did not run (skipped)" in capsys.readouterr().out

