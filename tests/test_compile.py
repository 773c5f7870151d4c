"""Compiled decode as an axis: the setting, what really ran, the hook kept out of the graph, one static cache
a scenario.

The forced-compile tests run transformers' own compile path (`CompileConfig._compile_all_devices`) on the CPU with a
backend that counts the graphs dynamo hands it and runs them eagerly (no C++ compiler, seconds not minutes).
"""

import json

import pytest
import torch
from bench_support import copy_bench, kv_args, strict_json, transformers_imported  # noqa: F401
from tiny_models import llama_config

import kvbench
from kvbench import Scenario, UserError, grid
from kvbench.cli.app import main
from kvbench.measuring.engines import decode
from kvbench.measuring.engines.engine import GenerateEngine
from kvbench.measuring import measure as measure_module
from kvbench.measuring.instruments.cache_bytes import cache_nbytes
from kvbench.measuring.instruments.clock import Clock
from kvbench.measuring.instruments.forwards import eager_probes, record_forwards
from kvbench.measuring.loading.models import synthetic_inputs

pytest_plugins = ["pytester"]
# the in-process pytester runs below need transformers and torch imported before the first of them
pytestmark = pytest.mark.usefixtures("transformers_imported")


# ---------------------------------------------------------------- the setting
def test_compile_setting_ids_and_dict():
    assert Scenario(16, 32, cache_implementation="static").id == "P16-N32-B1-cache-static-greedy"  # auto: unchanged
    on = Scenario(16, 32, cache_implementation="static", compile="on")
    assert on.id == "P16-N32-B1-cache-static-greedy-compile-on"
    assert Scenario(16, 32, cache_implementation="static", compile="off").id.endswith("-greedy-compile-off")
    assert on.as_dict()["compile"] == "on" and Scenario(4, 2).as_dict()["compile"] == "auto"
    assert Scenario(4, 2, cache_implementation="static", compile="off").generate_kwargs()["disable_compile"] is True
    assert "disable_compile" not in Scenario(4, 2, cache_implementation="static").generate_kwargs()


def test_compile_applies_to_the_static_cache_only():
    assert Scenario(4, 2, compile="off").compile == "auto"  # dynamic: transformers never compiles it
    assert Scenario(4, 2, use_cache=False, compile="off").compile is None  # not applicable without the cache
    with pytest.raises(UserError, match="compile='on' needs the static cache"):
        Scenario(4, 2, compile="on")
    with pytest.raises(UserError, match="'eager'"):
        Scenario(4, 2, cache_implementation="static", compile="eager")


def test_grid_crosses_compile_with_static_rows_only():
    scenarios = grid([8], [4], cache_implementations=("dynamic", "static"), compiles=("off", "on", "auto"))
    assert [s.id for s in scenarios] == [
        "P8-N4-B1-cache-dynamic-greedy", "P8-N4-B1-cache-static-greedy-compile-off",
        "P8-N4-B1-cache-static-greedy-compile-on", "P8-N4-B1-cache-static-greedy", "P8-N4-B1-nocache-greedy",
    ]


def test_generate_kwargs_pass_the_cache_instead_of_its_implementation(tiny_loaded):
    scenario = Scenario(6, 3, cache_implementation="static", compile="on")
    cache = decode.static_cache(tiny_loaded.model, scenario)
    kwargs = decode.generate_kwargs(scenario, cache)
    assert "cache_implementation" not in kwargs and kwargs[decode.cache_kwarg()] is cache
    assert kwargs["compile_config"]._compile_all_devices is True
    assert decode.static_cache(tiny_loaded.model, Scenario(6, 3)) is None
    assert decode.generate_kwargs(Scenario(6, 3))["cache_implementation"] == "dynamic"


# ---------------------------------------------------------------- refusals
def test_compile_on_without_a_compiler_is_refused(monkeypatch, tiny_loaded):
    monkeypatch.setattr(decode, "compiler_problem", lambda device: "no C++ compiler found (c++, g++, clang++)")
    with pytest.raises(UserError, match="compile 'on' needs inductor.*no C\\+\\+ compiler"):
        kvbench.measure(tiny_loaded, Scenario(6, 3, cache_implementation="static", compile="on"))
    decode.check_compile([Scenario(6, 3, cache_implementation="static")], torch.device("cpu"))  # auto: fine


