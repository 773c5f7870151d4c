"""What a figure carries beside it: its interval, and the contention it was measured under, in words."""

from __future__ import annotations

from ..results.stats import LEVEL
from ..units import missing


def below_level(level) -> bool:
    """Whether an interval covers less than `results.stats.LEVEL` (95%): too few repeats to reach it."""
    return not missing(level) and level < LEVEL - 1e-9


def interval_text(low, high, level=None) -> str:
    """" [1.42-1.61]" (a 95% interval), " [1.42-1.61] 75%" (one covering less: too few repeats for 95%), or ""
    where there is none."""
    if missing(low) or missing(high):
        return ""
    return f" [{low:.3g}-{high:.3g}]" + (f" {level:.0%}" if below_level(level) else "")


def busy(row: dict) -> str | None:
    """Why a row (or a speedup row: either side) was measured under contention, or None."""
    reasons = [row.get(f"contention_reason{side}") for side in ("", "_nocache")
               if row.get(f"contention{side}") is True or row.get(f"contention{side}") == 1.0]
    reasons = [r for r in reasons if isinstance(r, str)] or (["recorded"] if reasons else [])
    return "; ".join(dict.fromkeys(reasons)) or None


def busy_suffix(row: dict) -> str:
    """" (measured under contention: <why>)" or ""."""
    why = busy(row)
    return f" (measured under contention: {why})" if why else ""


def contention_summary(rows: list[dict]) -> str | None:
    """"4 of 12 scenarios measured under contention (other processes kept 1.0 CPU core(s) busy, ...)" or None."""
    flagged = [r for r in rows if r.get("contention") is True or r.get("contention") == 1.0]
    if not flagged:
        return None
    reasons = list(dict.fromkeys(str(r.get("contention_reason")) for r in flagged))
    shown = "; ".join(reasons[:2]) + ("; ..." if len(reasons) > 2 else "")
    return (f"{len(flagged)} of {len(rows)} scenario(s) measured under contention ({shown}): their timings say "
            "more about the machine's load than about the cache; rerun them on an idle machine")
