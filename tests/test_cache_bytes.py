"""Measured bytes equal the estimate, kind by kind, for every cache implementation that runs on a CPU, on tiny
models of nine architectures (GQA, sliding window, alternating windows, MLA, Mamba-2, Jamba, a hybrid-layer model,
a gated delta net, a short-convolution model) and four more Mamba-2 hybrids, for each decoding the implementation
supports (the paged pool: tests/test_paged.py)."""

from __future__ import annotations

import pytest
import torch
from cache_models import ARCHS, MORE_SSM, build, generate, skip_if_refused

from kvbench.estimate.kvcache import (
    estimate_kv_cache_bytes,
    estimate_kv_cache_bytes_by_kind,
    kv_layer_specs,
)
from kvbench.estimate.ssm import StateSpec
from kvbench import compat
from kvbench.compat import cache_from_output
from kvbench.measuring.instruments.cache_bytes import (
    cache_nbytes,
    cache_nbytes_by_device,
    cache_nbytes_by_kind,
    held_tensors,
)

FULL_ATTENTION = ("llama", "deepseek_v3")  # the quantized cache takes full-attention models only
DECODINGS = {"greedy-B2": (2, {}), "sample-B1": (1, {"do_sample": True}), "beam2-B1": (1, {"num_beams": 2})}
# backend options: defaults, 2-bit with requantizations (R=3), every hqq width, 3-bit hqq with R=2, R=1
QUANTIZED = {
    "fp8": {"backend": "fp8"},
    "quanto4": {"backend": "quanto"},
    "quanto2-R3": {"backend": "quanto", "nbits": 2, "residual_length": 3},
    "hqq4": {"backend": "hqq", "nbits": 4},
    "hqq3-R2": {"backend": "hqq", "nbits": 3, "residual_length": 2},
    "hqq1": {"backend": "hqq", "nbits": 1},
    "hqq2": {"backend": "hqq", "nbits": 2},
    "hqq8-R4": {"backend": "hqq", "nbits": 8, "residual_length": 4},
    "hqq2-R1": {"backend": "hqq", "nbits": 2, "residual_length": 1},  # every step (5.20+), every other (before)
}
PROMPT, NEW = 12, 8


def _check(config, out, *, batch, prompt, new, dtype, impl, beams=1, quant=None):
    cache = cache_from_output(out)
    measured = cache_nbytes_by_kind(cache)
    quant = dict(quant or {})
    estimated = estimate_kv_cache_bytes_by_kind(
        config, batch_size=batch, prompt_len=prompt, new_tokens=new, dtype=dtype, num_beams=beams,
        cache_implementation=impl, quant_backend=quant.pop("backend", None), quant_nbits=quant.get("nbits"),
        residual_length=quant.get("residual_length"))
    assert out.sequences.shape[-1] == prompt + new
    assert measured == estimated and "other" not in measured
    assert cache_nbytes(cache) == sum(measured.values()) == sum(cache_nbytes_by_device(cache).values())
    return measured


