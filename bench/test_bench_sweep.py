"""The grid sweep: one benchmark of `generate` per scenario of --kv-grid (prompt length x new tokens x batch
size x cache on/off x cache implementation), named by the scenario's id, e.g.
`test_generate[P64-N32-B4-cache-dynamic-greedy]`. Cached and uncached twins share a group, so
pytest-benchmark's table shows what the cache buys."""


def test_generate(kv_benchmark, kv_scenario):
    record = kv_benchmark(kv_scenario)  # checks tokens, forward calls, positions and KV bytes; fails otherwise
    assert record["scenario_id"] == kv_scenario.id
