"""``batch --ray``: a manifest's groups of (task, approach) pairs on Ray workers, the run directories written by
the driver.

The pairs and groups are the local batch's (``Plan.pairs``, ``make_groups``). The workers compute
(``compute_group``, the local batch's own code; one loaded model runs every approach) and return the results
in memory; the driver saves them (``save_group``: atomic run directories ``<id>--<approach>--<backend>``)
and rebuilds summary.csv/failures.csv after every group, exactly as the local batch does. So the state stays
where the local batch keeps it, in the output folder: a rerun after a killed driver skips what is finished,
a group whose worker died is computed again elsewhere and saved once, a pair that raises is recorded and
the others go on.
"""
from __future__ import annotations

import dataclasses
import traceback
from pathlib import Path

from ..errors import SuppressEOTError
from ..ray_pool import RayOptions, RaySession, WorkerPool, describe_worker, plan_workers
from .batch import (BatchOptions, GroupOutcome, _check_free, _note, batch_extra, clear_failure, compute_group,
                    error_line, finish_batch, is_finished, make_groups, progress_bar, record_failure, save_group,
                    start_batch, write_reports)
from .manifests import Manifest, Task
from .pairs import Pair, Plan


def _portable(outcome: GroupOutcome) -> GroupOutcome:
    """Drop what a run directory does not need and only the worker's framework can hold (an inversion's
    start latent and null-text embeddings are backend tensors, possibly on its GPU)."""
    results = [r if r.inversion is None else dataclasses.replace(
        r, inversion=dataclasses.replace(r.inversion, x_T=None, uncond_per_step=[])) for r in outcome.results]
    return dataclasses.replace(outcome, results=results)


class BatchWorker:
    """A Ray actor: loads the model once, then computes the groups of pairs it is given (any approach)."""

    def __init__(self, load_model, manifest: Manifest, options: BatchOptions):
        self.model = load_model()
        self.manifest, self.options = manifest, options
        info = self.model.backend.info()
        self.device = str(getattr(self.model.backend, "device", None) or info.get("device", ""))

    def describe(self) -> dict:
        return {**describe_worker(), "device": self.device}

    def run(self, pairs: list[Pair], photos: list) -> dict:
        """Results of one group, as the local batch would get them: the group in one go, or (if it has one pair,
        or it failed) pair by pair, a failing pair recorded with its error line. Entries name their pairs by
        ``Pair.key``."""
        notes, entries = [], []
        if len(pairs) > 1:
            try:
                outcome = compute_group(self.model, pairs, self.manifest, self.options, self.device,
                                        None if pairs[0].task.type != "real" else photos)
                self.model.backend.release_cache()
                return {"entries": [([p.key for p in pairs], _portable(outcome), None, None)], "notes": notes}
            except Exception as exc:  # noqa: BLE001 - out of memory perhaps: each task alone
                notes.append(f"group of {len(pairs)} failed ({error_line(exc)}): running its tasks one by one")
                self.model.backend.release_cache(graphs=True)
        for pair, photo in zip(pairs, photos):
            try:
                outcome = compute_group(self.model, [pair], self.manifest, self.options, self.device,
                                        None if pair.task.type != "real" else [photo])
                entries.append(([pair.key], _portable(outcome), None, None))
            except Exception as exc:  # noqa: BLE001 - recorded in failures.csv; the batch goes on
                entries.append(([pair.key], None, error_line(exc), traceback.format_exc()))
            self.model.backend.release_cache()
        return {"entries": entries, "notes": notes}


def _load_photo(task: Task, manifest: Manifest):
    """A real task's photo, read here and sent to the worker (the nodes share no folder)."""
    from ..images import load_rgb

    return load_rgb(task.image_path(manifest.base_dir))