@pytest.mark.parametrize("decoding", list(DECODINGS))
@pytest.mark.parametrize("impl", ["dynamic", "static"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_dynamic_and_static_by_kind(arch, impl, decoding):
    batch, kwargs = DECODINGS[decoding]
    config, model = build(arch)
    skip_if_refused(config, model, impl, batch=batch, num_beams=kwargs.get("num_beams", 1))
    out = generate(model, batch, PROMPT, 3, cache_implementation=impl, **kwargs)
    measured = _check(config, out, batch=batch, prompt=PROMPT, new=3, dtype=torch.float32, impl=impl,
                      beams=kwargs.get("num_beams", 1))
    states = any(s.state is not None for s in kv_layer_specs(config))
    assert ("recurrent_state" in measured or "conv_state" in measured) == states


@pytest.mark.parametrize("impl", ["sliding_window", "hybrid", "hybrid_chunked"])
@pytest.mark.parametrize("arch", ["mistral", "gemma2", "jamba"])
def test_deprecated_names_by_kind(arch, impl):
    config, model = build(arch)
    skip_if_refused(config, model, impl, batch=2)
    out = generate(model, 2, PROMPT, 3, cache_implementation=impl)
    _check(config, out, batch=2, prompt=PROMPT, new=3, dtype=torch.float32, impl=impl)


@pytest.mark.parametrize("decoding", list(DECODINGS))
@pytest.mark.parametrize("quant", list(QUANTIZED))
@pytest.mark.parametrize("arch", FULL_ATTENTION)
def test_quantized_by_kind(arch, quant, decoding):
    pytest.importorskip({"quanto": "optimum.quanto", "hqq": "hqq"}.get(QUANTIZED[quant]["backend"], "torch"))
    batch, kwargs = DECODINGS[decoding]
    config, model = build(arch)
    options = QUANTIZED[quant]
    skip_if_refused(config, model, "quantized", prompt_len=PROMPT, new_tokens=NEW, batch=batch,
                    num_beams=kwargs.get("num_beams", 1), quant_backend=options["backend"],
                    quant_nbits=options.get("nbits"), quant_residual_length=options.get("residual_length"))
    out = generate(model, batch, PROMPT, NEW, cache_implementation="quantized", cache_config=QUANTIZED[quant],
                   **kwargs)
    measured = _check(config, out, batch=batch, prompt=PROMPT, new=NEW, dtype=torch.float32, impl="quantized",
                      beams=kwargs.get("num_beams", 1), quant=QUANTIZED[quant])
    period = compat.quantized_requantize_period(QUANTIZED[quant].get("residual_length", 128))
    has_residual = QUANTIZED[quant]["backend"] != "fp8" and (NEW - 1) % period > 0
    assert ("quantized_residual" in measured) == has_residual
    assert ("beam_index" in measured) == ("num_beams" in kwargs and QUANTIZED[quant]["backend"] != "fp8")


@pytest.mark.parametrize("arch", ["mamba2", "jamba", "falcon_h1", "llama"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_states_and_quantization(arch, dtype):
    """Recurrent states stay float32 in half-precision models, conv states and KV follow the model dtype."""
    config, model = build(arch, dtype)
    skip_if_refused(config, model)
    out = generate(model, 2, PROMPT, 3)
    measured = _check(config, out, batch=2, prompt=PROMPT, new=3, dtype=dtype, impl="dynamic")
    for layer in cache_from_output(out).layers:
        for state in getattr(layer, "recurrent_states", {}).values():
            assert state is None or state.dtype == torch.float32
        for state in getattr(layer, "conv_states", {}).values():
            assert state is None or state.dtype == dtype
    if arch == "llama":
        for quant in ({"backend": "fp8"}, {"backend": "quanto", "residual_length": 4}, {"backend": "hqq"}):
            pytest.importorskip({"quanto": "optimum.quanto", "hqq": "hqq"}.get(quant["backend"], "torch"))
            if quant["backend"] not in compat.quantized_backends():  # refused: tests/test_caches.py
                continue
            out = generate(model, 2, PROMPT, NEW, cache_implementation="quantized", cache_config=quant)
            _check(config, out, batch=2, prompt=PROMPT, new=NEW, dtype=dtype, impl="quantized", quant=quant)
    else:
        assert measured["recurrent_state"] > 0


def test_quantized_rules_by_hand():
    """The rules spelled out on one case: llama (2 layers, 2 KV heads of 32), prompt 12, 8 new tokens, batch 2."""
    config, _ = build("llama")

    def est(**quant):
        return estimate_kv_cache_bytes_by_kind(config, batch_size=2, prompt_len=12, new_tokens=8, dtype="float32",
                                               cache_implementation="quantized", **quant)

    values = 2 * 2 * 2 * 19 * 2 * 32  # layers x (keys, values) x sequences x (P + N - 1) x KV heads x head_dim
    assert est(quant_backend="fp8") == {"quantized_data": values, "quantized_scales": 2 * 2 * 4}  # 1 byte a value
    # quanto 4-bit, R = 128: 7 tokens in the float32 residual, 12 quantized (rows of 64 values, two per byte)
    rows = 2 * 2 * 12 * 32 // 64  # per tensor
    assert est() == {"quantized_data": 2 * 2 * (rows // 2) * 64, "quantized_scales": 2 * 2 * rows * 4,
                     "quantized_zero_points": 2 * 2 * rows * 4, "quantized_residual": 2 * 2 * 2 * 2 * 7 * 32 * 4}
    # R = 7: the 7th decode step requantized all 19 tokens, the residual is empty
    assert "quantized_residual" not in est(residual_length=7)
    with pytest.raises(ValueError, match="takes neither"):
        est(quant_backend="fp8", quant_nbits=4)
    mistral, _ = build("mistral")
    with pytest.raises(ValueError, match="full-attention layers only"):
        estimate_kv_cache_bytes(mistral, batch_size=1, prompt_len=4, new_tokens=2, dtype="float32",
                                cache_implementation="quantized")


def test_states_are_constant_in_sequence_length():
    config, model = build("jamba")
    skip_if_refused(config, model)

    def states(prompt, new, impl="dynamic"):
        kinds = estimate_kv_cache_bytes_by_kind(config, batch_size=3, prompt_len=prompt, new_tokens=new,
                                                dtype="bfloat16", cache_implementation=impl)
        return kinds["conv_state"], kinds["recurrent_state"]

    assert states(4, 2) == states(400, 50) == states(10, 3, "static")
    # 2 Mamba layers x 3 sequences: conv [128 channels x kernel 4] in bf16, recurrent [128 x 8] in float32
    assert states(4, 2) == (2 * 3 * 128 * 4 * 2, 2 * 3 * 128 * 8 * 4)
    specs = kv_layer_specs(config)
    assert [s.kind for s in specs] == ["none", "full", "none", "full"]
    assert specs[0].state == StateSpec((128, 4), (128, 8)) and specs[1].state is None


def test_reader_kinds_and_bookkeeping():
    """0-dim tensors count inside quantized storage (fp8 scales) and nowhere else (step counters); quanto's
    wrapper tensors are opened down to their packed bytes; a storage shared by two names counts once."""
    _, model = build("llama")
    static = cache_from_output(generate(model, 1, 6, 2, cache_implementation="static"))
    counters = [h for h in held_tensors(static) if h.tensor.dim() == 0]
    assert counters == [] and cache_nbytes_by_kind(static) == {"key_value": 2 * 2 * 2 * 7 * 32 * 4}
    if "fp8" in compat.quantized_backends():  # 5.21 and later (older releases refuse it: tests/test_caches.py)
        fp8 = cache_from_output(generate(model, 1, 6, 2, cache_implementation="quantized",
                                         cache_config={"backend": "fp8"}))
        assert [h.kind for h in held_tensors(fp8) if h.tensor.dim() == 0] == ["quantized_scales"] * 4
    pytest.importorskip("optimum.quanto")
    quanto = cache_from_output(generate(model, 1, 6, 2, cache_implementation="quantized"))
    kinds = {h.kind for h in held_tensors(quanto)}
    assert kinds == {"quantized_data", "quantized_scales", "quantized_zero_points", "quantized_residual"}
    assert all(type(h.tensor) is torch.Tensor for h in held_tensors(quanto))
    # numel x element_size of quanto's wrapper reports the float shape: 8x what the packed 4-bit data holds
    layer = quanto.layers[0]
    packed = layer._quantized_keys._data._data
    assert layer._quantized_keys.numel() * 4 == 8 * packed.numel() * packed.element_size()
    shared = torch.zeros(4, 8)
    assert cache_nbytes_by_kind({"keys": shared, "values": shared[2:]}) == {"key_value": 128}


def test_layer_bytes_by_hand():
    """Gemma-2 (layer 0 slides, window 8; layer 1 full), 2 KV heads of head_dim 24, keys and values, bfloat16 (2
    bytes), 2 sequences: 2 x 2 x 48 x 2 = 384 bytes a token. After P prompt + 3 new tokens a full layer holds P + 2
    tokens; a sliding layer its window of 8 (a dynamic one keeps window - 1 = 7 and adds the token of the last
    forward, a static one is sized to the window); the dynamic_full cache (no config) makes every layer full."""
    from kvbench.estimate.offload import layer_bytes

    config, _ = build("gemma2")
    kw = dict(batch_size=2, prompt_len=PROMPT, new_tokens=3, dtype="bfloat16")
    full = 384 * (PROMPT + 2)
    assert layer_bytes(config, **kw) == [384 * 8, full]
    assert layer_bytes(config, **kw, cache_implementation="static") == [384 * 8, full]
    assert layer_bytes(config, **kw, cache_implementation="dynamic_full") == [full, full]


def test_offloaded_split_by_device():
    """Rules read in transformers' source (to be confirmed on a GPU): the first offloadable layer is prefetched back,
    the others end on the host; a static cache keeps its sliding layers on the GPU, a dynamic one offloads them."""
    from kvbench.estimate.offload import estimate_kv_cache_bytes_by_device, layer_bytes

    def split(arch, impl):
        config, _ = build(arch)
        kw = dict(batch_size=1, prompt_len=PROMPT, new_tokens=3, dtype="float16", cache_implementation=impl)
        layers = layer_bytes(config, **kw)
        return estimate_kv_cache_bytes_by_device(config, device="cuda:0", **kw), layers

    # by hand, float16 (2 bytes), keys and values, 2 KV heads, P + N - 1 = 14 tokens: head_dim 32 (llama, mistral),
    # 24 (gemma2); a static sliding layer holds the window (8 tokens)
    (devices, layers) = split("llama", "offloaded")
    assert devices == {"cuda0": 2 * 2 * 32 * 14 * 2, "cpu": 2 * 2 * 32 * 14 * 2}
    devices, layers = split("gemma2", "offloaded_static")  # layer 0 slides (stays), layer 1 alone offloaded
    assert devices == {"cuda0": 2 * 2 * 24 * 8 * 2, "cpu": 2 * 2 * 24 * 14 * 2}
    devices, layers = split("gemma2", "offloaded")  # both offloadable: the first comes back
    assert devices == {"cuda0": layers[0], "cpu": 2 * 2 * 24 * 14 * 2}
    if not compat.hybrid_state_on_every_layer():  # 4.x: Jamba is not estimated (test_kvcache.py)
        devices, layers = split("jamba", "offloaded")  # Mamba layers (0, 2) stay; attention 1 back, 3 on the host
        assert devices == {"cuda0": layers[0] + layers[1] + layers[2], "cpu": layers[3]}
    devices, layers = split("mistral", "offloaded_static")  # every layer slides: nothing leaves the GPU
    assert devices == {"cuda0": 2 * (2 * 2 * 32 * 8 * 2)}


@pytest.mark.parametrize("impl", ["dynamic", "static"])
@pytest.mark.parametrize("arch", list(MORE_SSM))
def test_more_mamba2_hybrids_by_kind(arch, impl):
    config, model = build(arch)
    skip_if_refused(config, model, impl, batch=2)
    out = generate(model, 2, PROMPT, 3, cache_implementation=impl)
    measured = _check(config, out, batch=2, prompt=PROMPT, new=3, dtype=torch.float32, impl=impl)
    assert measured["recurrent_state"] > 0 and measured["conv_state"] > 0


def test_zamba_by_hand():
    """Zamba (tests/cache_models.py: hidden 64, 9 layers with the shared attention block on layers 2, 5 and 8, Mamba
    inner width 2 x 64 = 128 in 2 heads, conv kernel 4, state 8; attention 4 heads over 2 x hidden = 128, so a head
    dim of 32, and 2 KV heads), batch 2, prompt 7, 3 new tokens (9 positions cached), float32:
    conv 9 layers x 2 x 128 x 4 x 4 B = 36,864; recurrent (float32) 9 x 2 x 128 x 8 x 4 B = 73,728;
    keys and values 3 layers x 2 x 2 sequences x 2 heads x 9 x 32 x 4 B = 27,648."""
    from kvbench.estimate.kvcache import estimate_kv_cache_bytes_by_kind

    config, model = build("zamba")
    skip_if_refused(config, model)
    expected = {"conv_state": 36_864, "recurrent_state": 73_728, "key_value": 27_648}
    estimate = estimate_kv_cache_bytes_by_kind(config, batch_size=2, prompt_len=7, new_tokens=3, dtype=torch.float32)
    assert {k: v for k, v in estimate.items() if v} == expected
    assert {k: v for k, v in cache_nbytes_by_kind(cache_from_output(generate(model, 2, 7, 3))).items() if v} == expected
