"""A DetScore-style check: is the suppressed object still detected in the image?

CLIPScore measures the whole image against a caption; a detector asks the narrower question the
method is about (is there still a car?). The detector runs through transformers' pipeline
``zero-shot-object-detection`` (OWLv2 by default; OWL-ViT works the same way); the suppressed words
(or the batch task's ``target``, e.g. "car") are the query. An image counts as "detected" when the best
box for the query scores above the threshold. Those boxes (from the original and the edited image)
are also where the object is, which ``ssim_outside_boxes`` leaves out of the preservation check.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from PIL import Image

from ..errors import SuppressEOTError
from . import Run, resolve_device, short_error
from .preservation import Box

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


@dataclass(frozen=True)
class Found:
    """The detector's answer for one image: the best box's score (0.0 without any) and the boxes above the threshold."""

    best: float = 0.0
    boxes: list[Box] = field(default_factory=list)


def box_of(box: dict) -> Box:
    """The pipeline's ``{"xmin", "ymin", "xmax", "ymax"}`` (pixels of the input image) as a tuple."""
    return int(box["xmin"]), int(box["ymin"]), int(box["xmax"]), int(box["ymax"])


class Detector:
    """transformers' zero-shot object detection pipeline for one query per image: the best score, and the boxes."""

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

    def find(self, images: list[Image.Image], query: str, threshold: float = DEFAULT_THRESHOLD) -> list[Found]:
        """Per image, the best score for ``query`` and the boxes that count as detected (``detected``)."""
        if not query.strip():
            return [Found() for _ in images]
        outputs = self.pipe([{"image": image, "candidate_labels": [query]} for image in images], threshold=0.0)
        return [Found(float(found[0]["score"]) if found else 0.0,  # the pipeline sorts best first
                      [box_of(f["box"]) for f in found if detected(float(f["score"]), threshold)])
                for found in outputs]
