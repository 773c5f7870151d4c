"""Every cache implementation of the installed transformers: the options, the class generate really builds, and
what cannot run refused before a sweep in one line (kvbench.inputs.scenario, kvbench.measuring.engines.caches)."""

from __future__ import annotations

import json

import pytest
import torch
from cache_models import build, generate

from kvbench import Scenario, UserError, compat, grid
from kvbench.cli.app import main
from kvbench.inputs.scenario import CACHE_IMPLEMENTATIONS, DEPRECATED_CACHES
from kvbench.measuring.engines import caches
from kvbench.compat import cache_from_output
from kvbench.measuring.instruments.cache_bytes import cache_class
from kvbench.measuring.loading.models import LoadedModel
from kvbench.results.cache_fields import by_device, by_kind


def test_the_list_covers_the_installed_transformers_list(monkeypatch):
    from transformers.generation.configuration_utils import ALL_CACHE_IMPLEMENTATIONS

    # the axis' values and the deprecated names (input only) cover what transformers accepts
    assert set(ALL_CACHE_IMPLEMENTATIONS) | {"paged"} <= set(CACHE_IMPLEMENTATIONS) | set(DEPRECATED_CACHES)
    assert caches.installed_implementations() == tuple(ALL_CACHE_IMPLEMENTATIONS) + ("paged",)
    # a name this transformers lacks (an older or newer one) is refused before the sweep, naming the version
    monkeypatch.setattr(caches, "installed_implementations", lambda: ("dynamic", "static"))
    with pytest.raises(UserError, match=r"transformers .* has no cache_implementation 'offloaded'"):
        caches.check_cache(_loaded("llama"), Scenario(8, 4, cache_implementation="offloaded"))


def test_quantization_fields_defaults_and_ids():
    assert Scenario(8, 4).id == "P8-N4-B1-cache-dynamic-greedy"  # ids of the existing implementations unchanged
    q = Scenario(8, 4, cache_implementation="quantized")
    assert (q.quant_backend, q.quant_nbits, q.quant_residual_length) == ("quanto", 4, 128)
    assert q.id == "P8-N4-B1-cache-quantized-quanto4-greedy"
    assert Scenario(8, 4, cache_implementation="quantized", quant_backend="hqq", quant_nbits=2,
                    quant_residual_length=32).id == "P8-N4-B1-cache-quantized-hqq2-R32-greedy"
    fp8 = Scenario(8, 4, cache_implementation="quantized", quant_backend="fp8")
    assert (fp8.id, fp8.quant_nbits, fp8.quant_residual_length) == ("P8-N4-B1-cache-quantized-fp8-greedy", None, None)
    assert fp8.generate_kwargs()["cache_config"] == {"backend": "fp8"}
    assert q.generate_kwargs()["cache_config"] == {"backend": "quanto", "nbits": 4, "residual_length": 128}
    # other implementations ignore the options, so a grid can cross them
    assert Scenario(8, 4, cache_implementation="static", quant_backend="hqq").quant_backend is None
    assert "cache_config" not in Scenario(8, 4).generate_kwargs()


@pytest.mark.parametrize("kwargs, named", [
    (dict(quant_backend="fp8", quant_nbits=4), "quant_nbits=4"),
    (dict(quant_backend="fp8", quant_residual_length=64), "quant_residual_length=64"),
    (dict(quant_backend="quanto", quant_nbits=3), "quant_nbits=3"),
    (dict(quant_backend="hqq", quant_nbits=5), "quant_nbits=5"),
    (dict(quant_backend="int8"), "int8"),
    (dict(quant_residual_length=0), "quant_residual_length"),
])
def test_bad_quantization_options_are_named(kwargs, named):
    with pytest.raises(UserError, match=named):
        Scenario(8, 4, cache_implementation="quantized", **kwargs)


def test_grid_gives_quantization_to_the_quantized_rows_only():
    rows = grid([8], [4], cache_implementations=("dynamic", "quantized"), use_cache=(True,),
                quantization=dict(quant_backend="hqq", quant_nbits=2, quant_residual_length=None))
    assert [(s.cache_implementation, s.quant_backend, s.quant_nbits) for s in rows] == \
        [("dynamic", None, None), ("quantized", "hqq", 2)]


def _loaded(arch: str, device: str = "cpu") -> LoadedModel:
    config, model = build(arch)
    return LoadedModel(name=arch, model=model, config=config, device=torch.device(device), dtype=torch.float32,
                       source="test")


@pytest.mark.parametrize("impl, built", [("offloaded", "offloaded"), ("offloaded_static", "offloaded_static"),
                                         ("offloaded_hybrid", "offloaded_static"),
                                         ("offloaded_hybrid_chunked", "offloaded_static")])
