"""kvbench's pytest plugin: options, fixtures and hooks for pytest-benchmark suites of `generate`.

Loaded through the `pytest11` entry point once kvbench is installed (`-p kvbench.pytest_plugin` otherwise).
A suite in a few lines:

    def test_generate(kv_benchmark, kv_scenario):   # one test per scenario of the --kv-grid
        kv_benchmark(kv_scenario)

Timing belongs to pytest-benchmark: each timed round is one `generate` -- or the reference loop for scenarios of
engine "reference" -- under kvbench's instruments, as `kvbench run` times its repeats (pedantic rounds, inputs made
and the static cache reset in setup, a CUDA synchronize closing each round); where decode compiles, at least one
warm-up round runs first. The benchmark's `extra_info` is kvbench's record of the same scenario, summarized from
those timed rounds themselves (no extra generate after them).
"""

from __future__ import annotations

import warnings

import pytest

from .errors import UserError
from .inputs.decoding import ENGINES, SamplingAxes, float_list, top_k_list
from .inputs import axes
from .inputs.bench import GRID_AXES, GRIDS, USE_CACHE, KVSettings, settings_line  # noqa: F401 (GRIDS: the API)
from .inputs.options import REPEATS, WARMUP
from .inputs.scenario import (
    COMPILE_MODES,
    DECODINGS,
    DeprecatedCacheName,
    Scenario,
    cache_list,
    choice_list,
    grid,
    int_list,
)
from .results.schema import json_safe

# pytest-benchmark owns the latency of the whole generate: these record fields come from its stats instead
# (kvbench.benchjson puts them back: total_s is the median of the rounds).
BENCHMARK_OWNED = ("total_s", "total_s_repeats", "repeats", "tokens_per_s")

# The `env_*` fields that describe the machine and its software, and do not change from run to run.
STABLE_ENV = (
    "env_device", "env_device_name", "env_gpu_memory_bytes", "env_gpu_bandwidth_gbps", "env_driver", "env_cuda",
    "env_torch", "env_transformers", "env_python", "env_kvbench",
)


def pytest_addoption(parser):
    group = parser.getgroup("kvbench", "kvbench (KV-cache benchmarks of transformers generate)")
    add = group.addoption
    add("--kv-model", default="tiny",
        help="preset name, path to a config.json or model folder, or Hub id (default: tiny)")
    add("--kv-device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    add("--kv-dtype", default="auto",
        help="auto (float32 on CPU; the model's half type on GPU), float16, bfloat16, float32")
    add("--kv-grid", default=None, choices=sorted(GRIDS),
        help="scenario grid (default: small; quick with --kv-full); the options below replace one axis")
    add("--kv-full", action="store_true", default=False,
        help="the full-size benchmarks: the quick grid (unless --kv-grid) and the sweep cost at kvbench run's 1 "
             "warm-up + 3 repeats per scenario (minutes on a CPU)")
    add("--kv-prompt-len", default=None, help="prompt lengths, comma-separated")
    add("--kv-new-tokens", default=None, help="new-token counts, comma-separated")
    add("--kv-batch-size", default=None, help="batch sizes, comma-separated")
    add("--kv-use-cache", default=None, help="on, off or both")
    add("--kv-cache-implementation", default=None, help="as kvbench run --cache-implementation (comma-separated)")
    add("--kv-decoding", default="greedy", help="greedy, sample, beam (comma-separated)")
    add("--kv-compile", default="auto",
        help="decode compiled with the static cache: off, on, auto (comma-separated; default: auto, transformers' "
             "choice)")
    add("--kv-profile-steps", action="store_true", default=False,
        help="one extra profiled generate per scenario in the record: device-busy time per decode step")
    add("--kv-num-beams", default="4", help="beams for --kv-decoding beam, comma-separated (default: 4)")
    add("--kv-temperature", default="1.0", help="temperatures for --kv-decoding sample, comma-separated")
    add("--kv-top-k", default="50", help="top-k values for --kv-decoding sample, comma-separated (0: off)")
    add("--kv-top-p", default="1.0", help="top-p values for --kv-decoding sample, comma-separated (1.0: off)")
    add("--kv-engine", default="generate", help="generate, reference (kvbench's plain-torch loop), comma-separated")
    add("--kv-rounds", default=str(REPEATS), help=f"timed rounds per scenario (default: {REPEATS})")
    add("--kv-warmup-rounds", default=str(WARMUP), help=f"untimed rounds before them (default: {WARMUP})")
    add("--kv-on-oom", default="continue", help="after an out-of-memory: continue, or skip-larger (skip the tests "
        "of larger scenarios with the same settings)")


