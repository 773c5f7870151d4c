"""What one measurement generates: the frozen Scenario, the grid that expands to scenarios, and the parsing of the
comma-separated axis lists the CLI and the pytest plugin take ("16,64,256")."""

from __future__ import annotations

import dataclasses
import itertools
import warnings
from dataclasses import dataclass

from .. import compat
from ..errors import UserError
from . import axes
from .axes import CACHE_ONLY, DECODING, INPUT, SIZE, SWITCH, axis
from .decoding import SAMPLING_DEFAULTS, SamplingAxes, check_decoding, decoding_variants, sampling_kwargs
from .lists import MAX_DIGITS, int_list, list_parts, shown  # noqa: F401 (int_list: part of this module's API)

DECODINGS = ("greedy", "sample", "beam")
# The values of the cache-implementation axis: every cache transformers 5.x's generate builds (its
# STATIC_CACHE_IMPLEMENTATIONS and DYNAMIC_CACHE_IMPLEMENTATIONS), plus "paged", which routes to continuous batching;
# tests/test_caches.py checks them against the installed transformers.
CACHE_IMPLEMENTATIONS = ("dynamic", "static", "offloaded", "offloaded_static", "quantized", "paged")
OFFLOADED = tuple(name for name in CACHE_IMPLEMENTATIONS if name.startswith("offloaded"))  # copied to the host
# Deprecated names transformers still accepts, and the implementation each builds (5.25: the static ones a
# StaticCache, offloaded when named so; `hybrid` is unset, so a DynamicCache; 4.x's `dynamic_full` a DynamicCache
# without sliding layers). Accepted as input, with a one-line note, and recorded as what they build: not values
# of the axis.
DEPRECATED_CACHES = {"sliding_window": "static", "hybrid": "dynamic", "hybrid_chunked": "static",
                     "offloaded_hybrid": "offloaded_static", "offloaded_hybrid_chunked": "offloaded_static",
                     "dynamic_full": "dynamic"}
ACCEPTED_CACHES = CACHE_IMPLEMENTATIONS + tuple(DEPRECATED_CACHES)
# The backends of the quantized cache, the bit widths each accepts, and transformers' defaults for the group-wise
# ones (fp8 quantizes per tensor and takes no option: no bits to choose, no residual).
QUANT_BACKENDS = {"quanto": (2, 4), "hqq": (1, 2, 3, 4, 8), "fp8": ()}
QUANT_DEFAULTS = dict(quant_backend="quanto", quant_nbits=4, quant_residual_length=128)
# off: eager decode; on: the decode forward compiled on any device; auto: transformers decides (it compiles the
# decode forward of a static cache on CUDA, never on the CPU).
COMPILE_MODES = ("off", "on", "auto")


