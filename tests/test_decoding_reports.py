"""Decoding parameters and the engine in the tables built from records: cached rows pair with their own uncached
twin, compare matches records that predate these axes as the defaults they ran with, the report labels every
variant."""

from __future__ import annotations

import pandas as pd
from synthetic_runs import record, write_run

from kvbench.report.compare import compare_table
from kvbench.report.plots import VARIANT_FIELDS, speedup_table, variant
from kvbench.report.report import load_runs
from kvbench.results.frame import speedups

VARIANTS = [  # (id part, fields)
    ("greedy", dict()),
    ("greedy-reference", dict(engine="reference")),
    ("sample", dict(decoding="sample", temperature=1.0, top_k=50, top_p=1.0)),
    ("sample-t0.5", dict(decoding="sample", temperature=0.5, top_k=50, top_p=1.0)),
    ("sample-t0.5-reference", dict(decoding="sample", temperature=0.5, top_k=50, top_p=1.0, engine="reference")),
]


def decoded(use_cache: bool, part: str, fields: dict, slow: float) -> dict:
    rec = record(16, 8, 1, use_cache, slow=slow)
    cache = "cache-dynamic" if use_cache else "nocache"
    rec.update(dict(temperature=None, top_k=None, top_p=None, engine="generate"), **fields)
    rec["scenario_id"] = f"P16-N8-B1-{cache}-{part}"
    return rec


def run_records(slow_by_part: dict) -> list[dict]:
    return [decoded(c, part, fields, slow_by_part.get(part, 1.0)) for part, fields in VARIANTS for c in (True, False)]


def test_cached_rows_pair_with_their_own_uncached_twin():
    df = pd.DataFrame(run_records({"sample-t0.5": 3.0})).assign(run="r")
    paired = speedups(df)
    assert len(paired) == len(VARIANTS)
    assert (paired["scenario_id_nocache"] == paired["scenario_id"].str.replace("cache-dynamic", "nocache")).all()


def test_compare_matches_old_records_as_the_defaults_they_ran_with(tmp_path):
    old = []  # records written before the axes existed: no temperature, top_k, top_p, engine
    for use_cache in (True, False):
        for decoding in ("greedy", "sample"):
            rec = record(16, 8, 1, use_cache)
            rec.update(decoding=decoding, scenario_id=rec["scenario_id"].replace("greedy", decoding))
            old.append(rec)
    base = write_run(tmp_path / "base", old)
    new = write_run(tmp_path / "new", run_records({"sample-t0.5": 2.0}))
    table = compare_table(load_runs([base, new], one_run_per_path=True), "base", ["new"])
    assert len(table) == 4  # greedy and default sampling, cached and not: once each
    assert (table["total_s_ratio"] == 1).all()


def test_report_labels_each_variant():
    df = pd.DataFrame(run_records({})).assign(run="r")
    table = speedup_table(df)
    labels = variant(table, VARIANT_FIELDS + ["cache_implementation"])
    assert labels.nunique() == len(VARIANTS)
    assert "temperature" in labels.name and "engine" in labels.name