def pytest_configure(config):
    config.addinivalue_line("markers", "kvbench: a benchmark of generate measured by kvbench (added automatically)")
    kv_settings_from(config)  # bad --kv-* values stop the session here, with one line


_SETTINGS = pytest.StashKey[KVSettings]()


def kv_settings_from(config) -> KVSettings:
    """The parsed --kv-* options (parsed once per session; a bad value raises pytest.UsageError)."""
    if _SETTINGS in config.stash:
        return config.stash[_SETTINGS]
    opt = config.getoption
    grid_name = opt("kv_grid") or ("quick" if opt("kv_full") else "small")
    try:
        chosen = {axis: opt(f"kv_{axis}") or GRIDS[grid_name][axis] for axis in GRID_AXES}
        if chosen["use_cache"] not in USE_CACHE:
            raise UserError(f"--kv-use-cache: {chosen['use_cache']!r} is not one of on, off, both")
        caches, notes = cache_list("--kv-cache-implementation", chosen["cache_implementation"])
        for note in notes:
            warnings.warn(DeprecatedCacheName(f"kvbench: {note}"), stacklevel=2)
        num_beams = int_list("--kv-num-beams", opt("kv_num_beams"))
        (rounds,) = int_list("--kv-rounds", opt("kv_rounds"))
        warmup = opt("kv_warmup_rounds")
        if not str(warmup).isdigit():
            raise UserError(f"--kv-warmup-rounds: {warmup!r} is not 0 or a positive integer")
        scenarios = grid(
            int_list("--kv-prompt-len", chosen["prompt_len"]), int_list("--kv-new-tokens", chosen["new_tokens"]),
            int_list("--kv-batch-size", chosen["batch_size"]), USE_CACHE[chosen["use_cache"]], caches,
            choice_list("--kv-decoding", opt("kv_decoding"), DECODINGS), num_beams=num_beams,
            compiles=choice_list("--kv-compile", opt("kv_compile"), COMPILE_MODES),
            **sampling_axes(opt),
        )
        from .measuring.engines.decode import check_compile
        from .inputs.names import check_model_name
        from .measuring.loading.models import check_before_load, resolve_device, resolve_dtype

        device = resolve_device(opt("kv_device"))
        if opt("kv_dtype") != "auto":
            resolve_dtype(opt("kv_dtype"), device)
        check_compile(scenarios, device)
        check_model_name(opt("kv_model"))  # before pytest-benchmark (configured after this plugin) makes .benchmarks/
        if opt("kv_model") != "tiny":  # its config read where one is asked for (a test too long for it skips)
            check_before_load(opt("kv_model"), opt("kv_device"), opt("kv_dtype"))
        from .measuring.harness.resume import ON_OOM

        if opt("kv_on_oom") not in ON_OOM:
            raise UserError(f"--kv-on-oom: {opt('kv_on_oom')!r} is not one of {', '.join(ON_OOM)}")
    except ValueError as exc:  # UserError, and "--kv-rounds 4,5" unpacking into one value
        raise pytest.UsageError(f"kvbench: {exc}") from None
    settings = KVSettings(
        model=opt("kv_model"), device=opt("kv_device"), dtype=opt("kv_dtype"), grid=grid_name,
        scenarios=tuple(scenarios), rounds=rounds, warmup_rounds=int(warmup),
        profile_steps=bool(opt("kv_profile_steps")), on_oom=opt("kv_on_oom"), full=bool(opt("kv_full")),
    )
    config.stash[_SETTINGS] = settings
    return settings


def sampling_axes(opt) -> dict:
    """The axes of --kv-temperature, --kv-top-k, --kv-top-p and --kv-engine, as grid() takes them."""
    return dict(sampling=SamplingAxes(float_list("--kv-temperature", opt("kv_temperature")),
                                      top_k_list("--kv-top-k", opt("kv_top_k")), float_list("--kv-top-p", opt("kv_top_p"))),
                engines=choice_list("--kv-engine", opt("kv_engine"), ENGINES))


