"""Results: the record (`schema`), the run folder on disk (`store`: records.jsonl appended per scenario, run.json),
pytest-benchmark JSON files read as records (`benchjson`), and tables derived from records (`frame`: speedups,
spreads).

May import: `kvbench.errors`, `kvbench.units`, `kvbench.inputs`. Never the analytic or measuring side.
"""