@dataclass(frozen=True)
class Scenario:
    """One generate call: exact prompt length, exactly `new_tokens` new tokens per sequence.

    Every field is an axis of a sweep, declared with its kind (`kvbench.inputs.axes`). Without the cache
    (`use_cache=False`) the cache-only axes (implementation, compile, quantization) are meaningless and stored as
    None. A deprecated cache name is taken as the implementation it builds (`DEPRECATED_CACHES`, with a warning).
    Beam search needs `num_beams >= 2`; greedy and sampling use one beam.
    `compile` applies to the caches transformers compiles (`compat.compiled_caches()`: static and the others it
    builds as a StaticCache; decode compiles only with a cache of fixed shape): other cached scenarios store "auto"
    (which for them never compiles), and "on" with them is refused.
    Sampling parameters and the engine:
    `kvbench.inputs.decoding` (None where decoding is not sampling; "reference" decodes with the plain-torch loop).
    The `quant_*` fields apply to `cache_implementation="quantized"` only (None elsewhere); left None there, they take
    transformers' defaults (quanto, 4 bits, a residual of 128 tokens; fp8 takes neither bits nor residual).
    """

    prompt_len: int = axis(SIZE, "P{}", short="P", doc="exactly this many prompt tokens (seeded random ids)")
    new_tokens: int = axis(SIZE, "N{}", short="N", doc="exactly this many new tokens per sequence")
    batch_size: int = axis(SIZE, "B{}", 1, short="B", doc="this many sequences")
    use_cache: bool = axis(SWITCH, lambda on: "cache" if on else "nocache", True,
                           doc="`true` or `false`: generate with the KV cache or without it")
    cache_implementation: str | None = axis(
        CACHE_ONLY, "{}", "dynamic", short="cache",
        doc="the cache generate builds: `dynamic`, `static`, `offloaded`, `offloaded_static`, `quantized`, `paged` "
            "(the deprecated names are accepted as input and recorded as the implementation they build)")
    quant_backend: str | None = axis(CACHE_ONLY, "{}", None, short="quant",
                                     doc="the quantized cache's backend: `quanto`, `hqq` or `fp8`")
    quant_nbits: int | None = axis(CACHE_ONLY, "{}", None, glue="", short="bits",
                                   doc="the quantized cache's bits (quanto, hqq; `null` for fp8)")
    quant_residual_length: int | None = axis(
        CACHE_ONLY, "R{}", None, omit=(QUANT_DEFAULTS["quant_residual_length"],), short="residual",
        doc="tokens the quantized cache keeps at full precision (quanto, hqq; `null` for fp8)")
    decoding: str = axis(DECODING, "{}", "greedy", doc="`greedy`, `sample` or `beam`")
    num_beams: int = axis(DECODING, "{}", 1, glue="", omit=(1,), short="beams",
                          doc="beams of beam search (≥ 2); 1 for greedy and sampling")
    temperature: float | None = axis(DECODING, "t{:g}", None, omit=(SAMPLING_DEFAULTS["temperature"],),
                                     short="temp", doc="sampling temperature (sampling only; default 1.0)")
    top_k: int | None = axis(DECODING, "k{}", None, omit=(SAMPLING_DEFAULTS["top_k"],),
                             doc="sampling's top-k (sampling only; default 50, 0: off)")
    top_p: float | None = axis(DECODING, "p{:g}", None, omit=(SAMPLING_DEFAULTS["top_p"],),
                               doc="sampling's top-p (sampling only; default 1.0: off)")
    compile: str | None = axis(
        CACHE_ONLY, "compile-{}", "auto", omit=("auto",),
        doc="decode compiled: `off`, `on`, `auto` (transformers' choice: compiled on CUDA with the static cache); "
            "`on` needs the static cache, other cached scenarios store `auto`")
    engine: str = axis(DECODING, "{}", "generate", omit=("generate",),
                       doc="`generate` (transformers') or `reference` (kvbench's plain-torch loop)")
    seed: int = axis(INPUT, "seed{}", 0, omit=(0,),
                     doc="seeds the prompt's token ids and the sampling (0 unless set in Python)")

    def __post_init__(self):
        for name in ("prompt_len", "new_tokens", "batch_size", "num_beams"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.use_cache, bool):
            raise UserError(f"use_cache must be True or False, got {self.use_cache!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise UserError(f"seed must be an integer >= 0, got {self.seed!r}")
        if not isinstance(self.decoding, str) or self.decoding not in DECODINGS:
            raise UserError(f"decoding must be one of {', '.join(DECODINGS)}, got {self.decoding!r}")
        if self.decoding == "beam" and self.num_beams < 2:
            raise UserError(f"beam decoding needs num_beams >= 2, got {self.num_beams}")
        if self.decoding != "beam" and self.num_beams != 1:
            raise UserError(f"num_beams={self.num_beams} needs decoding='beam', got {self.decoding!r}")
        if not self.use_cache:  # the cache-only axes are not applicable: None, whatever was given
            for name in axes.names(CACHE_ONLY):
                object.__setattr__(self, name, None)
        else:
            self._check_cache()
        check_decoding(self)

    def _check_cache(self) -> None:
        impl = self.cache_implementation
        if isinstance(impl, str) and impl in DEPRECATED_CACHES:
            warnings.warn(DeprecatedCacheName(deprecation_note(impl)), stacklevel=4)
            impl = builds(impl)
            object.__setattr__(self, "cache_implementation", impl)
        if not isinstance(impl, str) or impl not in CACHE_IMPLEMENTATIONS:
            raise UserError(f"cache_implementation must be one of {', '.join(CACHE_IMPLEMENTATIONS)} (or a "
                            f"deprecated name: {', '.join(DEPRECATED_CACHES)}), got {impl!r}")
        if self.compile not in COMPILE_MODES:
            raise UserError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {self.compile!r}")
        if impl not in compat.compiled_caches():
            if self.compile == "on":
                raise UserError(
                    f"compile='on' needs the static cache (or another cache transformers compiles: "
                    f"{', '.join(compat.compiled_caches())}), got cache_implementation={impl!r}"
                )
            object.__setattr__(self, "compile", "auto")
        self._check_quantization()

    def _check_quantization(self) -> None:
        names = ("quant_backend", "quant_nbits", "quant_residual_length")
        if self.cache_implementation != "quantized":  # meaningless there: stored as None (like a grid's other axes)
            for name in names:
                object.__setattr__(self, name, None)
            return
        backend = self.quant_backend or QUANT_DEFAULTS["quant_backend"]
        if backend not in QUANT_BACKENDS:
            raise UserError(f"quant_backend must be one of {', '.join(QUANT_BACKENDS)}, got {backend!r}")
        object.__setattr__(self, "quant_backend", backend)
        if backend == "fp8":
            given = [f"{n}={getattr(self, n)}" for n in names[1:] if getattr(self, n) is not None]
            if given:
                raise UserError(f"the fp8 quantized cache quantizes per tensor and takes no {', '.join(given)}")
            return
        for name in names[1:]:
            value = getattr(self, name)
            value = QUANT_DEFAULTS[name] if value is None else value
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"{name} must be a positive integer, got {value!r}")
            object.__setattr__(self, name, value)
        if self.quant_nbits not in QUANT_BACKENDS[backend]:
            bits = ", ".join(map(str, QUANT_BACKENDS[backend]))
            raise UserError(f"quant_nbits={self.quant_nbits} is not one of the widths the {backend} backend takes ({bits})")

    @property
    def id(self) -> str:
        """A stable, readable name of every axis (`kvbench.inputs.axes.scenario_id`): pytest ids, resume, shards."""
        return axes.scenario_id(self.as_dict())

    @property
    def total_len(self) -> int:
        return self.prompt_len + self.new_tokens

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def generate_kwargs(self) -> dict:
        """Keyword arguments for `model.generate` that produce exactly `new_tokens` tokens.

        compile="on" needs a transformers object as well (`kvbench.measuring.engines.decode.generate_kwargs` adds it).
        """
        kwargs = dict(
            max_new_tokens=self.new_tokens,
            min_new_tokens=self.new_tokens,  # random weights would otherwise stop early on EOS
            use_cache=self.use_cache,
            num_beams=self.num_beams,
            do_sample=self.decoding == "sample",
            return_dict_in_generate=True,
        )
        if self.use_cache:
            kwargs["cache_implementation"] = self.cache_implementation
        if self.cache_implementation == "quantized":
            kwargs["cache_config"] = self.quant_cache_config()
        if self.decoding == "sample":
            kwargs.update(sampling_kwargs(self))
        if self.decoding == "beam":
            kwargs.update(early_stopping=False, length_penalty=1.0)
        if self.compile == "off":
            kwargs["disable_compile"] = True
        return kwargs

    def quant_cache_config(self) -> dict:
        """generate's `cache_config` for the quantized cache (fp8: the backend alone, the only option it accepts)."""
        config = {"backend": self.quant_backend}
        if self.quant_backend != "fp8":
            config.update(nbits=self.quant_nbits, residual_length=self.quant_residual_length)
        return config


