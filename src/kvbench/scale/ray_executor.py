"""A sweep fanned out over a Ray cluster: one worker (a Ray actor) per GPU, or per machine where the cluster has no
GPUs (workers never share a device: they would time each other's load), each loading the model once and measuring
one scenario at a time with the run's `RunOptions`, those a local sweep measures with; the driver is the only writer of the run
folder and appends each record as it arrives (fsynced, so a killed driver keeps every record already written).

A worker that dies in a scenario (a crash, a killed process, a lost node) is restarted and the scenario retried
once (`max_task_retries=1`); a second failure becomes that scenario's record with status "error", and the sweep
goes on. Ray is an optional extra: `pip install kvbench[ray]`.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..inputs.options import RunOptions
from ..inputs.scenario import Scenario
from ..measuring.loading.models import load_model
from ..measuring.harness.resume import OOMSkips
from ..measuring.harness.runner import end_invocation, error_record, measure_or_error, now_utc, run_info, start_invocation
from ..results.store import RunWriter


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'kvbench[ray]' (or pip install ray)") from None
    return ray


class Worker:
    """Holds one loaded model and measures scenarios on it with the run's options (a Ray actor; plain class for
    testing). The options are the local sweep's `RunOptions`, whole: a worker measures what a local sweep does."""

    def __init__(self, spec, options: RunOptions):
        self.options = options
        self.loaded = load_model(spec, **options.load_kwargs())

    def measure(self, scenario: dict) -> dict:
        return measure_or_error(self.loaded, Scenario(**scenario), self.options)

    def failed(self, scenario: dict, error: str, status: str = "error") -> dict:
        return error_record(self.loaded, Scenario(**scenario), error) | {"status": status}

    def info(self, settings: dict) -> dict:
        return run_info(self.loaded, self.options, settings)


def worker_plan(ray, gpus_per_task: float, workers: int | None) -> tuple[int, dict, str | None]:
    """(workers, each one's Ray resources, a line where fewer workers than asked for run).

    Timing is one generate per device at a time: workers share no GPU (a worker takes `gpus_per_task` GPUs, at
    least one whole GPU), and on a cluster without GPUs each worker has a machine of its own (the CPU of one
    machine is one device), pinned there through Ray's `node:<address>` resource. Concurrency comes only from
    distinct GPUs or distinct machines."""
    if gpus_per_task <= 0:
        raise UserError(f"--gpus-per-task: {gpus_per_task} must be positive")
    if workers is not None and workers < 1:
        raise UserError(f"--ray-workers: {workers} must be positive")
    gpus = ray.cluster_resources().get("GPU", 0)
    if gpus:
        each = max(gpus_per_task, 1.0)
        fit = int(gpus // each)
        if fit < 1:
            raise UserError(f"--gpus-per-task {gpus_per_task}: the cluster has {gpus:g} GPUs")
        count = min(workers or fit, fit)
        shared = (f"--gpus-per-task {gpus_per_task:g}: workers would share a GPU and time side by side; each "
                  "takes a whole GPU" if gpus_per_task < 1 else None)
        capped = (f"--ray-workers {workers}: {count} workers, one per {each:g} GPUs of the cluster's {gpus:g} (two "
                  "workers on one GPU would time each other's load)" if workers and workers > count else None)
        return count, {"num_gpus": each, "num_cpus": 0}, "; ".join(x for x in (shared, capped) if x) or None
    nodes = sorted(n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive") and n["Resources"].get("CPU"))
    count = min(workers or len(nodes), len(nodes))
    note = (f"--ray-workers {workers}: {count} worker{'s' * (count > 1)}, one per machine (the cluster has no GPU; "
            "workers on one machine's CPU would time each other's load)" if workers and workers > count else None)
    return count, {"num_gpus": 0, "num_cpus": 1, "nodes": nodes[:count]}, note


def run_sweep_ray(spec, scenarios: list[Scenario], out_dir: str | Path, options: RunOptions | None = None, *,
                  settings: dict | None = None, address: str | None = None, gpus_per_task: float = 1,
                  workers: int | None = None, progress=None, say=None, init_kwargs: dict | None = None,
                  worker_class=Worker) -> list[dict]:
    """Measure every scenario on Ray workers with `options` (those of a local sweep); records are appended to
    `out_dir` in the order they finish. `say(line)` gets the line saying fewer workers run than asked for.
    Under on_oom "skip-larger" a scenario larger than one that ran out of memory is recorded as skipped once that
    is known (a larger one already in flight on another worker is measured). `worker_class`: tests' faults."""
    ray = import_ray()
    options = options or RunOptions()
    if not scenarios:
        raise UserError("no scenarios to run")
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, **(init_kwargs or {}))
    count, resources, note = worker_plan(ray, gpus_per_task, workers)
    if note and say:
        say(note)
    count = min(count, len(scenarios))
    actor, nodes = ray.remote(worker_class), resources.get("nodes")
    pool = [actor.options(num_gpus=resources["num_gpus"], num_cpus=resources["num_cpus"], max_restarts=-1,
                          max_task_retries=1, resources={f"node:{nodes[i]}": 0.001} if nodes else None
                          ).remote(spec, options) for i in range(count)]
    dicts = {s.id: s.as_dict() for s in scenarios}
    started = now_utc()
    info = ray.get(pool[0].info.remote({**(settings or {}), "executor": "ray", "ray_workers": count}))
    info.update(scenarios=list(dicts), grid=list(dicts.values()), started_utc=started,
                on_oom=options.on_oom or "continue")
    queue, pending, records = list(scenarios), {}, []
    skips = OOMSkips(options.on_oom or "continue")

    with RunWriter(out_dir) as writer:
        invocation, invocations = start_invocation(writer, info, started)
        writer.update_info(info)

        def record(scenario, result):
            skips.saw(scenario, result)
            writer.write(result)
            invocation["measured"].append(scenario.id)
            records.append(result)
            if progress:
                progress(result)

        def submit(worker):
            while queue:
                scenario = queue.pop(0)
                reason = skips.reason(scenario)
                if reason is None:
                    pending[worker.measure.remote(dicts[scenario.id])] = (worker, scenario)
                    return
                record(scenario, ray.get(worker.failed.remote(dicts[scenario.id], reason, "skipped")))

        try:
            for worker in pool:
                submit(worker)
            while pending:
                (ref,), _ = ray.wait(list(pending), num_returns=1)
                worker, scenario = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as exc:
                    message = f"{type(exc).__name__}: the Ray worker failed twice on this scenario"
                    result = ray.get(worker.failed.remote(dicts[scenario.id],
                                                          f"{message} ({str(exc).strip().splitlines()[0]})"))
                record(scenario, result)
                submit(worker)
        finally:
            end_invocation(writer, invocation, invocations)
    return records
