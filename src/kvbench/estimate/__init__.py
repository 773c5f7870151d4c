"""The analytic side: pure functions of a config and a scenario; no model is run here.

`kvcache` (KV-cache bytes, exact to the byte for dynamic and static caches), `weights` (parameter count and bytes),
`positions` (positions each forward processes), `roofline` (bytes a decode step reads, the bandwidth floor),
`capacity` (the memory and time model of one generate, for the planner), `gpus` (the bundled GPU table).

May import: `kvbench.errors`, `kvbench.units`, `kvbench.inputs`. Never the measuring side, results, report, plan
or cli.
"""
