"""How kvbench calls `generate` for a scenario: the compile setting, and the one static cache a scenario reuses.

* compile "off" sets `disable_compile=True` (in `Scenario.generate_kwargs`); "auto" leaves transformers to decide (it
  compiles the decode forward of a static cache on CUDA, with `torch.compile(mode="reduce-overhead")`, never on the
  CPU); "on" passes transformers' own default `CompileConfig` flagged `_compile_all_devices`, the switch transformers
  provides to let `generate` compile on any device (the CPU included): the same compiled call "auto" makes on CUDA.
  transformers compiles only the decode steps, never the prefill, and only with a static cache.
* A scenario of a cache transformers compiles (`compat.compiled_caches`: static, offloaded_static and the deprecated
  names generate builds the same way) gets one `StaticCache`, built here as `generate` would build it (P+N-1
  tokens, batch times beams inferred at its first update), passed to every generate of the scenario and reset
  before each: its tensors keep their addresses, so CUDA graphs recorded in the warm-up replay in the timed repeats.
"""

from __future__ import annotations

import inspect
import os
import shutil

from ... import compat
from ...errors import UserError
from ...inputs.configs import text_config
from ...inputs.scenario import Scenario

# The backend of compile="on" (transformers' default); tests swap in a backend that counts the graphs it compiles.
COMPILE_BACKEND = "inductor"


def cache_kwarg() -> str:
    """The `generate` keyword that takes a Cache object: `cache` in newer 5.x, `past_key_values` in 4.57 and 5.17
    (newer versions still accept it, with a deprecation warning). The one version difference of this module."""
    from transformers.generation.utils import GenerationMixin

    params = inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
    return "cache" if "cache" in params else "past_key_values"


def compiled_cache(scenario: Scenario) -> bool:
    """Whether the scenario's cache is one transformers compiles the decode of (`compat.compiled_caches`): treated
    like static (one cache reused by every generate, a warm-up forced where it may compile)."""
    return scenario.use_cache and scenario.cache_implementation in compat.compiled_caches()


def static_cache(model, scenario: Scenario):
    """The scenario's static cache (None for a cache transformers does not compile): `max_cache_len = P + N - 1`,
    as generate sizes it, offloaded for the offloaded names (as generate builds every name of the list)."""
    if not compiled_cache(scenario):
        return None
    from transformers import StaticCache

    offloading = {"offloading": True} if "offloaded" in scenario.cache_implementation else {}
    return StaticCache(config=text_config(model.config), max_cache_len=scenario.total_len - 1,
                       **offloading)


def forced_compile_config():
    """transformers' `CompileConfig` (inductor, reduce-overhead), flagged to let generate compile on any device."""
    from transformers import CompileConfig

    if COMPILE_BACKEND == "inductor":
        config = CompileConfig(backend=COMPILE_BACKEND)
    else:  # torch.compile's `mode` is inductor's
        config = CompileConfig(backend=COMPILE_BACKEND, mode=None)
    config._compile_all_devices = True
    return config


def generate_kwargs(scenario: Scenario, cache=None) -> dict:
    """`Scenario.generate_kwargs()` with the compile setting in full and, where given, the scenario's cache object
    (which replaces `cache_implementation`: transformers refuses both)."""
    kwargs = scenario.generate_kwargs()
    if scenario.compile == "on":
        kwargs["compile_config"] = forced_compile_config()
    if cache is not None:
        kwargs.pop("cache_implementation", None)
        kwargs[cache_kwarg()] = cache
    return kwargs


def may_compile(scenario: Scenario, device) -> bool:
    """Whether generate will try to compile this scenario's decode (used only to guarantee a warm-up that compiles;
    what really ran is detected, see `forwards.record_forwards`)."""
    if scenario.compile == "on":
        return True
    return scenario.compile == "auto" and compiled_cache(scenario) and device.type != "cpu"


def compiler_problem(device) -> str | None:
    """Why inductor cannot compile on this device (it builds C++ on the CPU; triton builds a C launcher on CUDA)."""
    if device.type == "cpu":
        try:
            from torch._inductor.cpp_builder import get_cpp_compiler

            get_cpp_compiler()
        except ImportError:
            if not any(shutil.which(name) for name in ("c++", "g++", "clang++")):
                return "no C++ compiler found (c++, g++, clang++)"
        except Exception as exc:  # torch's InvalidCxxCompiler, or a compiler that fails `--version`
            return f"no working C++ compiler ({type(exc).__name__})"
        return None
    if os.environ.get("CC") or any(shutil.which(name) for name in ("cc", "gcc", "clang")):
        return None
    return "no C compiler found (cc, gcc, clang; or set CC)"


def check_compile(scenarios, device) -> None:
    """Refuse compile="on" where inductor cannot compile, before anything runs (one line, naming why)."""
    if any(s.compile == "on" for s in scenarios) and COMPILE_BACKEND == "inductor":
        problem = compiler_problem(device)
        if problem:
            raise UserError(f"compile 'on' needs inductor, which needs a compiler on {device}: {problem}")


def compiled_graphs() -> int | None:
    """Graphs torch.compile has compiled in this process so far (dynamo's own counter); None if unreadable."""
    try:
        from torch._dynamo.utils import counters

        return int(counters["stats"]["unique_graphs"])
    except Exception:  # a private counter: gone in some torch, then unknown
        return None
