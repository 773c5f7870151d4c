"""The instruments: each reads one quantity around a generate, the same way on the CPU and on CUDA where the
difference is one choice (`clock`: CUDA events or perf_counter).

`clock` (time), `forwards` (forward calls, the positions each processed, compiled or not), `memory` (the allocator's
peak, NVML, RSS), `alloc_peak` (allocated bytes at the peak from allocation events: where and what), `host_memory`
(pinned host bytes of an offloaded cache), `cache_bytes` (the bytes a live cache holds), `profile` (device time per
decode step), `energy` (joules), `load` (the CPU time the process got, other processes' load, clocks), `machine_speed`
(a fixed reference workload), `nvml` (the NVML handle), `environment` (versions, device, driver: the env_* fields).

A new instrument (an energy meter, a power sampler) goes here, and `measuring.measure.run_once` wraps it around
every engine's run.
"""