@pytest.mark.filterwarnings("ignore::kvbench.inputs.scenario.DeprecatedCacheName")
def test_offloaded_caches_need_cuda(impl, built):
    with pytest.raises(UserError, match=f"the {built} cache needs CUDA .*torch.cuda.default_stream"):
        caches.check_cache(_loaded("llama"), Scenario(8, 4, cache_implementation=impl))


@pytest.mark.parametrize("arch, named", [("mistral", "sliding_attention"), ("mamba2", "linear_attention"),
                                         ("falcon_h1", "hybrid"), ("lfm2", "conv")])
def test_quantized_cache_needs_full_attention_only(arch, named):
    if compat.hybrid_state_on_every_layer() and arch == "falcon_h1":  # 4.x: its config names no layer types
        named = "linear_attention"
    with pytest.raises(UserError, match=f"full-attention layers only.*{named}"):
        caches.check_cache(_loaded(arch), Scenario(8, 4, cache_implementation="quantized", quant_backend="fp8"))


def test_a_missing_backend_names_its_install(monkeypatch):
    monkeypatch.setitem(caches.QUANT_PACKAGES, "hqq", ("no_such_module_kvbench", "hqq"))
    with pytest.raises(UserError, match=r"hqq backend .* not installed: pip install hqq \(or kvbench\[quant\]\)"):
        caches.check_cache(_loaded("llama"), Scenario(8, 4, cache_implementation="quantized", quant_backend="hqq"))
    monkeypatch.setitem(caches.QUANT_PACKAGES, "quanto", ("optimum.no_such_module", "optimum-quanto"))
    assert caches.missing_package("quanto") == "pip install optimum-quanto (or kvbench[quant])"
    assert caches.missing_package("fp8") is None


def test_groups_that_do_not_divide_are_refused_before_generate_fails():
    """quanto groups 64 values per sequence: with 2 KV heads of 16 (llama_small) a 7-token tensor has 224.
    (Needs quanto itself: without it the refusal is the missing package, test_a_missing_backend_names_its_install.)"""
    pytest.importorskip("optimum.quanto")
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(hidden_size=64, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=128)
    model = AutoModelForCausalLM.from_config(config).eval()
    loaded = LoadedModel(name="small", model=model, config=config, device=torch.device("cpu"), dtype=torch.float32,
                         source="test")
    odd = Scenario(7, 3, cache_implementation="quantized")
    with pytest.raises(UserError, match="groups 64 values, which does not divide the 224"):
        caches.check_cache(loaded, odd)
    with pytest.raises(ValueError, match="must be a divisor"):  # what generate would have said, mid-sweep
        generate(model, 1, 7, 3, cache_implementation="quantized", cache_config=odd.quant_cache_config())
    caches.check_cache(loaded, Scenario(8, 3, cache_implementation="quantized"))  # 8 tokens: 256 values, fine
    # the requantization at P + R tokens must fit too: 11 tokens, 352 values
    with pytest.raises(UserError, match="11-token"):
        caches.check_cache(loaded, Scenario(8, 4, cache_implementation="quantized", quant_residual_length=3))
    # R = 1 requantizes at 9 tokens from 5.20, at 10 (320 values: fine) before (compat.quantized_requantize_period)
    one = Scenario(8, 3, cache_implementation="quantized", quant_residual_length=1)
    if compat.quantized_requantize_period(1) == 1:
        with pytest.raises(UserError, match="9-token"):
            caches.check_cache(loaded, one)
    else:
        caches.check_cache(loaded, one)
        generate(model, 1, 8, 3, cache_implementation="quantized", cache_config=one.quant_cache_config())


@pytest.mark.parametrize("impl, built", [
    ("dynamic", "DynamicCache"), ("static", "StaticCache"), ("sliding_window", "StaticCache"),
    ("hybrid", "DynamicCache"), ("hybrid_chunked", "StaticCache"), ("quantized", "QuantizedCache"),
])
def test_records_name_the_class_generate_built(impl, built):
    _, model = build("mistral" if impl != "quantized" else "llama")
    if impl == "hybrid" and compat.hybrid_builds_static():  # 4.x builds what "hybrid" asks for
        built = "StaticCache"
    scenario = Scenario(12, 3, cache_implementation=impl, quant_backend=_quant_backend() if impl == "quantized"
                        else None)
    out = generate(model, 1, 12, 3, **{k: v for k, v in scenario.generate_kwargs().items()
                                       if k in ("cache_implementation", "cache_config")})
    assert cache_class(cache_from_output(out)) == built