def pytest_generate_tests(metafunc):
    """A test asking for `kv_scenario` runs once per scenario of the grid; its id is the scenario's id."""
    if "kv_scenario" not in metafunc.fixturenames:
        return
    if any("kv_scenario" in m.args[0] for m in metafunc.definition.iter_markers("parametrize")):
        return  # the test chose its own scenarios
    scenarios = kv_settings_from(metafunc.config).scenarios
    # The parameter is the scenario as a plain dict, so pytest-benchmark's `params` stay JSON.
    metafunc.parametrize("kv_scenario", [s.as_dict() for s in scenarios], ids=[s.id for s in scenarios], indirect=True)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if {"kv_benchmark", "kv_model"} & set(getattr(item, "fixturenames", ())):
            item.add_marker("kvbench")


def pytest_report_collectionfinish(config, items):
    """One line under pytest's "collected ..." where kvbench benchmarks were collected: what they measure."""
    if any(item.get_closest_marker("kvbench") for item in items):
        return settings_line(kv_settings_from(config))


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def kv_settings(pytestconfig) -> KVSettings:
    """The --kv-* options, parsed: model, device, dtype, grid's scenarios, rounds, warm-up rounds."""
    return kv_settings_from(pytestconfig)


@pytest.fixture(scope="session")
def kv_model(kv_settings):
    """The model of --kv-model on --kv-device in --kv-dtype, loaded once per session (a `kvbench.LoadedModel`)."""
    from .measuring.loading.models import load_model

    try:
        return load_model(kv_settings.model, **kv_settings.run_options().load_kwargs())
    except UserError as exc:
        pytest.exit(f"kvbench: --kv-model {kv_settings.model}: {exc}", returncode=pytest.ExitCode.USAGE_ERROR)


@pytest.fixture
def kv_scenario(request) -> Scenario:
    """The scenario this test runs (parametrized over the --kv-grid; or `indirect=True` with Scenario/dict)."""
    param = request.param
    return param if isinstance(param, Scenario) else Scenario(**param)


@pytest.fixture(scope="session")
def kv_oom_skips(kv_settings):
    """The session's out-of-memory scenarios (kvbench.measuring.harness.resume.OOMSkips) under --kv-on-oom skip-larger."""
    from .measuring.harness.resume import OOMSkips

    return OOMSkips(kv_settings.on_oom)


@pytest.fixture
def kv_benchmark(benchmark, kv_model, kv_settings, kv_oom_skips, request):
    """`kv_benchmark(scenario, rounds=None, warmup_rounds=None, check=True) -> dict`: time generate under
    pytest-benchmark, fill `benchmark.extra_info` with kvbench's record, check the generation, return the record.
    Under --kv-on-oom skip-larger a scenario larger than one that ran out of memory is skipped, naming it."""

    def run(scenario: Scenario, *, rounds: int | None = None, warmup_rounds: int | None = None, check: bool = True):
        reason = kv_oom_skips.reason(scenario)
        if reason is not None:
            pytest.skip(reason)
        try:
            return measured(scenario, rounds, warmup_rounds, check)
        except pytest.skip.Exception as exc:
            if str(exc.msg).startswith("out of memory"):
                kv_oom_skips.saw(scenario, {"status": "oom"})
            raise

    def measured(scenario, rounds, warmup_rounds, check):
        options = kv_settings.run_options()
        return benchmark_generate(
            benchmark, kv_model, scenario,
            rounds=options.repeats if rounds is None else rounds,
            warmup_rounds=options.warmup if warmup_rounds is None else warmup_rounds,
            check=check, profile_steps=options.profile_steps, say=say,
        )

    def say(line: str) -> None:  # on the terminal, beside pytest's own lines (not captured)
        reporter = request.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is None:
            import warnings

            warnings.warn(line, stacklevel=2)
        else:
            reporter.write_line(line)

    return run


