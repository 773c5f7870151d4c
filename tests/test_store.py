"""Records on disk: a killed writer's half-written last line is skipped with a warning naming file and line (by
load_results and every reader); anything else that is not a record is refused with one line naming file and line."""

import json

import pytest
import synthetic_runs

from kvbench import UserError, load_results
from kvbench.cli.app import main
from kvbench.results.schema import SCHEMA_VERSION
from kvbench.results.store import PartialLineWarning, RunWriter, read_jsonl, repair_tail


def a_run(tmp_path, n=2):
    """A run folder with `n` synthetic records (a cached/uncached pair each) and their lines."""
    records = synthetic_runs.grid(prompts=(16,), news=(8,), batches=tuple(range(1, n // 2 + 1)))
    run = synthetic_runs.write_run(tmp_path / "run", records)
    return run, (run / "records.jsonl").read_bytes().splitlines(keepends=True)


def torn(run, lines, cut=25):
    """The records file as a writer killed in the middle of its last line leaves it."""
    (run / "records.jsonl").write_bytes(b"".join(lines[:-1]) + lines[-1][:cut])


def test_a_half_written_last_line_is_skipped_with_its_line_number(tmp_path):
    run, lines = a_run(tmp_path, 4)
    torn(run, lines)
    with pytest.warns(PartialLineWarning, match=rf"records.jsonl:{len(lines)}: skipped a half-written last line"):
        df = load_results(run)
    assert len(df) == len(lines) - 1  # every complete record kept


def test_a_last_record_that_lost_only_its_newline_is_kept(tmp_path, recwarn):
    run, lines = a_run(tmp_path)
    (run / "records.jsonl").write_bytes(b"".join(lines)[:-1])
    assert len(load_results(run)) == len(lines)
    assert not [w for w in recwarn if issubclass(w.category, PartialLineWarning)]


@pytest.mark.parametrize("command", [
    ["report", "{run}", "--out", "{tmp}/report"],
    ["compare", "{run}", "{run}"],
    ["plan", "--model", "tiny", "--gpu", "t4", "--batch-sizes", "1", "--contexts", "64", "--calibrate", "{run}"],
], ids=["report", "compare", "plan-calibrate"])
def test_every_reader_skips_the_half_written_line_and_says_so(tmp_path, capsys, command):
    run, lines = a_run(tmp_path)
    torn(run, lines)
    rc = main([arg.format(run=run, tmp=tmp_path) for arg in command])
    err = capsys.readouterr().err
    # plan --calibrate refuses these records (no allocator peak, NVML or bandwidth), with a line of its own after the
    # warning
    assert rc == 0 or "nothing to calibrate" in err, err
    assert f"kvbench: warning: {run / 'records.jsonl'}:{len(lines)}: skipped a half-written last line" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("middle, message", [
    (b"{not json\n", "not a JSON line"),
    (b'["a", "list"]\n', "a JSON array where a record (a JSON object) belongs"),
    (b'{"model": "t\xff\xfe", "prompt_len": 1}\n', "not UTF-8 text"),
    (b'{"hello": "world"}\n', "not a kvbench record (no 'model' or 'prompt_len' field)"),
    (json.dumps({"model": "m", "prompt_len": 8, "schema_version": SCHEMA_VERSION + 1}).encode() + b"\n",
     f"written by a newer kvbench (schema_version {SCHEMA_VERSION + 1}"),
    (b'{"model": "m", "prompt_len": 8, "schema_version": "one"}\n', "schema_version 'one' is not"),
], ids=["not-json", "array", "not-utf8", "not-a-record", "future-schema", "bad-schema"])
def test_a_bad_complete_line_is_one_error_naming_file_and_line(tmp_path, capsys, middle, message):
    run, lines = a_run(tmp_path)
    (run / "records.jsonl").write_bytes(lines[0] + middle + lines[1])
    with pytest.raises(UserError) as info:
        load_results(run)
    assert str(info.value).startswith(f"{run / 'records.jsonl'}:2: ") and message in str(info.value)
    assert main(["report", str(run), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kvbench: error: ") and err.count("\n") == 1 and ":2: " in err


def test_a_bad_last_line_that_is_complete_json_is_refused_not_skipped(tmp_path):
    run, lines = a_run(tmp_path)
    (run / "records.jsonl").write_bytes(lines[0] + b"[1, 2]")  # no newline, but whole: not a killed writer
    with pytest.raises(UserError, match=r"records.jsonl:2: a JSON array"):
        load_results(run)


@pytest.mark.parametrize("text, message", [
    ('{"model": "m", "schema_version": 1}', "not a pytest-benchmark JSON file (no 'benchmarks' list)"),
    ("", "not JSON"),
], ids=["run-json", "empty"])
def test_json_files_that_are_not_records_are_refused(tmp_path, text, message):
    path = tmp_path / "run.json"
    path.write_text(text)
    with pytest.raises(UserError) as info:
        load_results(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)


def test_a_benchmark_json_of_a_newer_schema_is_refused(tmp_path):
    records = synthetic_runs.grid(prompts=(16,), news=(8,), batches=(1,))
    for rec in records:
        rec["schema_version"] = SCHEMA_VERSION + 1
    path = synthetic_runs.write_benchmark_json(tmp_path / "bench.json", records)
    with pytest.raises(UserError, match=rf"^{path}: kvbench benchmark 1 .*written by a newer kvbench"):
        load_results(path)


def test_missing_paths_and_other_files_are_one_line(tmp_path):
    with pytest.raises(UserError, match="no such file or folder"):
        load_results(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(UserError, match="not a run folder, records.jsonl or pytest-benchmark JSON file"):
        load_results(tmp_path / "notes.txt")


def test_repair_tail_cuts_a_half_written_line_and_completes_a_whole_one(tmp_path):
    path = tmp_path / "records.jsonl"
    path.write_bytes(b'{"model": "m", "prompt_len": 1}\n{"model": "m", "pro')
    with pytest.warns(PartialLineWarning, match="records.jsonl:2: removed a half-written last line"):
        repair_tail(path)
    assert path.read_bytes() == b'{"model": "m", "prompt_len": 1}\n'
    path.write_bytes(b'{"model": "m", "prompt_len": 1}')
    repair_tail(path)
    assert path.read_bytes() == b'{"model": "m", "prompt_len": 1}\n'
    assert len(read_jsonl(path)) == 1


def test_a_new_run_refuses_a_folder_holding_a_run(tmp_path):
    run, _ = a_run(tmp_path)
    before = (run / "run.json").read_text()
    with pytest.raises(UserError, match=r"already holds a run; continue it with --resume .* or write to another"):
        RunWriter(run, {"model": "other"})
    assert (run / "run.json").read_text() == before  # run.json not overwritten


def test_a_second_writer_of_one_folder_is_refused_until_the_first_closes(tmp_path):
    with RunWriter(tmp_path / "run", {"model": "m"}) as first:
        with pytest.raises(UserError, match=r"another kvbench process \(pid \d+\) is writing this run folder"):
            RunWriter(tmp_path / "run", resume=True)
        first.write({"model": "m", "prompt_len": 1})
    with RunWriter(tmp_path / "run", resume=True) as again:  # the lock went with the first writer
        assert again.info == {"model": "m"} and len(again.records()) == 1


@pytest.mark.parametrize("where", ["file", "proc", "unwritable"])
def test_a_folder_that_cannot_be_written_is_one_error(tmp_path, where):
    if where == "file":
        out = tmp_path / "taken"
        out.write_text("x")
    elif where == "proc":
        out = "/proc/kvbench-run"
    else:  # a regular file where a parent folder should be: refused for root too (root writes anywhere else)
        (tmp_path / "plain").write_text("x")
        out = tmp_path / "plain" / "run"
    with pytest.raises(UserError, match=rf"^{out}: (exists and is not a folder|cannot write the run folder there)"):
        RunWriter(out, {"model": "m"})
