"""Bad input: one line naming the bad value (exit 2 on the CLI, a ValueError subclass naming the argument in the
API), checked before any work starts -- output folders before the model loads, figure formats before the plan."""

import errno
import json

import pytest

import kvbench
from kvbench import UserError
from kvbench.cli.app import main
from kvbench.inputs.scenario import CACHE_IMPLEMENTATIONS, DEPRECATED_CACHES


def one_error_line(capsys, *needles):
    out, err = capsys.readouterr()
    assert err.startswith("kvbench: error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err
    return out


@pytest.fixture
def no_model_load(monkeypatch):
    import kvbench.measuring.loading.models as models

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


# ------------------------------------------------------------------ model specs: config files and folders
@pytest.mark.parametrize("content, message", [
    (b"{not json", "not a JSON config file"),
    (b"\xff\xfe{}", "not a JSON config file"),
    (b'["llama"]', "not a model config (a JSON list, not an object)"),
    (b'{"hidden_size": 64}', "not a model config (no 'model_type' field)"),
    (b'{"model_type": "no-such-arch"}', "unknown model_type 'no-such-arch'"),
], ids=["not-json", "not-utf8", "array", "no-model-type", "unknown-type"])
def test_a_bad_config_file_is_one_line_naming_it(tmp_path, capsys, content, message):
    from kvbench.inputs.configs import resolve_spec

    path = tmp_path / "config.json"
    path.write_bytes(content)
    with pytest.raises(UserError) as info:
        resolve_spec(str(path))
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_bytes(content)  # the same config in a model folder
    assert main(["plan", "--model", str(tmp_path / "model"), "--gpu", "t4"]) == 2
    one_error_line(capsys, "config.json", message)


def test_a_folder_without_config_is_refused(tmp_path, capsys):
    assert main(["plan", "--model", str(tmp_path), "--gpu", "t4"]) == 2
    one_error_line(capsys, f"{tmp_path}: folder has no config.json")


def test_a_custom_code_folder_is_refused_without_trust_remote_code(tmp_path):
    from kvbench.inputs.configs import resolve_spec

    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "my_own_model", "auto_map": {"AutoConfig": "configuration_mine.MyConfig"}}))
    (tmp_path / "configuration_mine.py").write_text("raise SystemExit('this code must never run')\n")
    with pytest.raises(UserError, match=r"is the folder's own code \(auto_map\); kvbench runs no code from a model "
                                        "unless you pass --trust-remote-code"):
        resolve_spec(str(tmp_path))


def test_a_folder_with_only_pickle_weights_is_refused_and_never_unpickled(tmp_path, monkeypatch, capsys):
    import torch
    from tiny_models import llama_config

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", no_unpickling)
    llama_config().save_pretrained(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"benign but pickled")
    with pytest.raises(UserError, match=r"its weights are pickle files \(pytorch_model.bin\), which kvbench never "
                                        "loads"):
        kvbench.load_model(str(tmp_path), device="cpu")
    assert main(["run", "--model", str(tmp_path), "--out", str(tmp_path / "run")]) == 2
    one_error_line(capsys, "pytorch_model.bin")
    assert not (tmp_path / "run").exists()


def test_a_folder_with_safetensors_loads_its_weights(tmp_path):
    import torch
    from tiny_models import llama_config
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(llama_config()).save_pretrained(tmp_path)
    (tmp_path / "stray.bin").write_bytes(b"never read")  # beside safetensors a pickle file is ignored
    loaded = kvbench.load_model(str(tmp_path), device="cpu", dtype="float32")
    saved = AutoModelForCausalLM.from_pretrained(tmp_path, use_safetensors=True)
    assert loaded.source == "local weights"
    assert torch.equal(loaded.model.lm_head.weight, saved.lm_head.weight)


# ------------------------------------------------------------------ the API: a ValueError naming the argument
@pytest.mark.parametrize("kwargs, named", [
    (dict(use_cache="no"), "use_cache must be True or False, got 'no'"),
    (dict(use_cache=1), "use_cache must be True or False, got 1"),
    (dict(seed="x"), "seed must be an integer >= 0, got 'x'"),
    (dict(seed=-1), "seed must be an integer >= 0, got -1"),
    (dict(decoding=["greedy"]), "decoding must be one of greedy, sample, beam, got ['greedy']"),
    (dict(cache_implementation=None), f"cache_implementation must be one of {', '.join(CACHE_IMPLEMENTATIONS)} "
                                      f"(or a deprecated name: {', '.join(DEPRECATED_CACHES)}), got None"),
    (dict(prompt_len="8"), "prompt_len must be a positive integer, got '8'"),
], ids=["use_cache-str", "use_cache-int", "seed-str", "seed-negative", "decoding-list", "cache-none", "prompt-str"])
def test_scenario_refuses_wrong_values_naming_the_argument(kwargs, named):
    with pytest.raises(ValueError) as info:
        kvbench.Scenario(**({"prompt_len": 8, "new_tokens": 2} | kwargs))
    assert isinstance(info.value, UserError) and str(info.value) == named