# ---------------------------------------------------------------- the measurement
def benchmark_generate(benchmark, loaded, scenario: Scenario, rounds: int = 5, warmup_rounds: int = 1,
                       check: bool = True, profile_steps: bool = False, say=None) -> dict:
    """Time `generate` for one scenario with pytest-benchmark, and record it with kvbench from those same rounds
    (`kvbench.measuring.harness.rounds`). Where decode may compile, at least one warm-up round runs (`say(line)` tells,
    default: a warning). Skips (with the reason) a scenario longer than the model's context, or one that runs out
    of memory. Under --benchmark-disable the target runs once, untimed, and the record and checks still happen.
    """
    import warnings

    from .measuring.record import check_fits
    from .measuring.harness.rounds import measure_in_rounds, warmup_needed

    try:
        check_fits(loaded, scenario)
    except UserError as exc:
        pytest.skip(str(exc))
    if benchmark.group is None:  # cached and uncached twins side by side: the table shows the speedup
        benchmark.group = pair_id(scenario)
    line = warmup_needed(loaded, scenario, warmup_rounds)
    if line:
        warmup_rounds = 1
        (say or (lambda text: warnings.warn(text, stacklevel=3)))(line)
    if getattr(benchmark, "disabled", False):
        warmup_rounds = 0  # pytest-benchmark runs the target once, with no warm-up

    def timer(setup, target, warmup):
        benchmark.pedantic(target, setup=setup, rounds=rounds, warmup_rounds=warmup, iterations=1)

    record = measure_in_rounds(loaded, scenario, timer, warmup_rounds, profile_steps)
    if record["status"] == "oom":
        benchmark.has_error = True  # pytest-benchmark saves no timings without their record
        pytest.skip(f"out of memory on {loaded.device}: {record['error']}")
    shapes = record.pop("sequences_shapes")
    info = extra_info_from(record)
    benchmark.extra_info.update(info)
    problems = generation_problems(info, scenario, shapes) if check else []
    if problems:
        benchmark.has_error = True  # nor timings of a wrong generation
        raise AssertionError(f"{scenario.id}: " + "; ".join(problems))
    return info


def extra_info_from(record: dict) -> dict:
    """kvbench's record as JSON-safe `extra_info`, without the fields pytest-benchmark's stats own."""
    return {k: v for k, v in json_safe(record).items() if k not in BENCHMARK_OWNED}


def expected_positions(scenario: Scenario) -> list[int]:
    """Positions each forward call of generate processes: [P, 1, 1, ...] with the cache, [P, P+1, ...] without."""
    from .estimate.positions import positions_per_call

    return positions_per_call(scenario.prompt_len, scenario.new_tokens, scenario.use_cache)


def generation_problems(record: dict, scenario: Scenario, shapes=()) -> list[str]:
    """What is wrong with a scenario's generation: token count, forward calls, positions, KV bytes, output shapes."""
    n, problems = scenario.new_tokens, []
    if record.get("generated_tokens") != n:
        problems.append(f"generated {record.get('generated_tokens')} new tokens, not {n}")
    if record.get("forward_calls") != n:
        problems.append(f"{record.get('forward_calls')} forward calls, not {n}")
    if record.get("positions_per_call") != expected_positions(scenario):
        problems.append(f"positions per call {record.get('positions_per_call')}, not {expected_positions(scenario)}")
    if scenario.use_cache:
        estimate = record.get("kv_cache_bytes_estimate")
        if estimate is not None and record.get("kv_cache_bytes") != estimate:
            problems.append(f"KV cache holds {record.get('kv_cache_bytes')} bytes, estimate says {estimate}")
    elif record.get("kv_cache_bytes") != 0:
        problems.append(f"no cache asked for, but {record.get('kv_cache_bytes')} bytes of cache came back")
    want = (scenario.batch_size, scenario.total_len)
    problems += [f"timed generate returned sequences of shape {s}, not {want}" for s in shapes if s != want]
    return problems


def pair_id(scenario: Scenario) -> str:
    """The scenario's id without its cache setting: `P16-N32-B1-greedy` (the group of its cached/uncached twins)."""
    return axes.pair_id(scenario.as_dict())


# ---------------------------------------------------------------- machine_info
def machine_info_from(config) -> dict:
    """The stable facts about the machine and software kvbench measures on (no clocks, memory in use, commits)."""
    from .measuring.instruments.environment import environment
    from .measuring.loading.models import resolve_device

    env = environment(resolve_device(kv_settings_from(config).device))
    return {key.removeprefix("env_"): env.get(key) for key in STABLE_ENV}


def update_machine_info(config, machine_info: dict) -> None:
    """pytest-benchmark's `pytest_benchmark_update_machine_info`, for suites that opt in from their conftest.py:

        from kvbench.pytest_plugin import update_machine_info as pytest_benchmark_update_machine_info

    Adds `machine_info["kvbench"]` (device, GPU, driver, CUDA, torch, transformers versions) and drops the CPU's
    momentary clock (`hz_actual`), so `--benchmark-compare` warns only when the machine really differs.
    """
    machine_info["kvbench"] = machine_info_from(config)
    cpu = machine_info.get("cpu")
    if isinstance(cpu, dict):
        for key in ("hz_actual", "hz_actual_friendly"):
            cpu.pop(key, None)