axes.register(Scenario)


class DeprecatedCacheName(UserWarning):
    """A deprecated cache name was given: the scenario uses the implementation it builds."""


def builds(name: str) -> str:
    """The implementation a deprecated name builds with the installed transformers (4.x built "hybrid" static)."""
    from .. import compat

    return "static" if name == "hybrid" and compat.hybrid_builds_static() else DEPRECATED_CACHES[name]


def deprecation_note(name: str) -> str:
    return (f"cache implementation {name!r} is deprecated in transformers: measured as {builds(name)!r}, "
            "the cache it builds")


def cache_list(option: str, text: str) -> tuple[list[str], list[str]]:
    """Parse "dynamic,static" into cache implementations, deprecated names mapped to what they build (duplicates
    dropped), and a one-line note for each deprecated name."""
    names = choice_list(option, text, ACCEPTED_CACHES)
    notes = [f"{option}: {deprecation_note(n)}" for n in dict.fromkeys(names) if n in DEPRECATED_CACHES]
    return list(dict.fromkeys(builds(n) if n in DEPRECATED_CACHES else n for n in names)), notes


def grid(
    prompt_lens,
    new_tokens,
    batch_sizes=(1,),
    use_cache=(True, False),
    cache_implementations=("dynamic",),
    decodings=("greedy",),
    num_beams=4,
    seed: int = 0,
    compiles=("auto",),
    sampling: SamplingAxes = SamplingAxes(),
    engines=("generate",),
    quantization: dict | None = None,
) -> list[Scenario]:
    """Every combination, in a stable order, without duplicates (no-cache rows ignore the implementation, rows
    without the static cache the compile setting; beam counts expand beam search only, sampling parameters sampling
    only; the reference engine skips beam search and the static cache: `kvbench.inputs.decoding`).
    `sampling`: the temperatures, top-ks and top-ps of the sampling rows (`SamplingAxes`).
    `quantization`: the `quant_*` fields of the quantized rows (the other rows ignore them)."""
    check_grid_size(prompt_lens, new_tokens, batch_sizes, use_cache, cache_implementations, compiles, decodings,
                    num_beams, sampling, engines)
    seen: dict[Scenario, None] = {}
    for p, n, b, uc, impl, comp in itertools.product(prompt_lens, new_tokens, batch_sizes, use_cache,
                                                     cache_implementations, compiles):
        comp = comp if uc and impl in compat.compiled_caches() else "auto"
        quant = (quantization or {}) if uc and impl == "quantized" else {}
        variants = decoding_variants(decodings, num_beams, sampling, engines, impl if uc else None)
        for dec in variants:
            seen.setdefault(Scenario(p, n, b, uc, impl, seed=seed, compile=comp, **dec, **quant), None)
    return list(seen)


