"""Bad input refused in one line before any work: devices torch cannot give, a Hub that cannot be reached (one
request, no retries), lengths beyond the context named by their options, lists and grids too long, counts too
large, sampling values that are not finite."""

from __future__ import annotations

import socket
import time

import huggingface_hub.constants as hub_constants
import pytest
import torch

import kvbench.measuring.loading.models as models_module
from kvbench.cli.app import main
from kvbench.errors import UserError
from kvbench.inputs.lists import int_list
from kvbench.inputs.decoding import SamplingAxes
from kvbench.inputs.scenario import grid
from kvbench.measuring.loading.models import resolve_device


def one_error_line(capsys, *needles) -> str:
    err = capsys.readouterr().err
    assert err.startswith("kvbench: error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture
def no_model_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the bad input was refused")

    monkeypatch.setattr(models_module, "load_model", refuse)


@pytest.fixture
def gpus(monkeypatch):
    """torch sees `n` CUDA GPUs (set gpus(n)); nothing else of CUDA is touched before the refusal."""
    def see(n: int):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)

    return see


@pytest.mark.parametrize("device, n, named", [
    ("cuda:7", 2, "device 'cuda:7': torch sees 2 CUDA GPUs (cuda:0 to cuda:1"),
    ("cuda:1", 1, "device 'cuda:1': torch sees 1 CUDA GPU (cuda:0"),
    ("cuda:0", 0, "device 'cuda:0' asked for, but torch sees no CUDA GPU"),
    ("cuda", 0, "device 'cuda' asked for, but torch sees no CUDA GPU"),
    ("mps", 0, "device 'mps' is not supported"),
    ("gpu0", 1, "unknown device 'gpu0'"),
    ("cuda:-1", 1, "unknown device 'cuda:-1'"),
    ("cpu:1", 0, "device 'cpu:1': the CPU has no index"),
])
def test_a_device_torch_cannot_give_is_refused_before_any_work(device, n, named, gpus, no_model_load, tmp_path,
                                                               capsys):
    gpus(n)
    assert main(["run", "--device", device, "--out", str(tmp_path / "never")]) == 2
    one_error_line(capsys, named)
    assert not (tmp_path / "never").exists()
    with pytest.raises(UserError, match="device"):  # the API says the same
        resolve_device(device)


def test_a_device_torch_has_is_taken(gpus):
    gpus(8)
    assert resolve_device("cuda:7") == torch.device("cuda", 7)
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.fixture
def dead_hub(monkeypatch):
    """No network: every connection fails as a failed DNS lookup does (no request leaves this machine), the error
    huggingface_hub retries 5 times with sleeps of 1 to 8 s (ten connection attempts for one config). Counts the
    connection attempts and the sleeps."""
    seen = {"connections": 0, "sleeps": 0}

    def create_connection(address, *args, **kwargs):
        seen["connections"] += 1
        raise socket.gaierror(-2, "Name or service not known")

    def sleep(seconds):
        seen["sleeps"] += 1

    monkeypatch.setattr(socket, "create_connection", create_connection)
    monkeypatch.setattr(time, "sleep", sleep)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    return seen


def test_an_unreachable_hub_is_one_line_after_one_request(dead_hub, no_model_load, tmp_path, capsys):
    started = time.monotonic()
    assert main(["run", "--model", "nobody/nothing-here", "--out", str(tmp_path / "never")]) == 2
    # one request for the config (and at most one of the Hub client's agent detection), no retries
    assert dead_hub["connections"] <= 2 and dead_hub["sleeps"] == 0
    one_error_line(capsys, "cannot load 'nobody/nothing-here': the Hugging Face Hub cannot be reached",
                   "the local Hub cache has no copy")
    assert time.monotonic() - started < 10
    assert not (tmp_path / "never").exists()