def test_compiler_problem_names_what_is_missing(monkeypatch):
    import torch._inductor.cpp_builder as cpp_builder

    def missing():
        raise RuntimeError("no compiler")

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", missing)
    assert "C++ compiler" in decode.compiler_problem(torch.device("cpu"))
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(decode.shutil, "which", lambda name: None)
    assert "no C compiler" in decode.compiler_problem(torch.device("cuda"))
    monkeypatch.setenv("CC", "/opt/cc")
    assert decode.compiler_problem(torch.device("cuda")) is None


@pytest.mark.parametrize(
    "args, named",
    [
        (["--compile", "fast"], "'fast'"),
        (["--compile", "on"], "--compile on"),  # the default grid has no static cache
        (["--compile", "on", "--cache-implementation", "static", "--use-cache", "off"], "--compile on"),
    ],
)
def test_cli_refuses_bad_compile_in_one_line(tiny_config_file, tmp_path, capsys, args, named):
    code = main(["run", "--model", str(tiny_config_file), "--out", str(tmp_path / "never"), *args])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and named in err
    assert not (tmp_path / "never").exists()


def test_cli_refuses_compile_on_without_a_compiler(monkeypatch, tiny_config_file, tmp_path, capsys):
    monkeypatch.setattr(decode, "compiler_problem", lambda device: "no C++ compiler found (c++, g++, clang++)")
    code = main(["run", "--model", str(tiny_config_file), "--prompt-len", "16", "--new-tokens", "4",
                 "--out", str(tmp_path / "never"), "--compile", "on",
                 "--cache-implementation", "static"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no C++ compiler" in err
    assert not (tmp_path / "never").exists()


# ---------------------------------------------------------------- eager decode is recorded as eager
@pytest.mark.parametrize("compile", ["off", "auto"])
def test_eager_decode_is_recorded_as_eager(tiny_loaded, compile):
    rec = kvbench.measure(tiny_loaded, Scenario(6, 4, cache_implementation="static", compile=compile), repeats=1,
                          warmup=0)
    assert rec["compile"] == compile and rec["decode_compiled"] is False  # auto on the CPU: transformers' eager
    assert rec["compile_s"] is None and rec["warmup_runs"] == 0 and rec["kv_cache_reused"] is True
    assert rec["compile_graphs"] == rec["compile_graphs_timed"] == 0


def test_probes_mark_each_forward_eager(tiny_loaded):
    model, clock = tiny_loaded.model, Clock(torch.device("cpu"))
    inputs = synthetic_inputs(tiny_loaded.config, 1, 5, "cpu")
    embeddings, head = model.get_input_embeddings(), model.get_output_embeddings()
    with eager_probes(model) as probed, eager_probes(model):  # nested: the outer block's probes, not twice as many
        assert probed and len(embeddings._forward_pre_hooks) == len(head._forward_pre_hooks) == 1
        with record_forwards(model, clock) as log:
            model.generate(**inputs, **Scenario(5, 3).generate_kwargs())
    assert log.positions == [5, 1, 1] and log.compiled == [False, False, False]
    assert not embeddings._forward_pre_hooks and not head._forward_pre_hooks  # removed afterwards
    with record_forwards(model, clock) as log:  # without probes: compiled or not is unknown
        model.generate(**inputs, **Scenario(5, 3).generate_kwargs())
    assert log.positions == [5, 1, 1] and log.compiled is None


# ---------------------------------------------------------------- forced compile on the CPU
@pytest.fixture
def counting_backend(monkeypatch):
    """compile="on" through a backend that records each graph dynamo compiles and runs it eagerly."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    monkeypatch.setattr(decode, "COMPILE_BACKEND", backend)
    yield graphs
    torch._dynamo.reset()


def fresh_model():
    """A model of its own: transformers keeps its compiled call on the model object."""
    torch.manual_seed(0)
    return kvbench.load_model(llama_config(), device="cpu", dtype="float32")


def test_forced_compile_one_decode_graph_n_counted_forwards(counting_backend):
    """Done-when of issue 9, item 2: the decode graph compiles once, every forward is still counted and marked."""
    P, N = 6, 5
    rec = kvbench.measure(fresh_model(), Scenario(P, N, batch_size=2, cache_implementation="static", compile="on"),
                          repeats=3, warmup=0, profile_steps=True)
    assert len(counting_backend) == 1  # one decode graph: the hook neither traced nor recompiled at every step
    assert rec["compile_graphs"] == 1 and rec["compile_graphs_timed"] == 0
    assert rec["decode_compiled"] is True
    assert rec["warmup_runs"] == 1 and rec["compile_s"] > 0  # a compiling scenario always gets its warm-up
    assert rec["forward_calls"] == N and rec["positions_per_call"] == [P] + [1] * (N - 1)
    assert len(rec["decode_steps_s"]) == N - 1 and all(s > 0 for s in rec["decode_steps_s"])
    assert len(rec["total_s_repeats"]) == 3 and rec["generated_tokens"] == N
    assert rec["kv_cache_bytes"] == rec["kv_cache_bytes_estimate"] > 0
    assert rec["profile_forward_calls"] == N and len(rec["decode_steps_device_s"]) == N - 1  # profiled, not recompiled
    json.dumps(rec, allow_nan=False)


def test_forced_compile_marks_prefill_eager_and_decode_compiled(counting_backend):
    loaded = fresh_model()
    scenario = Scenario(6, 4, cache_implementation="static", compile="on")
    cache = decode.static_cache(loaded.model, scenario)
    kwargs = decode.generate_kwargs(scenario, cache)
    inputs = synthetic_inputs(loaded.config, 1, 6, "cpu")
    logs = []
    with torch.inference_mode(), eager_probes(loaded.model):
        for _ in range(2):
            with record_forwards(loaded.model, Clock(torch.device("cpu"))) as log:
                measure_module.reset_cache(cache)
                loaded.model.generate(**inputs, **kwargs)
            logs.append(log)
    for log in logs:  # transformers compiles the decode steps only; each generate's own hook sees all its forwards
        assert log.positions == [6, 1, 1, 1] and log.compiled == [False, True, True, True]
    assert len(counting_backend) == 1


# ---------------------------------------------------------------- one static cache per scenario
def spy_generate(monkeypatch, model):
    seen = []
    real = model.generate

    def generate(*args, **kwargs):
        out = real(*args, **kwargs)
        seen.append((kwargs.get(decode.cache_kwarg()), out.sequences.clone()))
        return out

    monkeypatch.setattr(model, "generate", generate)
    return seen


@pytest.mark.parametrize(
    "scenario",
    [
        Scenario(10, 5, batch_size=2, cache_implementation="static"),
        Scenario(10, 5, batch_size=2, cache_implementation="static", decoding="sample"),
        Scenario(10, 5, batch_size=2, cache_implementation="static", decoding="beam", num_beams=3),
    ],
    ids=lambda s: s.id,
)
def test_one_static_cache_reused_and_reset(monkeypatch, tiny_loaded, scenario):
    seen = spy_generate(monkeypatch, tiny_loaded.model)
    rec = kvbench.measure(tiny_loaded, scenario, repeats=2, warmup=1, profile_steps=True)
    caches = {id(cache) for cache, _ in seen}
    assert len(seen) == 5 and len(caches) == 1 and None not in {c for c, _ in seen}  # warm-up, 2 repeats, allocation
    # pass, profile
    assert all(torch.equal(seen[0][1], tokens) for _, tokens in seen)  # reset: every generate starts afresh
    assert rec["kv_cache_bytes"] == rec["kv_cache_bytes_estimate"] > 0 and rec["kv_cache_reused"] is True
    assert rec["forward_calls"] == 5 and rec["generated_tokens"] == 5
    monkeypatch.undo()
    inputs = synthetic_inputs(tiny_loaded.config, 2, 10, "cpu", scenario.seed)
    torch.manual_seed(scenario.seed)
    fresh = tiny_loaded.model.generate(**inputs, **scenario.generate_kwargs()).sequences  # generate's own cache
    assert torch.equal(fresh, seen[0][1])


def test_dynamic_scenarios_pass_no_cache(monkeypatch, tiny_loaded):
    seen = spy_generate(monkeypatch, tiny_loaded.model)
    rec = kvbench.measure(tiny_loaded, Scenario(6, 3), repeats=1, warmup=1)
    # warm-up, repeat, allocation pass
    assert [cache for cache, _ in seen] == [None, None, None] and rec["kv_cache_reused"] is False


def test_memory_deltas_count_the_reused_cache(monkeypatch, tiny_loaded):
    """The cache exists before the timed repeats; their peaks above the level before still count it (as if each
    generate had allocated it, as a fresh cache would be)."""
    import contextlib

    @contextlib.contextmanager
    def fixed_probe(device, nvml=None):
        out = {}
        yield out
        out.update(peak_memory_delta_bytes=1000, peak_reserved_delta_bytes=50, rss_before_bytes=7,
                   peak_memory_source="fake")

    monkeypatch.setattr(measure_module, "memory_probe", fixed_probe)
    scenario = Scenario(6, 3, cache_implementation="static")
    engine = GenerateEngine()
    prepared = engine.prepare(tiny_loaded, scenario)
    cache = prepared.cache
    clock = Clock(torch.device("cpu"))
    with torch.inference_mode():
        first = measure_module.run_once(tiny_loaded, engine, prepared, clock)
        second = measure_module.run_once(tiny_loaded, engine, prepared, clock)
    assert first["peak_memory_delta_bytes"] == 1000  # allocated during this generate: measured as it is
    assert second["peak_memory_delta_bytes"] == 1000 + cache_nbytes(cache) and cache_nbytes(cache) > 0
    assert second["rss_before_bytes"] == 7 and second["peak_reserved_delta_bytes"] == 50  # left as read


# ---------------------------------------------------------------- the pytest plugin: --kv-compile, --kv-profile-steps


def test_plugin_compile_axis_and_refusal(pytester):
    copy_bench(pytester)
    pytester.makepyfile(test_ids="def test_scenario(kv_scenario):\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider", "--collect-only", "-q", "--kv-prompt-len=8",
                                "--kv-batch-size=1", "--kv-use-cache=on", "--kv-cache-implementation=dynamic,static",
                                "--kv-compile=off,auto")
    assert [line.split("::", 1)[1] for line in result.outlines if "::" in line] == [
        "test_scenario[P8-N32-B1-cache-dynamic-greedy]", "test_scenario[P8-N32-B1-cache-static-greedy-compile-off]",
        "test_scenario[P8-N32-B1-cache-static-greedy]",
    ]
    result = pytester.runpytest("--kv-compile=fast")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--kv-compile: 'fast' is not one of off, on, auto" in result.stderr.str()


def test_plugin_records_compile_and_profile(pytester, tiny_config_file):
    copy_bench(pytester, "test_bench_sweep")
    result = pytester.runpytest(*kv_args(tiny_config_file, batch_size="1", rounds="1"), "--kv-use-cache=on",
                                "--kv-cache-implementation=static", "--kv-compile=off", "--kv-profile-steps",
                                "--benchmark-only", "--benchmark-json=out.json")
    result.assert_outcomes(passed=1)
    (bench,) = strict_json(pytester.path / "out.json")["benchmarks"]
    extra = bench["extra_info"]
    assert bench["name"] == "test_generate[P8-N4-B1-cache-static-greedy-compile-off]"
    assert extra["compile"] == "off" and extra["decode_compiled"] is False and extra["kv_cache_reused"] is True
    assert extra["profile_device"] == "cpu" and len(extra["decode_steps_device_s"]) == 3
    assert extra["kv_cache_bytes"] == extra["kv_cache_bytes_estimate"]


# ---------------------------------------------------------------- every cache transformers compiles
def test_compiled_caches_are_those_generate_compiles(tiny_loaded):
    """compat.compiled_caches() against generate's own rule (`_valid_auto_compile_criteria`, the hardware check
    passed by `_compile_all_devices`) on the cache each name really builds (kvbench once treated "static" alone like
    static). In 5.x an explicit "hybrid" builds a DynamicCache (generate unsets it): not compiled."""
    from transformers import GenerationConfig

    from kvbench import compat
    from kvbench.measuring.engines.caches import installed_implementations

    config = GenerationConfig()
    config.compile_config = decode.forced_compile_config()
    inputs = synthetic_inputs(tiny_loaded.config, 1, 4, "cpu")
    compiles = {}
    for name in installed_implementations():
        if "offloaded" in name or name in ("paged", "quantized"):  # CUDA only; continuous batching; not a StaticCache
            continue
        out = tiny_loaded.model.generate(**inputs, max_new_tokens=2, cache_implementation=name,
                                         return_dict_in_generate=True)
        cache = compat.cache_from_output(out)  # the rule reads it as past_key_values (5.17) or cache (5.24)
        compiles[name] = bool(tiny_loaded.model._valid_auto_compile_criteria({"cache": cache, "past_key_values": cache},
                                                                            config))
    assert {name for name, yes in compiles.items() if yes} == set(compat.compiled_caches()) & set(compiles)
    assert {"static", "offloaded_static", "sliding_window", "hybrid_chunked"} <= set(compat.compiled_caches())
    assert ("hybrid" in compat.compiled_caches()) == compat.hybrid_builds_static()


@pytest.mark.parametrize("name", ["sliding_window", "hybrid_chunked"])
def test_a_deprecated_static_name_is_treated_like_static(monkeypatch, counting_backend, name):
    """One cache reused by every generate, the compile setting kept (off honoured), a warm-up forced where decode
    compiles, decode_compiled recorded: as for "static" (these once got a cache per generate and no warm-up)."""
    assert Scenario(4, 2, cache_implementation=name, compile="off").generate_kwargs()["disable_compile"] is True
    loaded = fresh_model()
    seen = spy_generate(monkeypatch, loaded.model)
    rec = kvbench.measure(loaded, Scenario(6, 4, cache_implementation=name, compile="on"), repeats=2, warmup=0)
    # the warm-up, 2 timed repeats and the untimed allocation pass: one cache for all
    assert len(seen) == 4 and len({id(cache) for cache, _ in seen}) == 1 and seen[0][0] is not None
    assert rec["warmup_runs"] == 1 and rec["decode_compiled"] is True and rec["kv_cache_reused"] is True
    assert len(counting_backend) == 1
    eager = kvbench.measure(loaded, Scenario(6, 4, cache_implementation=name, compile="off"), repeats=1, warmup=0)
    assert eager["decode_compiled"] is False and eager["scenario_id"].endswith("-compile-off")


def test_plugin_never_times_compilation(pytester, tiny_config_file, counting_backend):
    """--kv-warmup-rounds 0 with decode compiling: one warm-up round is run anyway (a line says so), and extra_info
    comes from the 2 timed rounds themselves (it once came from one extra measure() after them, and round 1 timed
    the compilation)."""
    copy_bench(pytester, "test_bench_sweep")
    result = pytester.runpytest(*kv_args(tiny_config_file, batch_size="1", rounds="2"), "--kv-use-cache=on",
                                "--kv-cache-implementation=static", "--kv-compile=on", "--kv-warmup-rounds=0",
                                "--benchmark-only", "--benchmark-json=out.json")
    result.assert_outcomes(passed=1)
    assert "decode compiles on cpu: 1 warm-up round (not timed)" in result.stdout.str()
    (bench,) = strict_json(pytester.path / "out.json")["benchmarks"]
    extra = bench["extra_info"]
    assert extra["warmup_runs"] == 1 and extra["compile_s"] > 0 and extra["decode_compiled"] is True
    assert extra["compile_graphs"] == 1 and extra["compile_graphs_timed"] == 0  # nothing compiled while timed
    assert len(counting_backend) == 1
    assert bench["stats"]["rounds"] == len(extra["ttft_s_repeats"]) == len(extra["decode_step_s_repeats"]) == 2
    # the rounds pytest-benchmark timed are the ones summarized: each round's first token within its own time
    assert all(ttft < total for ttft, total in zip(extra["ttft_s_repeats"], bench["stats"]["data"]))
