"""Where units run: this process, local worker processes, or a Ray cluster.

Each backend takes the pending units and yields ``(unit, record)`` as units finish, in
completion order; the runner writes each record as it arrives, so whatever finished survives
an interruption. Workers only compute: files are written by the driver, so Ray workers on
other machines need no shared disk (they need the project installed, as the driver has it).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

from evals.systems import run_unit


def _worker_init() -> None:
    import os

    os.environ["OMP_NUM_THREADS"] = "1"


def _result(unit: dict, get) -> dict:
    """The unit's record, or an error record when its worker died (killed for memory, crashed)."""
    try:
        return get()
    except Exception as exc:
        return {"key": unit["key"], "case": unit["case"]["id"], "system": unit["system"]["name"], "variant": unit["variant"],
                "repeat": unit["repeat"], "seed": unit["seed"], "status": "error", "seconds": 0.0,
                "reason": f"worker failed: {type(exc).__name__}: {str(exc)[:300]}"}


class LocalBackend:
    """``workers`` <= 1: units run one after another in this process; otherwise in a pool of
    ``workers`` spawned processes (each loads CHGNet once)."""

    def __init__(self, workers: int = 1):
        self.workers = max(1, int(workers))

    @property
    def label(self) -> str:
        return "this process" if self.workers == 1 else f"{self.workers} local processes"

    def run(self, units: list[dict]) -> Iterator[tuple[dict, dict]]:
        if self.workers == 1:
            for unit in units:
                yield unit, run_unit(unit)
            return
        context = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(self.workers, mp_context=context, initializer=_worker_init)
        try:
            futures = {pool.submit(run_unit, unit): unit for unit in units}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield futures[future], _result(futures[future], future.result)
        finally:  # on Ctrl-C or an error, do not wait for queued units
            pool.shutdown(wait=False, cancel_futures=True)


class RayBackend:
    """Units as Ray tasks (one CPU each) on the cluster at ``address``: ``local`` starts a
    private local instance, ``auto`` joins the cluster ``ray start`` made on this machine,
    ``ray://host:10001`` or ``host:6379`` a remote one."""

    def __init__(self, address: str = "local", num_cpus: int | None = None):
        self.address, self.num_cpus = address, num_cpus

    @property
    def label(self) -> str:
        return f"Ray ({self.address})"

    def run(self, units: list[dict]) -> Iterator[tuple[dict, dict]]:
        try:
            import ray
        except ImportError:
            raise RuntimeError("the Ray backend needs ray: pip install 'ray==2.60.0'") from None
        started_here = not ray.is_initialized()
        if started_here:
            options = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False,
                       "runtime_env": {"env_vars": {"OMP_NUM_THREADS": "1"}}}
            if self.address == "local":
                ray.init(num_cpus=self.num_cpus, **options)
            else:
                ray.init(address=self.address, **options)
        try:
            remote = ray.remote(num_cpus=1, max_retries=0)(run_unit)
            refs = {remote.remote(unit): unit for unit in units}
            pending = list(refs)
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    yield refs[ref], _result(refs[ref], lambda: ray.get(ref))
        finally:
            if started_here:
                ray.shutdown()


def make_backend(workers: int = 1, ray_address: str | None = None):
    """Ray when an address is given (``workers`` CPUs for a private local instance), else local processes."""
    if ray_address:
        return RayBackend(ray_address, num_cpus=max(1, int(workers)) if ray_address == "local" else None)
    return LocalBackend(workers)
