"""Inputs of the flow: what to generate (`scenario`: the frozen Scenario, the grid, axis parsing; `axes`: the axes
Scenario declares) and which model (`configs`: presets, config files, folders and Hub ids resolved to a
transformers config; dtype names).

May import: `kvbench.errors`, `kvbench.units`. Everything else may import it.
"""

from . import scenario  # noqa: F401 - Scenario registers its axes (kvbench.inputs.axes) before anything reads them
