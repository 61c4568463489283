"""A DetScore-style check: is the suppressed object still detected in the image?

CLIPScore measures the whole image against a caption; a detector asks the narrower question the
method is about (is there still a car?). The detector runs through transformers' pipeline
``zero-shot-object-detection`` (OWLv2 by default; OWL-ViT works the same way); the suppressed words
(or the batch task's ``target``, e.g. "car") are the query. An image counts as "detected" when the best
box for the query scores above the threshold.
"""
from __future__ import annotations

import os

from PIL import Image

from ..errors import SuppressEOTError
from . import Run, resolve_device, short_error

DEFAULT_DETECTOR = "google/owlv2-base-patch16-ensemble"
DEFAULT_THRESHOLD = 0.1  # the zero-shot-object-detection pipeline's own default


def detector_query(run: Run, words: str) -> str:
    """What to look for: the batch task's target ("car") if recorded, else the suppressed words."""
    task = run.record.get("task")
    target = task.get("target") if isinstance(task, dict) else None
    return str(target) if target else words


def detected(score: float | None, threshold: float) -> bool:
    """The object counts as present when the best box scores above ``threshold`` (as the pipeline filters)."""
    return score is not None and score > threshold


def count_detected(scores, threshold: float) -> int:
    return sum(detected(s, threshold) for s in scores)


class Detector:
    """transformers' zero-shot object detection pipeline, reduced to the best score for one query per image."""

    def __init__(self, model: str | os.PathLike = DEFAULT_DETECTOR, device: str = "auto"):
        try:
            from transformers import pipeline
        except ImportError as exc:
            raise SuppressEOTError(f"--detector needs transformers and torch ({short_error(exc)})") from exc
        self.name = str(model)
        try:
            self.pipe = pipeline("zero-shot-object-detection", model=str(model), device=resolve_device(device))
        except Exception as exc:
            raise SuppressEOTError(f"cannot load the detector {model!r} ({short_error(exc)}); give a zero-shot object "
                                   f"detector of transformers such as {DEFAULT_DETECTOR}") from exc

    def best_scores(self, images: list[Image.Image], query: str) -> list[float]:
        """The highest score of any box labelled ``query`` in each image (0.0 when there is none)."""
        if not query.strip():
            return [0.0] * len(images)
        outputs = self.pipe([{"image": image, "candidate_labels": [query]} for image in images],
                            threshold=0.0, top_k=1)
        return [float(found[0]["score"]) if found else 0.0 for found in outputs]
