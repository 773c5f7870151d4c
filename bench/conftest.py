"""kvbench's benchmark suites: `pytest bench/ --benchmark-only` (see docs/bench.md).

The fixtures and --kv-* options come from kvbench's pytest plugin (`kvbench.pytest_plugin`).
"""

import kvbench.pytest_plugin

# pytest-benchmark's machine_info gets a `kvbench` block (device, GPU, driver, CUDA, torch, transformers).
from kvbench.pytest_plugin import (
    update_machine_info as pytest_benchmark_update_machine_info,  # noqa: F401
)


def pytest_addoption(parser, pluginmanager):
    # Installed kvbench registers the plugin through its pytest11 entry point; a source checkout run with
    # PYTHONPATH=src has none, so register it here.
    if not pluginmanager.is_registered(kvbench.pytest_plugin):
        pluginmanager.register(kvbench.pytest_plugin, "kvbench.pytest_plugin")
