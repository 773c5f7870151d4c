"""The axes of a sweep, declared once on Scenario: over random grids (any axes, any values) ids are unique, every
cached row pairs with exactly the uncached row measured for it, a run compared with itself matches every row with
itself (ratio 1.000, exit 0); a new axis declared in one place reaches ids, pairing, compare, summary and resume;
docs/records.md lists each axis once, as declared."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvbench import compat
from kvbench.cli.app import main
from kvbench.inputs import axes
from kvbench.inputs.decoding import SamplingAxes
from kvbench.inputs.axes import DECODING, axis
from kvbench.inputs.scenario import (
    CACHE_IMPLEMENTATIONS,
    DEPRECATED_CACHES,
    DeprecatedCacheName,
    Scenario,
    cache_list,
    grid,
)
from kvbench.measuring.harness.resume import larger_than, split_done
from kvbench.report.compare import compare_table
from kvbench.report.summary import summary_columns
from kvbench.results.frame import speedups
from kvbench.results.schema import json_safe
from kvbench.results.store import load_results

ROOT = Path(__file__).resolve().parents[1]


def fake_record(scenario: Scenario, total_s: float) -> dict:
    """What a measured record holds of a scenario (fields as `measure` writes them), through JSON and back."""
    rec = {"model": "tiny", "device": "cpu", "dtype": "float32", "status": "ok", "scenario_id": scenario.id,
           **scenario.as_dict(), "total_s": total_s, "total_s_repeats": [total_s] * 3, "ttft_s": total_s / 4,
           "decode_step_s": total_s / 8, "kv_cache_bytes": 1000 * scenario.use_cache, "positions_processed": 10}
    return json.loads(json.dumps(json_safe(rec)))


def subset(values, at_least=1):
    return st.lists(st.sampled_from(values), min_size=at_least, max_size=len(values), unique=True)


grids = st.fixed_dictionaries(dict(
    prompt_lens=subset([4, 16, 64]), new_tokens=subset([1, 8]), batch_sizes=subset([1, 2]),
    use_cache=subset([True, False]), cache_implementations=subset(list(CACHE_IMPLEMENTATIONS)),
    decodings=subset(["greedy", "sample", "beam"]), num_beams=subset([2, 4]), compiles=subset(["off", "on", "auto"]),
    sampling=st.builds(SamplingAxes, subset([0.5, 1.0]), subset([0, 50]), subset([0.9, 1.0])),
    engines=subset(["generate", "reference"]), seed=st.sampled_from([0, 7]),
    quantization=st.sampled_from([{}, dict(quant_backend="fp8"), dict(quant_residual_length=64)]),
))


def twin(scenario: Scenario) -> Scenario:
    """The uncached scenario of a cached one: the same scenario with the cache off."""
    return Scenario(**{**scenario.as_dict(), "use_cache": False})


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=grids)
def test_over_random_grids_ids_pairing_and_a_self_comparison_hold(spec, tmp_path_factory):
    scenarios = grid(**spec)
    if not scenarios:
        return
    ids = [s.id for s in scenarios]
    assert len(set(ids)) == len(ids)
    for s in scenarios:
        if not s.use_cache:  # cache-only axes not applicable: null, not a default
            assert all(getattr(s, name) is None for name in axes.names(axes.CACHE_ONLY))
    records = [fake_record(s, 0.01 * (i + 1)) for i, s in enumerate(scenarios)]

    paired = speedups(pd.DataFrame(records).assign(run="r"))
    cached = [s for s in scenarios if s.use_cache]
    assert sorted(paired["scenario_id"]) == sorted(s.id for s in cached)  # each cached row exactly once
    by_id = {s.id: r for s, r in zip(scenarios, records)}
    for row in paired.to_dict("records"):
        expected = twin(next(s for s in cached if s.id == row["scenario_id"])).id
        if expected in by_id:
            assert row["scenario_id_nocache"] == expected
            assert row["speedup"] == pytest.approx(by_id[expected]["total_s"] / row["total_s"])
        else:
            assert pd.isna(row["scenario_id_nocache"])

    run = tmp_path_factory.mktemp("run")
    (run / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["compare", str(run), str(run)]) == 0
    df = load_results(run)
    table = compare_table(pd.concat([df.assign(run="a"), df.assign(run="b")]), "a", ["b"])
    assert len(table) == len(scenarios) and table["scenario"].is_unique
    assert (table["total_s_ratio"] == 1.0).all() and (table["verdict"] == "no change").all()
    assert sorted(table["scenario"]) == sorted(ids)  # nothing compared across: each label is the scenario's id


def test_the_reproduced_sweep_static_compile_off_on_pairs_and_compares_row_for_row(tmp_path):
    """`kvbench run --cache-implementation static --compile off,on`, one size: three scenarios."""
    scenarios = grid([16], [8], [1], cache_implementations=["static"], compiles=["off", "on"])
    assert [s.id for s in scenarios] == ["P16-N8-B1-cache-static-greedy-compile-off",
                                         "P16-N8-B1-cache-static-greedy-compile-on", "P16-N8-B1-nocache-greedy"]
    assert scenarios[2].compile is None and scenarios[2].cache_implementation is None
    records = [fake_record(s, t) for s, t in zip(scenarios, (0.1, 0.05, 0.3))]
    paired = speedups(pd.DataFrame(records).assign(run="r"))
    assert list(paired["speedup"]) == pytest.approx([3.0, 6.0])
    (tmp_path / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["compare", str(tmp_path), str(tmp_path)]) == 0


@dataclasses.dataclass(frozen=True)
class Wider(Scenario):
    """Scenario with one more axis, declared in one place."""

    repetition_penalty: float = axis(DECODING, "rp{:g}", 1.0, omit=(1.0,), short="rep")


def test_a_new_axis_declared_in_one_place_reaches_ids_pairing_compare_summary_and_resume(monkeypatch):
    monkeypatch.setattr(axes, "AXES", axes.declared(Wider))
    scenarios = [Wider(16, 8, use_cache=uc, repetition_penalty=rp) for rp in (1.0, 1.3) for uc in (True, False)]
    assert [s.id for s in scenarios] == ["P16-N8-B1-cache-dynamic-greedy", "P16-N8-B1-nocache-greedy",
                                         "P16-N8-B1-cache-dynamic-greedy-rp1.3", "P16-N8-B1-nocache-greedy-rp1.3"]
    records = [fake_record(s, t) for s, t in zip(scenarios, (0.1, 0.2, 0.1, 0.5))]
    # pairing: each cached row with the uncached row of its own penalty
    paired = speedups(pd.DataFrame(records).assign(run="r"))
    assert dict(zip(paired["scenario_id"], paired["speedup"])) == pytest.approx(
        {"P16-N8-B1-cache-dynamic-greedy": 2.0, "P16-N8-B1-cache-dynamic-greedy-rp1.3": 5.0})
    # compare: a run against itself, row for row
    df = pd.DataFrame(records)
    table = compare_table(pd.concat([df.assign(run="a"), df.assign(run="b")]), "a", ["b"])
    assert len(table) == 4 and (table["total_s_ratio"] == 1.0).all()
    # summary: a column where it varies
    cols = {c.header: c.cells for c in summary_columns(records)[0]}
    assert cols["rep"] == ["1", "1.3"]
    # resume: another penalty is another scenario, never "larger" than one that ran out of memory
    assert split_done(records[:2], scenarios)[1] == scenarios[2:]
    assert not larger_than(Wider(32, 8, repetition_penalty=1.3), Wider(16, 8))
    assert larger_than(Wider(32, 8, repetition_penalty=1.3), Wider(16, 8, repetition_penalty=1.3))


def test_deprecated_cache_names_are_input_mapped_to_what_they_build_not_axis_values():
    from transformers.generation.configuration_utils import (
        ALL_CACHE_IMPLEMENTATIONS,
        DEPRECATED_STATIC_CACHE_IMPLEMENTATIONS,
    )

    assert set(DEPRECATED_STATIC_CACHE_IMPLEMENTATIONS) <= set(DEPRECATED_CACHES)
    assert set(ALL_CACHE_IMPLEMENTATIONS) <= set(CACHE_IMPLEMENTATIONS) | set(DEPRECATED_CACHES)
    assert not set(DEPRECATED_CACHES) & set(CACHE_IMPLEMENTATIONS)
    names, notes = cache_list("--cache-implementation", "dynamic,hybrid,sliding_window,offloaded_hybrid")
    assert names == ["dynamic", "static", "offloaded_static"]
    hybrid = "static" if compat.hybrid_builds_static() else "dynamic"  # 4.x builds a StaticCache for it
    assert notes == [
        "--cache-implementation: cache implementation 'hybrid' is deprecated in transformers: measured as "
        f"'{hybrid}', the cache it builds",
        "--cache-implementation: cache implementation 'sliding_window' is deprecated in transformers: measured as "
        "'static', the cache it builds",
        "--cache-implementation: cache implementation 'offloaded_hybrid' is deprecated in transformers: measured as "
        "'offloaded_static', the cache it builds"]
    with pytest.warns(DeprecatedCacheName, match="'hybrid_chunked' is deprecated"):
        scenario = Scenario(8, 4, cache_implementation="hybrid_chunked")
    assert scenario.cache_implementation == "static" and scenario.id == "P8-N4-B1-cache-static-greedy"


def test_old_records_load_with_null_cache_only_axes_and_pair_as_the_readme_says():
    """The first results/cpu-tiny, kept in tests/data (schema 1: uncached rows stored cache_implementation "none"), with
    the speedups the README quoted from it until the run was remade."""
    df = load_results(ROOT / "tests" / "data" / "schema1-cpu-tiny")
    uncached = df[~df["use_cache"].astype(bool)]
    assert len(uncached) == 6 and uncached["cache_implementation"].isna().all()
    paired = speedups(df).set_index("scenario_id")["speedup"]
    assert len(paired) == 6 and paired.notna().all()
    assert round(paired["P16-N32-B1-cache-dynamic-greedy"], 2) == 1.53
    assert round(paired["P256-N32-B4-cache-dynamic-greedy"], 2) == 7.05


def test_records_documentation_lists_each_axis_once_as_declared():
    text = (ROOT / "docs" / "records.md").read_text()
    section = text.split("## Axes", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| ([\w-]+) \| (.*) \|$", section, flags=re.M)
    assert [(name, kind) for name, kind, _ in rows] == [(a.name, a.kind) for a in axes.declaration()]
    assert [meaning for _, _, meaning in rows] == [a.doc for a in axes.declaration()]
    # each axis once in the whole page: no other table row names it
    others = text.replace(section, "")
    for a in axes.declaration():
        assert not re.search(rf"^\| [^|]*`{a.name}`", others, flags=re.M), a.name


def test_the_plugin_grids_set_declared_axes_and_group_twins_by_their_shared_axes():
    from kvbench.pytest_plugin import GRID_AXES, GRIDS, pair_id

    assert set(GRID_AXES) <= set(axes.names()) and all(set(g) == set(GRID_AXES) for g in GRIDS.values())
    static = grid([16], [8], [1], cache_implementations=["static"], compiles=["off", "on"], seed=3)
    assert {pair_id(s) for s in static} == {"P16-N8-B1-greedy-seed3"}