def check_grid_size(prompt_lens, new_tokens, batch_sizes, use_cache, cache_implementations, compiles, decodings,
                    num_beams, sampling: SamplingAxes, engines) -> None:
    """Refuse, before building it, a grid of more than MAX_GRID scenarios (counted from the list lengths: the
    scenarios a grid has at most, duplicates and the reference engine's omissions aside)."""
    n = {name: len(set(values)) for name, values in dict(
        P=prompt_lens, N=new_tokens, B=batch_sizes, temperatures=sampling.temperatures, top_ks=sampling.top_ks,
        top_ps=sampling.top_ps,
        engines=engines, compiles=compiles).items()}
    beams = 1 if isinstance(num_beams, int) else len(set(num_beams))
    impls = set(cache_implementations)
    compiled = impls & set(compat.compiled_caches())
    caches = (len(impls - compiled) + len(compiled) * n["compiles"]) * (True in set(use_cache)) + (
        False in set(use_cache))
    decoding = set(decodings)
    variants = (("greedy" in decoding) + ("beam" in decoding) * beams
                + ("sample" in decoding) * n["temperatures"] * n["top_ks"] * n["top_ps"]) * n["engines"]
    total = n["P"] * n["N"] * n["B"] * caches * variants
    if total > MAX_GRID:
        raise UserError(f"the grid has {total:,} scenarios ({n['P']} prompt lengths x {n['N']} new-token counts x "
                        f"{n['B']} batch sizes x {caches} cache settings x {variants} decodings), more than the "
                        f"{MAX_GRID:,} a sweep takes: give shorter lists")


# The quick default grid of `kvbench run` and the pytest plugin's "quick" grid.
QUICK = dict(prompt_len="16,64,256", new_tokens="32", batch_size="1,4")
MAX_GRID = 100_000  # scenarios one grid may hold


def choice_list(option: str, text: str, allowed) -> list[str]:
    values = list_parts(option, text)
    for value in values:
        if value not in allowed:
            raise UserError(f"{option}: {shown(value)} is not one of {', '.join(allowed)}")
    return values
