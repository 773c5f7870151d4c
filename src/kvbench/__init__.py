"""kvbench: what the KV cache of a transformers causal LM buys and costs, measured."""

__version__ = "0.1.0"
