"""Beyond one process: a sweep split into deterministic shards (`shards`), shard run folders joined into one run
(`merge`), and a Ray executor that fans the shards of a sweep out over a cluster (`ray_executor`). kvbench uses
existing launchers (a Slurm job array, a shell loop, Ray) and never schedules on its own.

May import: `kvbench.errors`, `kvbench.units`, `kvbench.inputs`, `kvbench.estimate`, `kvbench.results`,
`kvbench.measuring`. Never report, plan or cli.
"""
