"""Tiny model configs for tests (importable as `tiny_models` from every test module, also when bench/ is
collected in the same session, where the name `conftest` may resolve to bench/conftest.py)."""


def llama_config(**overrides):
    from transformers import LlamaConfig

    kwargs = dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=256, max_position_embeddings=128,
    )
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)
