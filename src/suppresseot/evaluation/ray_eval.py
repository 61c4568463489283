"""``eval --ray``: CLIPScore (and the detector) over a large run folder on Ray workers.

Each worker loads its scorers once; the driver reads the run directories, sends the images in chunks
of runs (the nodes share no folder) and writes the CSV and the table itself, rows in the order a local
``eval`` writes them. The workers compute every column, the preservation measures (SSIM, CLIP image
similarity, SSIM outside the detector's boxes) included, from the images they are sent. A chunk whose
worker died is scored again by another; one given up is listed with a note, as a run with missing
images is.
"""
from __future__ import annotations

from ..ray_pool import RayOptions, RaySession, WorkerPool, describe_worker, plan_workers
from . import Run
from .clipscore import load_pair, run_fields, score_run

CHUNK = 16  # runs a call: small enough to rebalance, large enough to keep a GPU busy


class ScoreWorker:
    """A Ray actor holding a CLIP model and optionally a detector."""

    def __init__(self, clip_model: str, detector_model: str | None, device: str, threshold: float):
        from .clipscore import CLIPScorer

        self.scorer = CLIPScorer(clip_model, device=device)
        self.detector = None
        if detector_model:
            from .detect import Detector

            self.detector = Detector(detector_model, device=device)
        self.threshold = threshold

    def describe(self) -> dict:
        return {**describe_worker(), "device": self.scorer.device}

    def score(self, chunk: list[tuple]) -> list[dict]:
        return [score_run(run, original, suppressed, self.scorer, self.detector, self.threshold)
                for run, original, suppressed in chunk]


def score_runs_ray(runs: list[Run], clip_model: str, detector_model: str | None, device: str, threshold: float,
                   ray_options: RayOptions, progress=None, chunk: int = CHUNK) -> list[dict]:
    """``score_runs`` on Ray workers: one row per run, in ``runs``' order."""
    rows: list[dict | None] = [None] * len(runs)
    starts = list(range(0, len(runs), chunk))
    with RaySession(ray_options, num_cpus=None if ray_options.workers is None
                    else ray_options.workers * ray_options.cpus_per_worker) as ray:
        count, gpus, cpus = plan_workers(ray, ray_options, device)
        pool = WorkerPool(ray, ScoreWorker, (clip_model, detector_model, device, threshold), count, gpus, cpus,
                          ray_options)

        def submit(actor, start: int):
            return actor.score.remote([(run, *load_pair(run)) for run in runs[start:start + chunk]])

        def on_result(start: int, value: list[dict], worker: int) -> None:
            rows[start:start + len(value)] = value
            if progress is not None:
                progress(len(value))

        def on_lost(start: int, why: str) -> None:
            for k, run in enumerate(runs[start:start + chunk]):
                rows[start + k] = {**run_fields(run), "note": f"not scored: {why}"}
            if progress is not None:
                progress(min(chunk, len(runs) - start))

        try:
            left = pool.run(starts, submit, on_result, on_lost)
        finally:
            pool.close()
        for start in left:
            on_lost(start, "no Ray worker left")
    return rows
