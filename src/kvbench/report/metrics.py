"""The metrics `compare` matches runs on and the ones whose regression fails it: plain names, importable without
pandas (the `kvbench compare` options show them in --help)."""

METRICS = ["total_s", "ttft_s", "decode_step_s", "kv_cache_bytes", "peak_allocated_delta_bytes", "energy_per_token_j",
           "peak_rss_delta_bytes"]  # lower is better
GATED = ("total_s", "kv_cache_bytes", "peak_allocated_delta_bytes")  # a regression in these fails the comparison
