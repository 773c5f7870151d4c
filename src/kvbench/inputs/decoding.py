"""How a scenario chooses its tokens, and what decodes them: the sampling parameters (temperature, top-k, top-p)
with their defaults, the engine (transformers' `generate`, or kvbench's plain-torch reference loop), and the decoding
variants a grid expands to (their part of a scenario's id is declared on Scenario: `kvbench.inputs.axes`).

The defaults are what `kvbench run` sampled with before these became axes (temperature 1.0, top-k 50, top-p 1.0,
the defaults of transformers' GenerationConfig), so ids and generate calls of existing scenarios are unchanged:
an id names a parameter only where it differs from its default (``sample-t0.5-p0.9``), and the engine only when it
is not generate (``...-greedy-reference``). Greedy and beam scenarios store None for the sampling parameters.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

from ..errors import UserError
from .lists import MAX_DIGITS, list_parts, shown

SAMPLING_DEFAULTS = {"temperature": 1.0, "top_k": 50, "top_p": 1.0}
ENGINES = ("generate", "reference")
# What the reference loop decodes (kvbench.measuring.engines.reference): no beam search, no static cache.
REFERENCE_DECODINGS = ("greedy", "sample")
REFERENCE_CACHES = ("dynamic", None)  # None: without the cache


@dataclass(frozen=True)
class SamplingAxes:
    """The values a grid's sampling scenarios take: each combination of temperature, top-k and top-p is a scenario
    (greedy and beam scenarios ignore them)."""

    temperatures: tuple = (SAMPLING_DEFAULTS["temperature"],)
    top_ks: tuple = (SAMPLING_DEFAULTS["top_k"],)
    top_ps: tuple = (SAMPLING_DEFAULTS["top_p"],)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_sampling(temperature, top_k=None, top_p=None) -> None:
    """The ranges transformers' warpers accept, as one line naming the bad value (None: that warper off)."""
    if not _number(temperature) or not temperature > 0 or not math.isfinite(temperature):
        raise UserError(f"temperature must be a finite number > 0, got {temperature!r}")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0):
        raise UserError(f"top_k must be an integer >= 0 (0: off), got {top_k!r}")
    if top_p is not None and (not _number(top_p) or not 0 < top_p <= 1):
        raise UserError(f"top_p must be in (0, 1] (1: off), got {top_p!r}")


@dataclass(frozen=True)
class Sampling:
    """One sampling setting of a single decode (`kvbench steps`, the reference loop): checked when made; top_k and
    top_p None leave their warper off."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self):
        check_sampling(self.temperature, self.top_k, self.top_p)

    def decode_kwargs(self) -> dict:
        """do_sample and the three parameters, as `decode` and `reference_generate` take them."""
        return dict(do_sample=True, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)


def check_decoding(scenario) -> None:
    """Validate (one line naming the bad value) and normalise a Scenario's sampling parameters and engine."""
    for name, default in SAMPLING_DEFAULTS.items():
        value = getattr(scenario, name)
        if scenario.decoding != "sample":
            if value is not None and value != default:
                raise UserError(f"{name}={value!r} needs decoding='sample', got {scenario.decoding!r}")
            object.__setattr__(scenario, name, None)
        elif value is None:
            object.__setattr__(scenario, name, default)
    if scenario.decoding == "sample":
        t, p = scenario.temperature, scenario.top_p
        check_sampling(t, scenario.top_k, p)
        object.__setattr__(scenario, "temperature", float(t))
        object.__setattr__(scenario, "top_p", float(p))
    if scenario.engine not in ENGINES:
        raise UserError(f"engine must be one of {', '.join(ENGINES)}, got {scenario.engine!r}")
    if scenario.engine == "reference":
        if scenario.decoding not in REFERENCE_DECODINGS:
            raise UserError(f"the reference engine decodes {' and '.join(REFERENCE_DECODINGS)}, "
                            f"not {scenario.decoding!r} (beam search is generate's)")
        if scenario.cache_implementation not in REFERENCE_CACHES:
            raise UserError(f"the reference engine uses a dynamic cache or none, not {scenario.cache_implementation!r}")


def sampling_kwargs(scenario) -> dict:
    """temperature, top_k, top_p for generate (sampling only; empty otherwise)."""
    if scenario.decoding != "sample":
        return {}
    return {name: getattr(scenario, name) for name in SAMPLING_DEFAULTS}


def decoding_variants(decodings, num_beams=(4,), sampling: SamplingAxes = SamplingAxes(), engines=("generate",),
                      cache_implementation: str | None = "dynamic") -> list[dict]:
    """The decoding fields of every scenario a grid makes for one cache setting: beam counts expand beam search
    only, sampling parameters sampling only; the reference engine skips what it does not decode (beam search,
    the static cache) rather than failing the sweep."""
    beams = [num_beams] if isinstance(num_beams, int) else list(num_beams)
    variants: dict[tuple, dict] = {}
    for decoding in decodings:
        if decoding == "sample":
            combos = [dict(temperature=t, top_k=k, top_p=p) for t, k, p in itertools.product(
                sampling.temperatures, sampling.top_ks, sampling.top_ps)]
        else:
            combos = [{}]
        for nb in beams if decoding == "beam" else [1]:
            for combo, engine in itertools.product(combos, engines):
                if engine == "reference" and (decoding not in REFERENCE_DECODINGS
                                              or cache_implementation not in REFERENCE_CACHES):
                    continue
                variant = dict(decoding=decoding, num_beams=nb, engine=engine, **combo)
                variants.setdefault(tuple(sorted(variant.items())), variant)
    return list(variants.values())


def float_list(option: str, text: str) -> list[float]:
    """Parse "0.5,1.5" into numbers, naming the option and the bad value otherwise (ranges: Scenario checks)."""
    values = []
    for part in list_parts(option, text):
        try:
            value = float(part)
        except ValueError:
            raise UserError(f"{option}: {shown(part)} is not a number (in {shown(text)})") from None
        if not math.isfinite(value):
            raise UserError(f"{option}: {shown(part)} is not a finite number (in {shown(text)})")
        values.append(value)
    return values


def top_k_list(option: str, text: str) -> list[int]:
    """Parse "0,5,50" into integers >= 0 (0: top-k off), naming the option and the bad value otherwise."""
    values = []
    for part in list_parts(option, text):
        if not (part.isascii() and part.isdigit()) or len(part.lstrip("0")) > MAX_DIGITS:
            raise UserError(f"{option}: {shown(part)} is not an integer >= 0 of at most {MAX_DIGITS} digits "
                            f"(in {shown(text)})")
        values.append(int(part))
    return values
