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


@pytest.fixture
def pytester(pytester, monkeypatch):
    """pytester's in-process inner sessions, outside of pytest-xdist even when this session runs under it.

    An xdist worker has PYTEST_XDIST_WORKER in its environment; the inner session inherits os.environ, and
    pytest-benchmark reads that variable as "I am an xdist worker": it disables benchmarks (stats None, no JSON
    written), and with --benchmark-only it stops with "Can't have both --benchmark-only and --benchmark-disable".
    The inner session is no worker of anybody's, so the variables go.
    """
    for name in ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID"):
        monkeypatch.delenv(name, raising=False)
    return pytester
