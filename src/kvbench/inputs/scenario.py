"""What one measurement generates: the frozen Scenario, the grid that expands to scenarios, and the parsing of the
comma-separated axis lists the CLI and the pytest plugin take ("16,64,256")."""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

from ..errors import UserError
from .decoding import (
    check_decoding,
    decoding_label,
    decoding_variants,
    engine_suffix,
    sampling_kwargs,
)

DECODINGS = ("greedy", "sample", "beam")
CACHE_IMPLEMENTATIONS = ("dynamic", "static")
# off: eager decode; on: the decode forward compiled on any device; auto: transformers decides (it compiles the
# decode forward of a static cache on CUDA, never on the CPU).
COMPILE_MODES = ("off", "on", "auto")


@dataclass(frozen=True)
class Scenario:
    """One generate call: exact prompt length, exactly `new_tokens` new tokens per sequence.

    Without the cache (`use_cache=False`) the cache implementation is meaningless and is stored as "none".
    Beam search needs `num_beams >= 2`; greedy and sampling use one beam.
    `compile` applies to the static cache only (transformers compiles decode only with a cache of fixed shape):
    other scenarios store "auto" (which for them never compiles), and "on" with them is refused.
    Sampling parameters and the engine:
    `kvbench.inputs.decoding` (None where decoding is not sampling; "reference" decodes with the plain-torch loop).
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
        if self.cache_implementation != "static":
            if self.compile == "on":
                raise UserError(
                    f"compile='on' needs the static cache, got cache_implementation={self.cache_implementation!r}"
                )
            object.__setattr__(self, "compile", "auto")
        check_decoding(self)

    @property
    def id(self) -> str:
        """A stable, readable name (used as pytest ids and to match scenarios across runs)."""
        cache = f"cache-{self.cache_implementation}" if self.use_cache else "nocache"
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
        if self.decoding == "sample":
            kwargs.update(sampling_kwargs(self))
        if self.decoding == "beam":
            kwargs.update(early_stopping=False, length_penalty=1.0)
        if self.compile == "off":
            kwargs["disable_compile"] = True
        return kwargs


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
) -> list[Scenario]:
    """Every combination, in a stable order, without duplicates (no-cache rows ignore the implementation, rows
    without the static cache the compile setting; beam counts expand beam search only, sampling parameters sampling
    only; the reference engine skips beam search and the static cache: `kvbench.inputs.decoding`)."""
    seen: dict[Scenario, None] = {}
    for p, n, b, uc, impl, comp in itertools.product(prompt_lens, new_tokens, batch_sizes, use_cache,
                                                     cache_implementations, compiles):
        comp = comp if uc and impl == "static" else "auto"
        variants = decoding_variants(decodings, num_beams, temperatures, top_ks, top_ps, engines, impl if uc else "none")
        for dec in variants:
            seen.setdefault(Scenario(p, n, b, uc, impl, seed=seed, compile=comp, **dec), None)
    return list(seen)


# The quick default grid of `kvbench run` and the pytest plugin's "quick" grid.
QUICK = dict(prompt_len="16,64,256", new_tokens="32", batch_size="1,4")


def int_list(option: str, text: str) -> list[int]:
    """Parse "16,64,256" into positive integers, naming the option and the bad value otherwise."""
    values = []
    for part in str(text).split(","):
        part = part.strip()
        if not part.lstrip("-").isdigit() or int(part) < 1:
            raise UserError(f"{option}: {part!r} is not a positive integer (in {text!r})")
        values.append(int(part))
    return values


def choice_list(option: str, text: str, allowed) -> list[str]:
    values = [part.strip() for part in str(text).split(",")]
    for value in values:
        if value not in allowed:
            raise UserError(f"{option}: {value!r} is not one of {', '.join(allowed)}")
    return values
