"""Tiny models built from config objects: nothing in the test suite downloads anything."""

import json

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


def llama_config(**overrides):
    from transformers import LlamaConfig

    kwargs = dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=256, max_position_embeddings=128,
    )
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


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
