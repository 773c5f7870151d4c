"""Tiny models built from config objects: nothing in the test suite downloads anything."""

import json

import pytest
import torch
from tiny_models import llama_config

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_loaded():
    import kvbench

    torch.manual_seed(0)
    return kvbench.load_model(llama_config(), device="cpu", dtype="float32")


@pytest.fixture
def tiny_config_file(tmp_path):
    """A config.json on disk (the CLI's model spec for a random-weights model)."""
    path = tmp_path / "tiny-llama.json"
    path.write_text(json.dumps(llama_config().to_dict()))
    return path
