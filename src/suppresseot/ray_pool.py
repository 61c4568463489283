"""Ray workers fed from a dynamic queue: the machinery `batch --ray` and `eval --ray` share.

Each worker is a Ray actor that loads its model once (a GPU, or a fraction of one, each) and takes one
unit of work at a time; the driver keeps every ready worker fed (``ray.wait``), so faster workers do
more. Results come back in memory and the driver writes them, so the nodes need no shared folder. A
worker that dies (process killed, node lost) is restarted by Ray up to ``max_restarts`` times and its
unit of work goes back to the front of the queue, for whichever worker is free first.

A Ray started here binds to the loopback address only (nothing listens on or talks to another
address); ``--ray auto`` or ``--ray HOST:PORT`` joins a cluster started with ``ray start``.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from collections import deque
from dataclasses import dataclass

from .cli import whole_number
from .errors import SuppressEOTError

LOOPBACK = "127.0.0.1"


@dataclass
class RayOptions:
    """Where the workers run and how many; None: chosen from the cluster's resources."""

    address: str | None = None  # None or "local": start Ray on this machine; "auto" or HOST:PORT: join a cluster
    workers: int | None = None  # default: one per GPU share (GPUs / gpus_per_worker), 1 on a cluster without GPUs
    gpus_per_worker: float | None = None  # default: 1 where the cluster has GPUs and the device is not the CPU
    cpus_per_worker: float = 1.0  # also the worker's thread count (Ray sets OMP_NUM_THREADS from it)
    dashboard: bool = True
    max_restarts: int = 2  # Ray restarts a dead worker (reloading its model) this many times
    max_retries: int = 2  # a unit of work whose worker died is resubmitted this many times

    @property
    def local(self) -> bool:
        return self.address in (None, "", "local")


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number")
    if not 0 < value <= 64:
        raise argparse.ArgumentTypeError(f"{text}: give a GPU share above 0, e.g. 0.5 (two workers a GPU) or 1")
    return value


def add_ray_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("Ray (several GPUs or machines; pip install 'suppresseot[ray]')")
    g.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run on Ray workers, one a GPU, fed from a queue: without ADDRESS Ray starts on this machine "
                        "(loopback only); 'auto' or HOST:PORT joins a cluster started with `ray start` "
                        "(docs/ray.md)")
    g.add_argument("--workers", type=whole_number(1), default=None, metavar="N",
                   help="number of Ray workers (default: one per GPU share of the cluster; 1 without GPUs)")
    g.add_argument("--gpus-per-worker", type=_fraction, default=None, metavar="SHARE",
                   help="GPU share of each worker, e.g. 0.5 for two workers a GPU (default: 1 where there are GPUs)")
    g.add_argument("--cpus-per-worker", type=_fraction, default=1.0, metavar="N",
                   help="CPU cores of each worker, also its thread count (default: %(default)s)")
    g.add_argument("--no-dashboard", action="store_true",
                   help="do not start Ray's dashboard (a Ray started here serves it on 127.0.0.1:8265)")


def ray_options(args, device: str = "auto") -> RayOptions | None:
    """The parsed --ray options, or None without --ray (the local path)."""
    if getattr(args, "ray", None) is None:
        for flag in ("workers", "gpus_per_worker"):
            if getattr(args, flag, None) is not None:
                raise SuppressEOTError(f"--{flag.replace('_', '-')} needs --ray (the local run uses one process)")
        return None
    if device.startswith("cuda:"):
        raise SuppressEOTError(f"--device {device}: with --ray each worker sees only the GPU Ray gives it; "
                               f"use --device cuda or auto")
    return RayOptions(address=args.ray, workers=args.workers, gpus_per_worker=args.gpus_per_worker,
                      cpus_per_worker=args.cpus_per_worker, dashboard=not args.no_dashboard)


