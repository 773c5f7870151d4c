"""Capacity planning: `plan` (what fits on a GPU, from `kvbench.estimate.capacity`), `calibration` (the model's
activation, overhead and bandwidth figures fitted to measured runs), `frontier` (the measured longest context per
batch), `figure` (the longest-context figure).

May import: `kvbench.errors`, `kvbench.units`, `kvbench.inputs`, `kvbench.estimate`, `kvbench.results`, and
`kvbench.measuring` (the frontier measures). Never report or cli.
"""