@pytest.mark.parametrize("scenarios, kwargs, named", [
    ("GRID", dict(repeats=0), "repeats must be an integer >= 1, got 0"),
    ("GRID", dict(repeats="3"), "repeats must be an integer >= 1, got '3'"),
    ("GRID", dict(warmup=-1), "warmup must be an integer >= 0, got -1"),
    ([], {}, "scenarios: the list is empty (nothing to measure)"),
    ("P8-N2", {}, "scenarios must be a list of kvbench.Scenario, got str"),
    ([{"prompt_len": 8}], {}, "scenarios must be kvbench.Scenario objects, got {'prompt_len': 8}"),
    (None, {}, "scenarios: None is only allowed with resume=True"),
], ids=["repeats-0", "repeats-str", "warmup-negative", "empty", "string", "dicts", "none"])
def test_run_sweep_refuses_wrong_arguments_before_any_work(tiny_loaded, tmp_path, scenarios, kwargs, named):
    if scenarios == "GRID":
        scenarios = kvbench.grid([4], [2], use_cache=[True])
    with pytest.raises(ValueError) as info:
        kvbench.run_sweep(tiny_loaded, scenarios, tmp_path / "run", **kwargs)
    assert isinstance(info.value, UserError) and str(info.value).startswith(named)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("overhead", [-1, True, "-5MiB"])
def test_plan_capacity_refuses_a_negative_overhead(overhead):
    with pytest.raises(UserError, match=rf"--overhead: {overhead!r} is not a memory size"):
        kvbench.plan_capacity("tiny", "t4", overhead=overhead)


# ------------------------------------------------------------------ the console: data is never markup
def test_paths_with_rich_markup_are_printed_as_text(tiny_config_file, tmp_path, capsys, monkeypatch):
    from pathlib import Path

    monkeypatch.chdir(tmp_path)  # short relative paths: table cells do not wrap them
    folder = Path("m[")
    folder.mkdir()
    model = folder / "]x.json"  # the path holds "[/]", a closing tag with nothing to close
    model.write_text(tiny_config_file.read_text())
    run = Path("r[bold]")
    assert main(["run", "--model", str(model), "--prompt-len", "4", "--new-tokens", "2", "--batch-size", "1",
                 "--repeats", "1", "--warmup", "0", "--out", str(run)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"{model} (config.json (random weights))" in out and f"records: {run / 'records.jsonl'}" in out
    assert main(["compare", str(run), str(run), "--gate", "none"]) == 0
    assert "r[bold] #2" in capsys.readouterr().out
    assert main(["plan", "--model", str(model), "--gpu", "t4", "--batch-sizes", "1", "--contexts", "64",
                 "--new-tokens", "8"]) == 0
    assert f"{model} in float16" in capsys.readouterr().out


def test_plan_markdown_escapes_a_model_path(tiny_config_file, tmp_path, capsys):
    folder = tmp_path / "<b>"
    folder.mkdir()
    model = folder / "x|y.json"
    model.write_text(tiny_config_file.read_text())
    assert main(["plan", "--model", str(model), "--gpu", "t4", "--batch-sizes", "1", "--contexts", "64",
                 "--new-tokens", "8", "--format", "markdown"]) == 0
    out = capsys.readouterr().out
    assert "<b>" not in out and "&lt;b&gt;/x\\|y.json in float16" in out


# ------------------------------------------------------------------ typer's own messages quote the value
@pytest.mark.parametrize("args, quoted", [
    (["run", "--repeats", "abc"], "Invalid value for '--repeats': Input should be a valid integer"),
    (["plan", "--model", "tiny", "--num-beams", "1.5"], "Invalid value for '--num-beams'"),
    (["plan", "--model", "tiny", "--bandwidth-gbps", "fast"], "Invalid value for '--bandwidth-gbps'"),
], ids=["int", "int-from-float", "float"])
def test_typer_errors_quote_the_bad_value(capsys, args, quoted):
    assert main(args) == 2
    bad = args[-1]
    one_error_line(capsys, quoted, f"'{bad}'")
