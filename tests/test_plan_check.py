"""`kvbench plan --check RUN`: measured peaks beside the planner's model recomputed for each record's scenario.

The expected predictions are figures `kvbench run` wrote into the committed run results/cpu-memory (its records'
`peak_allocated_delta_bytes_estimate` for the same scenarios), the measured peaks of the hand-built records are
chosen here, and every error below is worked out by hand from the two."""

import json
import shutil
from pathlib import Path

import pytest

from kvbench.cli.app import main

ROOT = Path(__file__).resolve().parents[1]
CPU_MEMORY = ROOT / "results" / "cpu-memory"

# results/cpu-memory/runs/tiny and runs/gpt2-mha: P256-N8-B2, dynamic cache, greedy, float32
TINY_ESTIMATE = 8_519_680
GPT2_ESTIMATE = 15_728_640


def record(model, **fields):
    base = dict(schema_version=1, model=model, device="cpu", dtype="float32", prompt_len=256, new_tokens=8,
                batch_size=2, use_cache=True, cache_implementation="dynamic", decoding="greedy", num_beams=1,
                status="ok", scenario_id="P256-N8-B2-cache-dynamic-greedy", peak_allocated_phase="prefill")
    return base | fields


@pytest.fixture
def hand_run(tmp_path, monkeypatch):
    """A folder of runs like a committed one: its records name a config by a path relative to the folder above
    the runs, which is not the current folder."""
    repo = tmp_path / "repo"
    (repo / "configs").mkdir(parents=True)
    shutil.copy(CPU_MEMORY / "configs" / "gpt2-mha.json", repo / "configs" / "gpt2.json")
    rows = [
        record("tiny", peak_allocated_delta_bytes=8_000_000, peak_allocated_delta_bytes_estimate=TINY_ESTIMATE),
        record("configs/gpt2.json", peak_allocated_delta_bytes=16_000_000,
               peak_allocated_delta_bytes_estimate=15_000_000),  # a stale stored estimate
        record("tiny", status="oom", scenario_id="P4096-N8-B64-cache-dynamic-greedy"),
        record("tiny", scenario_id="P256-N8-B2-no-peak"),  # ok, but no allocator peak measured
    ]
    run = repo / "runs" / "hand"
    run.mkdir(parents=True)
    (run / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return repo


def test_each_row_is_predicted_and_its_signed_error_worked_out(hand_run, capsys):
    assert main(["plan", "--check", str(hand_run), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    rows = {Path(r["model"]).stem: r for r in out["rows"]}
    assert set(rows) == {"tiny", "gpt2"}  # the oom row and the row without a measured peak left out
    tiny, gpt2 = rows["tiny"], rows["gpt2"]
    assert (tiny["measured_bytes"], tiny["predicted_bytes"], tiny["error_bytes"]) == (8_000_000, 8_519_680, 519_680)
    assert tiny["error"] == pytest.approx(0.06496)  # 519,680 / 8,000,000
    assert tiny["stored_matches"] is True and tiny["note"] == ""
    assert (gpt2["predicted_bytes"], gpt2["error_bytes"]) == (15_728_640, -271_360)
    assert gpt2["error"] == pytest.approx(-0.01696)  # -271,360 / 16,000,000
    assert gpt2["stored_matches"] is False
    assert gpt2["note"] == "stored estimate 15,000,000 B differs from the recomputed one by +728,640 B"
    s = out["summary"]
    assert (s["rows"], s["without_measured_peak"], s["stored_differs"], s["not_predicted"]) == (2, 1, 1, 0)
    assert s["median_abs_error"] == pytest.approx((0.06496 + 0.01696) / 2)
    assert (s["worst_model"], s["worst_error"]) == ("tiny", pytest.approx(0.06496))


def test_the_table_and_the_summary_line(hand_run, capsys):
    assert main(["plan", "--check", str(hand_run)]) == 0
    out = capsys.readouterr().out
    assert out.rstrip().splitlines()[-1] == (
        f"{hand_run}: 2 rows, median |error| 4.10%, worst hand P256-N8-B2-cache-dynamic-greedy (tiny) +6.50%; the "
        "recomputed estimate differs from the record's stored one in 1 rows; 1 ok rows without a measured allocated "
        "peak left out")
    assert "+6.50%" in out and "-1.70%" in out and "+507.5 KiB" in out and "-265.0 KiB" in out


def test_csv_rows_on_stdout_and_the_summary_on_stderr(hand_run, capsys):
    assert main(["plan", "--check", str(hand_run / "runs" / "hand" / "records.jsonl"), "--format", "csv"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].startswith("run,scenario_id,model,dtype,device,measured_bytes,predicted_bytes,error_bytes,error")
    assert len(lines) == 3
    assert ": 2 rows, median |error| 4.10%" in captured.err


def test_the_committed_cpu_memory_run(capsys):
    assert main(["plan", "--check", str(CPU_MEMORY), "--format", "json"]) == 0
    s = json.loads(capsys.readouterr().out)["summary"]
    assert (s["rows"], s["not_predicted"]) == (14, 0)
    import transformers

    made_with = {json.loads(line)["env_transformers"] for path in CPU_MEMORY.glob("runs/*/records.jsonl")
                 for line in path.read_text().splitlines()}
    if made_with == {transformers.__version__}:
        # docs/planning.md: 14 scenarios, the worst multi-head latent attention's +6.20%; every stored estimate holds
        # (on another release the model's default attention can differ, and the check says which rows it moves)
        assert s["stored_differs"] == 0
        assert (s["worst_run"], round(s["worst_error"], 4)) == ("deepseek-v3-mla-moe", 0.0620)


@pytest.mark.parametrize("name, message", [
    ("missing", "no such file or folder"),
    ("empty", "no records.jsonl in this folder or below it"),
    ("notes.txt", "not a run folder or records .jsonl file"),
])
def test_a_bad_run_is_refused_in_one_line_leaving_nothing(tmp_path, capsys, name, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not records\n")
    before = sorted(tmp_path.rglob("*"))
    assert main(["plan", "--check", str(tmp_path / name)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"kvbench: error: --check {tmp_path / name}: {message}"
    assert sorted(tmp_path.rglob("*")) == before


def test_check_takes_no_planning_options(capsys):
    assert main(["plan", "--check", str(CPU_MEMORY), "--model", "tiny"]) == 2
    assert "--check RUN compares a run with the planner's model" in capsys.readouterr().err


def test_the_attention_the_run_selected_is_the_one_checked():
    """A model loaded with eager attention (the scores materialized) where the class default is SDPA: the record
    names it, and the check recomputes the estimate the run stored; without the field (older records) the class
    default is taken, and the recomputed figure differs from the stored one, which the row says."""
    import copy

    import kvbench
    from kvbench.inputs.configs import resolve_spec
    from kvbench.plan.check import check_row

    config = copy.deepcopy(resolve_spec("tiny")[1])
    config._attn_implementation = "eager"
    loaded = kvbench.load_model(config, device="cpu")
    record = kvbench.measure(loaded, kvbench.Scenario(prompt_len=128, new_tokens=2), repeats=1, warmup=0)
    assert record["attn_implementation"] == loaded.model.config._attn_implementation == "eager"
    row = check_row(record, lambda spec: config)
    assert row["stored_matches"] and row["predicted_bytes"] == record["peak_allocated_delta_bytes_estimate"]
    older = check_row({k: v for k, v in record.items() if k != "attn_implementation"}, lambda spec: config)
    assert not older["stored_matches"] and older["predicted_bytes"] < row["predicted_bytes"]