def run_batch_ray(manifest: Manifest, tasks: list[Task], load_model, backend: str, out_dir: Path,
                  options: BatchOptions, ray_options: RayOptions, device: str = "auto", progress: bool = True,
                  debug: bool = False, extra: dict | None = None, on_submit=None, plan: Plan | None = None) -> int:
    """``run_batch`` on Ray workers: the pairs of ``tasks`` and the ``plan``'s approaches (default: SuppressEOT
    alone); ``load_model()`` runs in each worker (it is pickled to them). ``on_submit(worker_info, group)`` is
    called after each group of pairs is handed to a worker (its pid, node, GPUs)."""
    failed = 0
    plan = dataclasses.replace(plan or Plan(), backend=backend)
    pairs = plan.pairs(tasks)
    if all(is_finished(out_dir, p.name(backend)) for p in pairs):  # no need for Ray
        start_batch(manifest, pairs, plan, out_dir)
        return finish_batch(pairs, backend, out_dir, failed)
    by_key = {pair.key: pair for pair in pairs}
    extra = batch_extra(manifest, backend, options, extra, plan)
    with RaySession(ray_options, num_cpus=None if ray_options.workers is None
                    else ray_options.workers * ray_options.cpus_per_worker) as ray:
        count, gpus, cpus = plan_workers(ray, ray_options, device)  # before anything is written
        pending = start_batch(manifest, pairs, plan, out_dir)
        _note(f"Ray: {count} worker(s), {gpus:g} GPU and {cpus:g} CPU each, on "
              f"{len([n for n in ray.nodes() if n.get('Alive')])} node(s)")
        pool = WorkerPool(ray, BatchWorker, (load_model, manifest, options), count, gpus, cpus, ray_options)
        bar = progress_bar(manifest, pairs, pending, backend, progress)

        def fail(pair: Pair, line: str, trace: str | None = None) -> None:
            nonlocal failed
            record_failure(out_dir, pair, backend, SuppressEOTError(line or "failed"))
            _note(f"FAILED {pair.label}: {line}")
            if debug and trace:
                _note(trace.rstrip())
            failed += 1
            bar.update(1)

        def submit(actor, group: list[Pair]):
            """The group's call, its photos read here; a pair whose photo cannot be read fails alone."""
            ready, photos = [], []
            for pair in group:
                try:
                    photos.append(_load_photo(pair.task, manifest) if pair.task.type == "real" else None)
                    ready.append(pair)
                except Exception as exc:  # noqa: BLE001
                    fail(pair, error_line(exc))
            if len(ready) < len(group):
                write_reports(out_dir, manifest, plan)
            return actor.run.remote(ready, photos) if ready else None

        def on_result(group: list[Pair], value: dict, worker: int) -> None:
            for note in value["notes"]:
                _note(f"worker {worker}: {note}")
            for keys, outcome, line, trace in value["entries"]:
                done = [by_key[key] for key in keys]
                if outcome is None:
                    fail(done[0], line, trace)
                    continue
                if any(is_finished(out_dir, p.name(backend)) for p in done):  # never twice
                    _note(f"{', '.join(p.label for p in done)}: already finished, result dropped")
                    bar.update(len(done))
                    continue
                try:
                    paths = save_group(outcome, done, out_dir, backend, {**extra, "ray_worker": pool.info[worker]})
                except Exception as exc:  # noqa: BLE001 - disk full, ...: recorded, the batch goes on
                    for pair in done:
                        fail(pair, error_line(exc))
                    continue
                for pair, path in zip(done, paths):
                    clear_failure(out_dir, pair, backend)
                    size = f" in a group of {len(done)}" if len(done) > 1 else ""
                    _note(f"finished {pair.label}{size} on worker {worker} ({outcome.seconds:.1f} s) -> {path}")
                bar.update(len(done))
            write_reports(out_dir, manifest, plan)

        def on_lost(group: list[Pair], why: str) -> None:
            for pair in group:
                fail(pair, why)
            write_reports(out_dir, manifest, plan)

        groups = []
        for group in make_groups(pending, options):
            ready = []
            for pair in group:  # what the local batch checks before running a pair
                try:
                    _check_free(out_dir, [pair], backend)
                    ready.append(pair)
                except Exception as exc:  # noqa: BLE001
                    fail(pair, error_line(exc))
            if ready:
                groups.append(ready)
        write_reports(out_dir, manifest, plan)
        try:
            left = pool.run(groups, submit, on_result, on_lost, on_submit)
        finally:
            bar.close()
            pool.close()  # frees the GPUs at once where the Ray session outlives the batch
        if left:
            _note(f"no Ray worker left: {sum(len(g) for g in left)} run(s) not done (rerun to resume)")
        write_reports(out_dir, manifest, plan)
    return finish_batch(pairs, backend, out_dir, failed)
