"""What one measurement generates: the frozen Scenario, the grid that expands to scenarios, and the parsing of the
comma-separated axis lists the CLI and the pytest plugin take ("16,64,256")."""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

from .. import compat
from ..errors import UserError
from .decoding import (
    check_decoding,
    decoding_label,
    decoding_variants,
    engine_suffix,
    sampling_kwargs,
)
from .lists import MAX_DIGITS, list_parts, shown

DECODINGS = ("greedy", "sample", "beam")
# Every `cache_implementation` transformers 5.x's generate accepts (ALL_CACHE_IMPLEMENTATIONS of
# generation/configuration_utils.py, plus "paged", which routes to continuous batching); tests/test_caches.py checks
# the list against the installed transformers. The deprecated names build what their layer types say (5.24:
# `sliding_window` and `hybrid_chunked` a StaticCache, `hybrid` a DynamicCache): records name the class built.
# `dynamic_full` is 4.x's (and 5.0's): a DynamicCache without sliding layers; releases without it refuse it.
CACHE_IMPLEMENTATIONS = ("dynamic", "static", "offloaded", "offloaded_static", "quantized", "paged",
                         "sliding_window", "hybrid", "hybrid_chunked", "offloaded_hybrid", "offloaded_hybrid_chunked",
                         "dynamic_full")
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

    Without the cache (`use_cache=False`) the cache implementation is meaningless and is stored as "none".
    Beam search needs `num_beams >= 2`; greedy and sampling use one beam.
    `compile` applies to the caches transformers compiles (`compat.compiled_caches()`: static and the others it
    builds as a StaticCache; decode compiles only with a cache of fixed shape): other scenarios store "auto" (which
    for them never compiles), and "on" with them is refused.
    Sampling parameters and the engine:
    `kvbench.inputs.decoding` (None where decoding is not sampling; "reference" decodes with the plain-torch loop).
    The `quant_*` fields apply to `cache_implementation="quantized"` only (None elsewhere); left None there, they take
    transformers' defaults (quanto, 4 bits, a residual of 128 tokens; fp8 takes neither bits nor residual).
    """

    prompt_len: int
    new_tokens: int
    batch_size: int = 1
    use_cache: bool = True
    cache_implementation: str = "dynamic"
    decoding: str = "greedy"
    num_beams: int = 1
    seed: int = 0
    compile: str = "auto"
    temperature: float | None = None  # sampling only; None: 1.0
    top_k: int | None = None  # sampling only; None: 50, 0: off
    top_p: float | None = None  # sampling only; None: 1.0 (off)
    engine: str = "generate"  # or "reference": kvbench.measuring.reference, no generate
    quant_backend: str | None = None
    quant_nbits: int | None = None
    quant_residual_length: int | None = None

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
        if not self.use_cache:
            object.__setattr__(self, "cache_implementation", "none")
        elif not isinstance(self.cache_implementation, str) or self.cache_implementation not in CACHE_IMPLEMENTATIONS:
            raise UserError(
                f"cache_implementation must be one of {', '.join(CACHE_IMPLEMENTATIONS)}, "
                f"got {self.cache_implementation!r}"
            )
        if self.compile not in COMPILE_MODES:
            raise UserError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {self.compile!r}")
        if self.cache_implementation not in compat.compiled_caches():
            if self.compile == "on":
                raise UserError(
                    f"compile='on' needs the static cache (or another cache transformers compiles: "
                    f"{', '.join(compat.compiled_caches())}), got cache_implementation={self.cache_implementation!r}"
                )
            object.__setattr__(self, "compile", "auto")
        check_decoding(self)
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
        """A stable, readable name (used as pytest ids and to match scenarios across runs)."""
        cache = f"cache-{self.cache_implementation}" if self.use_cache else "nocache"
        if self.cache_implementation == "quantized":
            cache += f"-{self.quant_backend}" + (f"{self.quant_nbits}" if self.quant_nbits else "")
            if self.quant_residual_length not in (None, QUANT_DEFAULTS["quant_residual_length"]):
                cache += f"-R{self.quant_residual_length}"
        decoding = decoding_label(self)
        compiled = "" if self.compile == "auto" else f"-compile-{self.compile}"
        return (f"P{self.prompt_len}-N{self.new_tokens}-B{self.batch_size}-{cache}-{decoding}{compiled}"
                f"{engine_suffix(self)}")

    @property
    def total_len(self) -> int:
        return self.prompt_len + self.new_tokens

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def generate_kwargs(self) -> dict:
        """Keyword arguments for `model.generate` that produce exactly `new_tokens` tokens.

        compile="on" needs a transformers object as well (`kvbench.measuring.decode.generate_kwargs` adds it).
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
    temperatures=(1.0,),
    top_ks=(50,),
    top_ps=(1.0,),
    engines=("generate",),
    quantization: dict | None = None,
) -> list[Scenario]:
    """Every combination, in a stable order, without duplicates (no-cache rows ignore the implementation, rows
    without the static cache the compile setting; beam counts expand beam search only, sampling parameters sampling
    only; the reference engine skips beam search and the static cache: `kvbench.inputs.decoding`).
    `quantization`: the `quant_*` fields of the quantized rows (the other rows ignore them)."""
    check_grid_size(prompt_lens, new_tokens, batch_sizes, use_cache, cache_implementations, compiles, decodings,
                    num_beams, temperatures, top_ks, top_ps, engines)
    seen: dict[Scenario, None] = {}
    for p, n, b, uc, impl, comp in itertools.product(prompt_lens, new_tokens, batch_sizes, use_cache,
                                                     cache_implementations, compiles):
        comp = comp if uc and impl in compat.compiled_caches() else "auto"
        quant = (quantization or {}) if uc and impl == "quantized" else {}
        variants = decoding_variants(decodings, num_beams, temperatures, top_ks, top_ps, engines, impl if uc else "none")
        for dec in variants:
            seen.setdefault(Scenario(p, n, b, uc, impl, seed=seed, compile=comp, **dec, **quant), None)
    return list(seen)


def check_grid_size(prompt_lens, new_tokens, batch_sizes, use_cache, cache_implementations, compiles, decodings,
                    num_beams, temperatures, top_ks, top_ps, engines) -> None:
    """Refuse, before building it, a grid of more than MAX_GRID scenarios (counted from the list lengths: the
    scenarios a grid has at most, duplicates and the reference engine's omissions aside)."""
    n = {name: len(set(values)) for name, values in dict(
        P=prompt_lens, N=new_tokens, B=batch_sizes, temperatures=temperatures, top_ks=top_ks, top_ps=top_ps,
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


def int_list(option: str, text: str) -> list[int]:
    """Parse "16,64,256" into positive integers, naming the option and the bad value otherwise."""
    values = []
    for part in list_parts(option, text):
        if not (part.isascii() and part.isdigit()) or int(part) < 1:
            raise UserError(f"{option}: {shown(part)} is not a positive integer (in {shown(text)})")
        if len(part.lstrip("0")) > MAX_DIGITS:
            raise UserError(f"{option}: {shown(part)} is too large (more than {MAX_DIGITS} digits)")
        values.append(int(part))
    return values


def choice_list(option: str, text: str, allowed) -> list[str]:
    values = list_parts(option, text)
    for value in values:
        if value not in allowed:
            raise UserError(f"{option}: {shown(value)} is not one of {', '.join(allowed)}")
    return values