def test_offline_mode_sends_no_request(dead_hub, no_model_load, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    assert main(["run", "--model", "nobody/nothing-here", "--out", str(tmp_path / "never")]) == 2
    one_error_line(capsys, "cannot load 'nobody/nothing-here'", "offline mode")
    assert dead_hub == {"connections": 0, "sleeps": 0}


def test_an_unreachable_hub_uses_the_local_cache(dead_hub, monkeypatch):
    import transformers

    from kvbench.inputs.configs import resolve_spec
    from tiny_models import llama_config

    asked = []

    def from_pretrained(spec, **kwargs):
        asked.append(kwargs.get("local_files_only", False))
        if not kwargs.get("local_files_only"):
            raise AssertionError("asked the unreachable Hub again")
        return llama_config()

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", from_pretrained)
    name, config, source, weights = resolve_spec("someone/cached-model")
    assert (name, source, weights) == ("someone/cached-model", "hub", "someone/cached-model")
    assert asked == [True] and dead_hub["connections"] <= 2 and dead_hub["sleeps"] == 0


def test_lengths_beyond_the_context_name_the_options_before_loading(no_model_load, tmp_path, capsys):
    assert main(["run", "--prompt-len", "16,99999999", "--new-tokens", "32", "--out", str(tmp_path / "never")]) == 2
    one_error_line(capsys, "--prompt-len 99999999 + --new-tokens 32 = 100000031 tokens, beyond tiny's context of "
                           "2048 tokens")
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("args, named", [
    (["--prompt-len", ",".join(map(str, range(1, 1502)))], "--prompt-len: 1,501 values, more than the 1,000"),
    (["--prompt-len", "9" * 40], "--prompt-len: " + "9" * 40 + " exceeds tiny's context of 2,048 tokens "
                                  "(max_position_embeddings)"),
    (["--new-tokens", "16,00" + "9" * 20], "--new-tokens: " + "9" * 20 + " exceeds tiny's context of 2,048 tokens"),
    (["--prompt-len", "9" * 5000], "--prompt-len: " + "9" * 20 + "... (5,000 digits) exceeds tiny's context of 2,048"),
    (["--batch-size", "9" * 40], "--batch-size: '" + "9" * 40 + "' is too large (more than 18 digits)"),
    (["--batch-size", "9" * 5000], "--batch-size: '" + "9" * 60 + "'... is too large (more than 18 digits)"),
    (["--batch-size", "²"], "--batch-size: '²' is not a positive integer"),
    (["--prompt-len", ",".join(map(str, range(1, 501))), "--new-tokens", ",".join(map(str, range(1, 401)))],
     "the grid has 400,000 scenarios (500 prompt lengths x 400 new-token counts x 2 batch sizes x 1 cache settings"),
    (["--repeats", "10000000"], "--repeats: 10,000,000 is more than the 10,000 a scenario takes"),
    (["--warmup", "99999999999"], "--warmup: 99,999,999,999 is more than the 10,000"),
    (["--decoding", "sample", "--temperature", "inf"], "--temperature: 'inf' is not a finite number"),
    (["--decoding", "sample", "--top-p", "nan"], "--top-p: 'nan' is not a finite number"),
    (["--decoding", "sample", "--top-k", "-1"], "--top-k: '-1' is not an integer >= 0"),
    (["--decoding", "beam", "--num-beams", "1"], "--num-beams 1: beam search (--decoding beam) needs num_beams >= 2"),
    (["--decoding", "beam", "--num-beams", "0"], "--num-beams: '0' is not a positive integer"),
    (["--engine", "reference", "--decoding", "beam"], "no scenario to run (the reference engine decodes greedy and"),
])
def test_huge_and_bad_values_are_one_line_before_any_work(args, named, no_model_load, tmp_path, capsys):
    assert main(["run", "--use-cache", "on", *args, "--out", str(tmp_path / "never")]) == 2
    one_error_line(capsys, named)
    assert not (tmp_path / "never").exists()


def test_error_lines_quote_long_lists_short():
    text = "x" * 5000
    with pytest.raises(UserError) as info:
        int_list("--prompt-len", text)
    assert len(str(info.value)) < 200


def test_the_grid_size_is_checked_before_the_grid_is_built():
    with pytest.raises(UserError, match="the grid has 1,000,000,000 scenarios"):
        grid([1], [1], [1], use_cache=[True], decodings=["sample"], sampling=SamplingAxes(
            [0.1 * i for i in range(1, 1001)], list(range(1000)), [i / 1000 for i in range(1, 1001)]))


def test_an_empty_model_name_is_refused_not_read_as_this_folder(no_model_load, tmp_path, capsys):
    assert main(["run", "--model", "", "--out", str(tmp_path / "never")]) == 2
    one_error_line(capsys, "model '': give a preset")


def test_steps_refuses_an_infinite_temperature_in_one_line(capsys):
    assert main(["steps", "--model", "tiny", "--prompt-len", "8", "--new-tokens", "2", "--decoding", "sample",
                 "--temperature", "inf"]) == 2
    one_error_line(capsys, "temperature must be a finite number > 0, got inf")
