"""The CLI: a real sweep on a config file, and refusals (one line, exit code 2) before anything runs."""

import pytest

from kvbench.cli.app import main


def test_run_writes_a_run_folder(tiny_config_file, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", "--model", str(tiny_config_file), "--prompt-len", "8,16", "--new-tokens", "3",
                 "--batch-size", "1", "--repeats", "1", "--warmup", "0", "--out", str(out)])
    assert code == 0
    assert len((out / "records.jsonl").read_text().splitlines()) == 4
    text = capsys.readouterr().out
    assert "speedup" in text and "records:" in text


@pytest.mark.parametrize(
    "args, named",
    [
        (["--prompt-len", "0"], "'0'"),
        (["--prompt-len", "-5"], "'-5'"),
        (["--new-tokens", "abc"], "'abc'"),
        (["--batch-size", "2,x"], "'x'"),
        (["--model", "no-such-model"], "no-such-model"),
        (["--dtype", "float8"], "float8"),
        (["--use-cache", "maybe"], "maybe"),
        (["--cache-implementation", "pagedd"], "pagedd"),
        (["--prompt-len", "100", "--new-tokens", "64"], "164"),
        (["--repeats", "0"], "--repeats"),
        (["--device", "tpu"], "tpu"),
        (["--bogus-option"], "--bogus-option"),
    ],
)
def test_bad_input_is_refused_in_one_line(tiny_config_file, tmp_path, capsys, args, named):
    argv = ["run", "--out", str(tmp_path / "never")]
    if "--model" not in args:
        argv += ["--model", str(tiny_config_file)]
    code = main(argv + args)
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("kvbench: error:") and named in err
    assert not (tmp_path / "never").exists()


def test_presets_lists_kv_bytes_per_token(capsys):
    assert main(["presets"]) == 0
    text = capsys.readouterr().out
    assert "tiny" in text and "phi-3-mini-4k" in text and "KV / token" in text


def test_unreachable_hub_is_one_line_with_the_bundled_preset(monkeypatch, tmp_path, capsys):
    import huggingface_hub.constants as hub_constants
    import transformers

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)  # kvbench's probe sends no request

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files.\nCheck your connection.")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", offline)
    code = main(["run", "--model", "microsoft/Phi-3-mini-4k-instruct", "--out", str(tmp_path / "never")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "cannot load 'microsoft/Phi-3-mini-4k-instruct'" in err and "--model phi-3-mini-4k" in err
