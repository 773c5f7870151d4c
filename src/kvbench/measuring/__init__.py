"""The measuring side, in four rooms around one function: `measure.measure(model, scenario)` runs a scenario on an
engine (`engines`: generate, the plain-torch reference loop, paged batching) with the instruments (`instruments`:
clock, forwards, memory, cache bytes, ...) around each run, on a model from `loading`, into one record (`record`:
its untimed parts); the `harness` sweeps many scenarios into a run folder. Each room imports only the ones before
it: loading, instruments, engines, record, measure, harness (tests/test_layout.py).

May import: `kvbench.errors`, `kvbench.units`, `kvbench.inputs`, `kvbench.estimate` (estimates beside each
measurement), `kvbench.results` (the record schema and the run-folder store). Never report, plan or cli.
"""