def _quant_backend() -> str:
    """fp8 where this transformers has it (5.21), else hqq (fp8's refusal: test_version_refusals_name_the_release)."""
    if "fp8" in compat.quantized_backends():
        return "fp8"
    pytest.importorskip("hqq")
    return "hqq"


def test_measure_records_the_cache_class_and_its_bytes_by_kind():
    from kvbench.measuring.measure import measure

    loaded, backend = _loaded("llama"), _quant_backend()
    # two calls reuse one cache_config: generate before 5.19 consumed it (compat.generate_call_kwargs)
    record = measure(loaded, Scenario(8, 3, cache_implementation="quantized", quant_backend=backend), repeats=1,
                     warmup=1)
    assert record["status"] == "ok" and record["cache_class"] == "QuantizedCache"
    kinds = by_kind(record)
    expected = {"quantized_data", "quantized_scales"} | ({"quantized_zero_points", "quantized_residual"}
                                                        if backend == "hqq" else set())
    assert kinds == by_kind(record, estimate=True) and set(kinds) == expected
    assert record["kv_cache_bytes"] == record["kv_cache_bytes_estimate"] == sum(kinds.values())
    if backend == "fp8":
        assert record["kv_cache_kind_quantized_scales_bytes"] == 2 * 4 * 2  # 2 layers x keys and values x float32
    assert by_device(record) == {"cpu": record["kv_cache_bytes"]} == {"cpu": record["kv_cache_device_cpu_bytes"]}
    assert by_device(record, estimate=True) == by_device(record)
    json.dumps(record, allow_nan=False)
    assert all(not isinstance(v, dict) for v in record.values())


def test_cli_refuses_an_offloaded_cache_without_cuda_in_one_line(tiny_config_file, tmp_path, capsys):
    code = main(["run", "--model", str(tiny_config_file), "--device", "cpu", "--cache-implementation",
                 "dynamic,offloaded", "--prompt-len", "16", "--new-tokens", "4", "--out", str(tmp_path / "never")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "offloaded cache needs CUDA" in err
    assert not (tmp_path / "never").exists()


def test_cli_runs_dynamic_static_and_fp8_quantized(tiny_config_file, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", "--model", str(tiny_config_file), "--device", "cpu", "--cache-implementation",
                 "dynamic,static,quantized", "--quant-backend", "fp8", "--prompt-len", "8", "--new-tokens", "3",
                 "--batch-size", "1", "--use-cache", "on", "--repeats", "1", "--warmup", "0", "--out", str(out)])
    if "fp8" not in compat.quantized_backends():  # before 5.21: refused before the sweep, in one line
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "fp8 quantized cache needs transformers >= 5.21" in err
        assert not out.exists()
        return
    assert code == 0
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert [(r["cache_implementation"], r["cache_class"]) for r in records] == \
        [("dynamic", "DynamicCache"), ("static", "StaticCache"), ("quantized", "QuantizedCache")]
    assert all(r["kv_cache_bytes"] == r["kv_cache_bytes_estimate"] for r in records)


def test_pinned_host_peaks_of_offloaded_caches_on_cuda(monkeypatch):
    """The probe reads torch's pinned host allocator around the call (a fake allocator here: no CUDA needed), and
    only for offloaded caches on a CUDA device."""
    from kvbench.measuring.instruments import host_memory
    from kvbench.measuring.measure import summarize

    stats = {"allocated_bytes.current": 1000, "allocated_bytes.peak": 5000, "active_bytes.current": 0,
             "active_bytes.peak": 800}
    calls = []
    monkeypatch.setattr(torch.cuda, "host_memory_stats", lambda: dict(stats))
    monkeypatch.setattr(torch.cuda, "reset_peak_host_memory_stats", lambda: calls.append("reset"))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append("sync"))
    cuda = torch.device("cuda:0")

    with host_memory.pinned_host_probe(cuda, "offloaded") as host:
        stats.update({"allocated_bytes.peak": 9000, "active_bytes.peak": 4096})  # the call's copies
    assert calls == ["reset", "sync"]
    assert host == {"pinned_host_peak_bytes": 9000, "pinned_host_peak_delta_bytes": 8000,
                    "pinned_host_active_peak_bytes": 4096, "pinned_host_active_peak_delta_bytes": 4096,
                    "pinned_host_before_bytes": 1000, "pinned_host_memory_source": "torch.cuda.host_memory_stats"}
    for device, impl in [(cuda, "dynamic"), (cuda, "static"), (torch.device("cpu"), "offloaded_static")]:
        with host_memory.pinned_host_probe(device, impl) as other:
            pass
        assert other == {}
    run = {"total_s": 1.0, "ttft_s": 0.5, "decode_steps_s": [0.1], "positions": [4, 1], "generated_tokens": 2,
           "cache_class": "DynamicCache", "kv_cache_bytes": 64, **host}
    summary = summarize([run, {**run, "pinned_host_peak_bytes": 7000}])
    assert summary["pinned_host_peak_bytes"] == 9000  # peaks: the largest over repeats
    assert summary["pinned_host_memory_source"] == "torch.cuda.host_memory_stats"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="offloaded caches need CUDA")
