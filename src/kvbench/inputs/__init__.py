"""Inputs of the flow: what to generate (`scenario`: the frozen Scenario, the grid, axis parsing) and which model
(`configs`: presets, config files, folders and Hub ids resolved to a transformers config; dtype names).

May import: `kvbench.errors`, `kvbench.units`. Everything else may import it.
"""
