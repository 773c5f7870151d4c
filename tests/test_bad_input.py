"""Bad input: one line naming the bad value (exit 2 on the CLI, a ValueError subclass naming the argument in the
API), checked before any work starts -- output folders before the model loads, figure formats before the plan."""

import errno

import pytest

from kvbench import UserError
from kvbench.cli.app import main


def one_error_line(capsys, *needles):
    out, err = capsys.readouterr()
    assert err.startswith("kvbench: error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err
    return out


@pytest.fixture
def no_model_load(monkeypatch):
    import kvbench.measuring.models as models

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was refused")

    monkeypatch.setattr(models, "load_model", refuse)


@pytest.mark.parametrize("where", ["file", "proc"])
def test_run_checks_its_folder_before_loading_the_model(tiny_config_file, tmp_path, capsys, no_model_load, where):
    out = tmp_path / "taken" if where == "file" else "/proc/kvbench-run"
    if where == "file":
        out.write_text("x")
    assert main(["run", "--model", str(tiny_config_file), "--out", str(out)]) == 2
    one_error_line(capsys, str(out), "exists and is not a folder" if where == "file" else "cannot write")


def test_a_refused_run_leaves_no_folder(tiny_config_file, tmp_path, capsys):
    assert main(["run", "--model", str(tiny_config_file), "--prompt-len", "200", "--out", str(tmp_path / "r")]) == 2
    one_error_line(capsys, "232", "context of 128 tokens")
    assert not (tmp_path / "r").exists()


def test_a_record_that_cannot_be_written_is_one_error(tmp_path, monkeypatch):
    import kvbench.results.store as store

    writer = store.RunWriter(tmp_path / "run", {"model": "m"})

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(store.os, "fsync", full)
    with pytest.raises(UserError, match=r"records.jsonl: cannot write a record \(No space left on device\)"):
        writer.write({"model": "m", "prompt_len": 1})
    writer.close()


@pytest.mark.parametrize("args, named", [
    (["report", "{run}", "--out", "/proc/kvbench-report"], "--out /proc/kvbench-report: cannot write there"),
    (["report", "{run}", "--out", "{run}/records.jsonl"], "records.jsonl: exists and is not a folder"),
    (["compare", "{run}", "{run}", "--out", "/proc/kvbench-compare"], "--out /proc/kvbench-compare: cannot write"),
], ids=["report-proc", "report-file", "compare-proc"])
def test_report_and_compare_check_their_out_folder_first(tmp_path, capsys, args, named):
    import synthetic_runs

    run = synthetic_runs.write_run(tmp_path / "run", synthetic_runs.grid(prompts=(16,), news=(8,), batches=(1,)))
    assert main([a.format(run=run) for a in args]) == 2
    out = one_error_line(capsys, named.format(run=run))
    assert out == ""  # nothing printed before the refusal (compare prints its table only after the check)


@pytest.mark.parametrize("figure, named", [
    ("fig.xyz", ".xyz is not a format it can write"),
    ("fig", "no suffix is not a format it can write"),
    ("/proc/kvbench/fig.png", "cannot write there"),
], ids=["format", "no-suffix", "folder"])
def test_plan_refuses_a_figure_it_cannot_write_before_printing_the_plan(tmp_path, capsys, figure, named):
    assert main(["plan", "--model", "tiny", "--gpu", "t4", "--figure", figure]) == 2
    assert one_error_line(capsys, f"--figure {figure}", named) == ""


def test_plan_writes_a_figure_of_a_known_format(tmp_path, capsys):
    figure = tmp_path / "new" / "fig.svg"
    assert main(["plan", "--model", "tiny", "--gpu", "t4", "--batch-sizes", "1", "--contexts", "64",
                 "--new-tokens", "8", "--figure", str(figure)]) == 0
    assert figure.read_text().startswith("<?xml")


def test_the_folder_check_leaves_nothing_behind(tmp_path):
    from kvbench.cli.common import check_writable_folder

    check_writable_folder("--out", tmp_path / "a" / "b")
    assert list(tmp_path.iterdir()) == []