@pytest.mark.parametrize("arch, impl", [("llama", "offloaded"), ("llama", "offloaded_static"),
                                        ("gemma2", "offloaded_static"), ("jamba", "offloaded")])
def test_offloaded_caches_on_cuda_by_device(arch, impl):
    """Where CUDA exists: the offloaded cache's bytes by device equal the estimate (host and GPU), and the record
    carries the pinned-host peak beside the GPU's."""
    from kvbench.measuring.measure import measure

    config, model = build(arch)
    loaded = LoadedModel(name=arch, model=model.to("cuda"), config=config, device=torch.device("cuda"),
                         dtype=torch.float32, source="test")
    record = measure(loaded, Scenario(12, 4, 2, cache_implementation=impl), repeats=1, warmup=1)
    assert record["status"] == "ok"
    assert by_device(record) == by_device(record, estimate=True) and "cpu" in by_device(record)
    assert by_kind(record) == by_kind(record, estimate=True)
    assert record["pinned_host_memory_source"] == "torch.cuda.host_memory_stats"
    # torch copies a CUDA tensor to the CPU with non_blocking=True (the offloading) into pinned host memory: its
    # peak holds at least the cache's bytes on the CPU
    assert record["pinned_host_peak_bytes"] >= by_device(record)["cpu"] > 0


def test_version_refusals_name_the_release(monkeypatch):
    """What a transformers release cannot do is refused before the sweep in one line naming the release it needs
    and the installed one (compat's answers faked here, so each refusal is checked on every release)."""
    import re

    installed = re.escape(f"(installed {compat.installed_version()})")
    llama = _loaded("llama")
    monkeypatch.setattr(compat, "quantized_backends", lambda: ("quanto", "hqq"))
    with pytest.raises(UserError, match=rf"fp8-greedy: the fp8 quantized cache needs transformers >= 5.21 {installed}$"):
        caches.check_cache(llama, Scenario(8, 4, cache_implementation="quantized", quant_backend="fp8"))
    monkeypatch.setattr(compat, "quantized_beam_search", lambda: False)
    with pytest.raises(UserError, match=rf"beam search with a quantized cache needs transformers >= 5.19 {installed}"):
        caches.check_cache(llama, Scenario(8, 4, cache_implementation="quantized", quant_backend="hqq",
                                           decoding="beam", num_beams=2))
    monkeypatch.setattr(compat, "paged_layout", lambda: None)
    with pytest.raises(UserError, match=rf"--cache-implementation paged .* needs transformers >= 5.17 {installed}"):
        caches.check_cache(llama, Scenario(8, 4, cache_implementation="paged"))
    monkeypatch.setattr(compat, "static_values_sized_by_keys", lambda: True)
    monkeypatch.setattr(compat, "mla_caches_latent", lambda: False)  # 4.x: per-head keys 80 wide, values 32
    for impl in ("static", "sliding_window"):
        with pytest.raises(UserError, match=rf"static cache of a model whose keys and values differ in width "
                                            rf"needs transformers >= 5.0 {installed}"):
            caches.check_cache(_loaded("deepseek_v3"), Scenario(8, 4, cache_implementation=impl))
    caches.check_cache(llama, Scenario(8, 4, cache_implementation="static"))  # keys and values alike: runs
    caches.check_cache(_loaded("deepseek_v3"), Scenario(8, 4))  # a dynamic cache: runs


def test_compat_answers_match_the_releases_read():
    """The releases compat's docstrings name, against the installed transformers (CI runs 4.57.6, 5.17.0, 5.24)."""
    v = compat.transformers_version()
    assert ("fp8" in compat.quantized_backends()) == (v >= (5, 21))
    assert compat.quantized_beam_search() == (v >= (5, 19))
    assert compat.hybrid_builds_static() == compat.static_values_sized_by_keys() == (v < (5, 0))
    if v < (5, 0) or v >= (5, 17):
        assert compat.paged_layout() == (None if v < (5, 0) else "per_layer" if v < (5, 18) else "sectors")