def _note(text: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(text, file=sys.stderr)


def import_ray(options: RayOptions):
    """Ray, set up to stay on the loopback address when it starts here.

    Given 127.0.0.1, Ray replaces it with the machine's own address (to be reachable by other nodes) unless
    clustering is off, which its RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 does on Linux too: then the node's
    address is 127.0.0.1 and every server binds to it. Usage statistics are never reported."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if options.local:
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    try:
        import ray
    except ImportError as exc:
        raise SuppressEOTError(f"--ray needs Ray ({exc}): pip install 'suppresseot[ray]'") from exc
    if options.local:
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False  # read at import: Ray may have been imported before
    return ray


class RaySession:
    """``with RaySession(options) as ray: ...``: Ray started here (shut down at the end) or a cluster joined.
    An already initialised Ray (a notebook, the tests) is used as it is and left running."""

    def __init__(self, options: RayOptions, num_cpus: float | None = None):
        self.options, self.num_cpus = options, num_cpus
        self.owned = False
        self.dashboard_url = None

    def __enter__(self):
        ray = import_ray(self.options)
        if not ray.is_initialized():
            kwargs = dict(logging_level=logging.WARNING, log_to_driver=True)
            if self.options.local:
                # include_dashboard None: the dashboard where ray[default] is installed, none with plain ray
                kwargs.update(address="local", _node_ip_address=LOOPBACK, dashboard_host=LOOPBACK,
                              include_dashboard=None if self.options.dashboard else False)
                if self.num_cpus is not None:
                    kwargs["num_cpus"] = max(self.num_cpus, os.cpu_count() or 1)
            else:
                kwargs.update(address=self.options.address)
            try:
                context = ray.init(**kwargs)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                where = "start Ray here" if self.options.local else f"join the Ray cluster at {self.options.address}"
                raise SuppressEOTError(f"cannot {where} ({str(exc).strip().splitlines()[0]}); "
                                       f"see docs/ray.md") from exc
            self.owned = True
            self.dashboard_url = getattr(context, "dashboard_url", None) or None
            node_ip = context.address_info.get("node_ip_address")
            if self.options.local and node_ip != LOOPBACK:
                ray.shutdown()
                raise SuppressEOTError(f"Ray started on {node_ip}, not {LOOPBACK}: unset RAY_ADDRESS and rerun, or "
                                       f"start a cluster yourself (docs/ray.md) and pass its address to --ray")
        self.ray = ray
        if self.dashboard_url:
            url = self.dashboard_url if "://" in self.dashboard_url else f"http://{self.dashboard_url}"
            _note(f"Ray dashboard: {url}")
        return ray

    def __exit__(self, *exc):
        if self.owned:
            self.ray.shutdown()
        return False


def plan_workers(ray, options: RayOptions, device: str = "auto") -> tuple[int, float, float]:
    """(workers, GPUs each, CPUs each) that the cluster can hold; a request it cannot is one clear error."""
    resources = ray.cluster_resources()
    gpus, cpus = float(resources.get("GPU", 0)), float(resources.get("CPU", 0))
    share = options.gpus_per_worker
    if share is None:
        share = 1.0 if gpus and device != "cpu" else 0.0
    elif gpus == 0:
        raise SuppressEOTError(f"--gpus-per-worker {share:g}: the Ray cluster has no GPU; leave it out to run CPU "
                               f"workers (--workers N)")
    workers = options.workers
    if workers is None:
        workers = int(gpus / share + 1e-9) if share else 1
    if share and workers * share > gpus + 1e-9:
        raise SuppressEOTError(f"{workers} workers x {share:g} GPU need {workers * share:g} GPUs; the Ray cluster has "
                               f"{gpus:g}: lower --workers or --gpus-per-worker")
    if workers * options.cpus_per_worker > cpus + 1e-9:
        raise SuppressEOTError(f"{workers} workers x {options.cpus_per_worker:g} CPU need "
                               f"{workers * options.cpus_per_worker:g} CPUs; the Ray cluster has {cpus:g}: lower "
                               f"--workers or --cpus-per-worker")
    return workers, share, options.cpus_per_worker


def _first_line(exc: BaseException) -> str:
    """The innermost error's message (Ray wraps a worker's exception in its own)."""
    text = str(exc).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):  # Ray's text ends with the original "Type: message" line
        kind = line.split(":", 1)[0]
        if "Error" in kind or "Exception" in kind:
            return line.split(": ", 1)[1] if kind.endswith("SuppressEOTError") else line  # ours: the message
    return lines[0] if lines else type(exc).__name__


def describe_worker() -> dict:
    """Where a worker runs: recorded with its results and shown when it starts."""
    import ray

    return {"pid": os.getpid(), "node": ray.util.get_node_ip_address(),
            "gpus": [str(g) for g in ray.get_gpu_ids()]}


class WorkerPool:
    """``count`` actors of ``actor_cls(*args)``; ``run`` hands them units of work from a queue."""

    def __init__(self, ray, actor_cls, args: tuple, count: int, gpus: float, cpus: float, options: RayOptions):
        self.ray, self.options = ray, options
        remote = ray.remote(actor_cls).options(num_gpus=gpus, num_cpus=cpus, max_restarts=options.max_restarts,
                                               max_task_retries=0)
        self.actors = [remote.remote(*args) for _ in range(count)]
        self.info: list[dict | None] = [None] * count
        self.deaths = [0] * count

    def run(self, jobs: list, submit, on_result, on_lost, on_submit=None) -> list:
        """Feed every job to the first free worker: ``submit(actor, job)`` returns its ObjectRef (or None: nothing
        to run), ``on_result(job, value, worker)`` takes what came back, ``on_lost(job, why)`` a job given up (its
        worker died ``max_retries + 1`` times, or the call itself failed), ``on_submit(worker_info, job)`` is told
        of each hand-over. Returns the jobs left when no worker is."""
        from ray.exceptions import RayActorError, RayError

        ray = self.ray
        queue = deque((job, 0) for job in jobs)
        running = {actor.describe.remote(): (i, None, 0) for i, actor in enumerate(self.actors)}
        idle: deque[int] = deque()
        started_error = None
        while queue or any(job is not None for _, job, _ in running.values()):
            while idle and queue:
                i = idle.popleft()
                job, tries = queue.popleft()
                ref = submit(self.actors[i], job)
                if ref is None:  # nothing left of the job to run
                    idle.append(i)
                    continue
                running[ref] = (i, job, tries)
                if on_submit is not None:
                    on_submit(self.info[i], job)
            if not running:
                break
            ready, _ = ray.wait(list(running), num_returns=1)
            i, job, tries = running.pop(ready[0])
            try:
                value = ray.get(ready[0])
            except RayActorError as exc:
                self.deaths[i] += 1
                alive = self.deaths[i] <= self.options.max_restarts
                if job is None:  # it could not start (its model did not load, ...)
                    started_error = started_error or exc
                    _note(f"Ray worker {i} did not start: {_first_line(exc)}")
                    if alive:
                        running[self.actors[i].describe.remote()] = (i, None, 0)
                    continue
                _note(f"Ray worker {i} died ({_first_line(exc)}); "
                      + ("it restarts; " if alive else "no restarts left; ")
                      + ("its work goes back in the queue" if tries < self.options.max_retries
                         else f"giving its work up after {tries + 1} tries"))
                if alive:
                    running[self.actors[i].describe.remote()] = (i, None, 0)
                if tries < self.options.max_retries:
                    queue.appendleft((job, tries + 1))
                else:
                    on_lost(job, f"its Ray worker died {tries + 1} times running it ({_first_line(exc)})")
                continue
            except RayError as exc:
                idle.append(i)
                on_lost(job, _first_line(exc))
                continue
            if job is None:
                if self.info[i] is None:
                    _note(f"Ray worker {i} ready: {_where(value)}")
                self.info[i] = value
            else:
                on_result(job, value, i)
            idle.append(i)
        if queue and started_error is not None and all(info is None for info in self.info):
            raise SuppressEOTError(f"no Ray worker could start: {_first_line(started_error)}")
        return [job for job, _ in queue]

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)


def _where(info: dict) -> str:
    gpus = info.get("gpus") or []
    return (f"pid {info.get('pid')} on {info.get('node')}, "
            + (f"GPU {','.join(gpus)}" if gpus else "CPU") + (f", {info['device']}" if info.get("device") else ""))
