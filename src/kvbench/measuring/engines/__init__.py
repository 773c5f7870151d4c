"""The engines: what runs a scenario once and returns its tokens (`engines.base.Engine`: prepare, run once).

`base` (the interface), `engine` (transformers' `generate` and the engines' table), `reference` (a decoding loop in plain torch), `paged`
(continuous batching with a paged cache), `decode` (compiled decode and the static cache a scenario reuses),
`caches` (which cache implementations can run here), `steps` (one row per generated token, for `kvbench steps`).

A new engine (a vLLM backend, say) goes here: implement `engines.base.Engine`, and register it in
`engines.engine.ENGINES`; `measuring.measure` wraps the instruments around it.
"""
