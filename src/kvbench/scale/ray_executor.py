"""A sweep fanned out over a Ray cluster: one worker (a Ray actor) per GPU, or per CPU node slot where there are no
GPUs, each loading the model once and measuring one scenario at a time; the driver is the only writer of the run
folder and appends each record as it arrives (fsynced, so a killed driver keeps every record already written).

A worker that dies in a scenario (a crash, a killed process, a lost node) is restarted and the scenario retried
once (`max_task_retries=1`); a second failure becomes that scenario's record with status "error", and the sweep
goes on. Ray is an optional extra: `pip install kvbench[ray]`.
"""

from __future__ import annotations

import os
import signal
from datetime import datetime, timezone
from pathlib import Path

from ..errors import UserError
from ..inputs.scenario import Scenario
from ..measuring.models import load_model
from ..measuring.runner import error_record, measure_or_error, run_info
from ..results.store import RunWriter

# Tests set this to a scenario id: the worker measuring it kills itself (a crash Ray sees as a dead worker).
FAULT_ENV = "KVBENCH_RAY_FAULT_SCENARIO"


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'kvbench[ray]' (or pip install ray)") from None
    return ray


class Worker:
    """Holds one loaded model and measures scenarios on it (a Ray actor; plain class for testing)."""

    def __init__(self, spec, load: dict):
        self.loaded = load_model(spec, **load)

    def measure(self, scenario: dict, repeats: int, warmup: int) -> dict:
        scenario = Scenario(**scenario)
        if os.environ.get(FAULT_ENV) == scenario.id:
            os.kill(os.getpid(), signal.SIGKILL)
        return measure_or_error(self.loaded, scenario, repeats, warmup)

    def failed(self, scenario: dict, error: str) -> dict:
        return error_record(self.loaded, Scenario(**scenario), error)

    def info(self, repeats: int, warmup: int, settings: dict) -> dict:
        return run_info(self.loaded, repeats, warmup, settings)


def worker_count(ray, gpus_per_task: float, workers: int | None) -> tuple[int, float]:
    """(workers, GPUs each): one per `gpus_per_task` GPUs of the cluster, or one CPU worker where it has none."""
    if gpus_per_task <= 0:
        raise UserError(f"--gpus-per-task: {gpus_per_task} must be positive")
    gpus = ray.cluster_resources().get("GPU", 0)
    if workers is not None and workers < 1:
        raise UserError(f"--ray-workers: {workers} must be positive")
    if not gpus:
        return workers or 1, 0
    fit = int(gpus // gpus_per_task)
    if fit < 1:
        raise UserError(f"--gpus-per-task {gpus_per_task}: the cluster has {gpus:g} GPUs")
    return min(workers or fit, fit), gpus_per_task


def run_sweep_ray(spec, scenarios: list[Scenario], out_dir: str | Path, *, load: dict | None = None, repeats: int = 5,
                  warmup: int = 1, settings: dict | None = None, address: str | None = None,
                  gpus_per_task: float = 1, workers: int | None = None, progress=None,
                  init_kwargs: dict | None = None) -> list[dict]:
    """Measure every scenario on Ray workers; records are appended to `out_dir` in the order they finish.

    `load` holds `load_model`'s keyword arguments (device, dtype, device_map, ...), used by every worker."""
    ray = import_ray()
    if not scenarios:
        raise UserError("no scenarios to run")
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, **(init_kwargs or {}))
    count, gpus = worker_count(ray, gpus_per_task, workers)
    count = min(count, len(scenarios))
    actor = ray.remote(Worker).options(num_gpus=gpus, num_cpus=0 if gpus else 1, max_restarts=-1,
                                       max_task_retries=1)
    pool = [actor.remote(spec, load or {}) for _ in range(count)]
    dicts = [s.as_dict() for s in scenarios]
    info = ray.get(pool[0].info.remote(repeats, warmup, {**(settings or {}), "executor": "ray", "ray_workers": count}))
    info.update(scenarios=[s.id for s in scenarios], grid=dicts,
                started_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    queue, pending, records = list(dicts), {}, []

    def submit(worker):
        if queue:
            scenario = queue.pop(0)
            pending[worker.measure.remote(scenario, repeats, warmup)] = (worker, scenario)

    with RunWriter(out_dir, info) as writer:
        for worker in pool:
            submit(worker)
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            worker, scenario = pending.pop(ref)
            try:
                record = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as exc:
                message = f"{type(exc).__name__}: the Ray worker failed twice on this scenario"
                record = ray.get(worker.failed.remote(scenario, f"{message} ({str(exc).strip().splitlines()[0]})"))
            writer.write(record)
            records.append(record)
            if progress:
                progress(record)
            submit(worker)
    return records
