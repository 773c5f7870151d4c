"""The memory pre-check: weights that cannot fit the device's free memory are refused in one line, before
anything is built (a fake small device: the free-memory reader is monkeypatched)."""

from __future__ import annotations

import pytest
import torch

from kvbench.cli.app import main
from kvbench.errors import UserError
from kvbench.estimate.weights import param_count
from kvbench.measuring.loading import fits, models


@pytest.fixture
def small_device(monkeypatch):
    """A device with `free` bytes free; building a model on it fails the test."""
    state = {"free": 256 * 1024}
    monkeypatch.setattr(fits, "free_memory_bytes", lambda device: (state["free"], "available RAM"))

    def never(*args, **kwargs):
        raise AssertionError("the model was built although its weights cannot fit")

    monkeypatch.setattr(models, "random_model", never)
    return state


def test_weights_over_free_memory_exit_2_in_one_line(small_device, tiny_config_file, tmp_path, capsys):
    from tiny_models import llama_config

    weights = param_count(llama_config()) * 4
    assert weights > small_device["free"]
    code = main(["run", "--model", str(tiny_config_file), "--prompt-len", "16", "--new-tokens", "4",
                 "--out", str(tmp_path / "never")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert f"needs {weights / 1024:.1f} KiB for its weights in float32" in err
    assert "available RAM is 256.0 KiB" in err and "--dtype bfloat16" in err
    assert not (tmp_path / "never").exists()


def test_a_preset_that_does_not_fit_is_refused_before_it_is_built(small_device):
    small_device["free"] = 4 * 2**30
    with pytest.raises(UserError, match=r"phi-3-mini-4k needs 14\.\d GiB for its weights in float32, but the "
                                        r"available RAM is 4\.0 GiB"):
        models.load_model("phi-3-mini-4k", device="cpu", dtype="float32")
    with pytest.raises(UserError, match=r"needs 7\.\d GiB for its weights in bfloat16") as info:
        models.load_model("phi-3-mini-4k", device="cpu", dtype="bfloat16")
    assert "--dtype" not in str(info.value)  # already a half dtype: no such hint


def test_weights_that_just_fit_pass(small_device):
    from tiny_models import llama_config

    config = llama_config()
    small_device["free"] = param_count(config) * 4  # exactly enough
    assert fits.check_weights_fit("tiny", config, torch.device("cpu"), torch.float32) == param_count(config) * 4


def test_free_memory_readers(monkeypatch):
    import psutil

    free, what = fits.free_memory_bytes(torch.device("cpu"))
    assert what == "available RAM" and 0 < free <= psutil.virtual_memory().total
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (3 * 2**30, 80 * 2**30))
    assert fits.free_memory_bytes(torch.device("cuda:0")) == (3 * 2**30, "free GPU memory on cuda:0")
