"""What the figures share about rows: the scenario columns every figure table keeps, `NoData` (a figure the
records cannot support), and the labels that tell lines apart (run, dtype, cache on/off)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..inputs import axes
from ..inputs.axes import RUN_FIELDS

# The columns that name a row's scenario (every axis Scenario declares), and what tells lines apart beyond a
# figure's own axes: the run, and the decoding and input axes (figures add the cache-only ones where they draw
# cached rows beside each other).
SCENARIO = ["run", *RUN_FIELDS, "scenario_id", *axes.names()]
VARIANT_FIELDS = ["run", *RUN_FIELDS, *axes.names(axes.DECODING, axes.INPUT)]
CACHE_FIELDS = axes.names(axes.CACHE_ONLY)


class NoData(ValueError):
    """The records cannot support this figure; the message says why (shown in place of the figure)."""


# ------------------------------------------------------------------ rows and labels
def need(df: pd.DataFrame, columns: list[str], figure: str) -> None:
    missing = [c for c in columns if c not in df.columns or df[c].isna().all()]
    if missing:
        raise NoData(f"{figure}: the records have no {', '.join(missing)}")
    if df.empty:
        raise NoData(f"{figure}: no scenario ran successfully")


def keep(df: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    return df[[c for c in dict.fromkeys(columns) if c in df.columns]].reset_index(drop=True)


def variant(df: pd.DataFrame, fields=VARIANT_FIELDS) -> pd.Series | None:
    """A label for what tells lines apart beyond the figure's own axes (run, dtype, ...), None if nothing does.

    Fields that only follow the run (each run has one model, one dtype) are left to the run's name. The
    Series is named after the fields it joins (the legend's title).
    """
    text = df[[f for f in fields if f in df.columns]].astype(object)
    # a field some rows lack (sampling parameters) reads "-"; a whole number stored as float (top_k beside NaN) as one
    text = text.map(lambda v: "-" if v is None or v != v else str(int(v)) if isinstance(v, float) and v.is_integer()
                    else str(v))
    varying = [f for f in text.columns if text[f].nunique() > 1]
    if "run" in varying:
        runs = text.groupby(text["run"])
        varying = ["run"] + [f for f in varying if f != "run" and (runs[f].nunique(dropna=False) > 1).any()]
    if not varying:
        return None
    return text[varying].agg(" · ".join, axis=1).rename(" · ".join(varying))


def cache_label(df: pd.DataFrame) -> pd.Series:
    """ "with cache" / "without cache", naming the implementation when the records hold several."""
    cached = df["use_cache"].astype(bool)
    impl = df["cache_implementation"].astype(str) if "cache_implementation" in df else pd.Series("", index=df.index)
    several = impl[cached].nunique() > 1
    return pd.Series(
        np.where(cached, "with cache" + ((" (" + impl + ")") if several else ""), "without cache"), index=df.index
    )
