"""Evaluation of finished runs: CLIPScore (``eval``) and the backend comparison report (``report``).

Everything here works from run directories alone (``*/run.json`` as ``suppresseot.runs.save_run``
writes them), so results copied off a GPU machine can be scored and compared anywhere. This module
holds what both commands share: finding runs, naming their task, dataset and backend, and small
CSV / markdown helpers (pandas is deliberately not a dependency).
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from ..errors import SuppressEOTError

MISC = "misc"
_NUMBER = re.compile(r"^\d+$")


@dataclass
class Run:
    """One run directory and its ``run.json``."""

    path: Path
    record: dict

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def task_id(self) -> str:
        """The batch's task id (``vangogh-07``), else the folder name without its ``--approach--backend`` suffix."""
        task = self.record.get("task")
        for value in (self.record.get("task_id"), task.get("id") if isinstance(task, dict) else None):
            if value:
                return str(value)
        return self.name.split("--", 1)[0] if "--" in self.name else self.name

    @property
    def approach(self) -> str:
        """The approach that made the edit (``suppresseot``, an ablation or a baseline, see ``approaches``); runs
        written before approaches existed are SuppressEOT's."""
        record = self.record.get("approach")
        name = record.get("name") if isinstance(record, dict) else record
        return str(name) if name else "suppresseot"

    @property
    def backend(self) -> str:
        info = self.record.get("backend")
        if isinstance(info, dict) and info.get("backend"):
            return str(info["backend"])
        if isinstance(info, str) and info:
            return info
        return self.name.rsplit("--", 1)[1] if "--" in self.name else "unknown"

    @property
    def dataset(self) -> str:
        """``dataset`` or the batch task's ``set`` if recorded, else derived from the task id."""
        task = self.record.get("task")
        for value in (self.record.get("dataset"), task.get("set") if isinstance(task, dict) else None):
            if value:
                return str(value)
        return dataset_of(self.task_id)

    @property
    def mode(self) -> str:
        """``add`` for a negative alpha (the token is strengthened, not suppressed), else ``suppress``."""
        alpha = (self.record.get("settings") or {}).get("alpha")
        return "add" if isinstance(alpha, (int, float)) and alpha < 0 else "suppress"

    @property
    def group(self) -> str:
        return group_label(self.dataset, self.mode)

    @property
    def prompt(self) -> str:
        return str(self.record.get("prompt", ""))

    @property
    def token_indices(self) -> list[int]:
        return [int(i) for i in self.record.get("token_indices") or []]

    @property
    def match_key(self) -> tuple:
        """What makes two runs the same experiment when their task ids differ: prompt, tokens, seed (or photo)."""
        inversion = self.record.get("inversion")
        photo = Path(str(inversion.get("image") or "")).name if isinstance(inversion, dict) else None
        return (self.prompt, tuple(self.token_indices), self.record.get("seed"), photo)

    @property
    def wall_seconds(self) -> float | None:
        """The batch's whole-task time if recorded, else the sum of the stage times; a task run in a group
        (``batch --group-size``) gets its share, the group's time over its size."""
        share = max(1, int(self.record.get("group_size") or 1))
        if isinstance(self.record.get("task_seconds"), (int, float)):
            return float(self.record["task_seconds"]) / share
        seconds = [v for v in (self.record.get("seconds") or {}).values() if isinstance(v, (int, float))]
        return float(sum(seconds)) / share if seconds else None

    def file(self, name: str) -> Path | None:
        path = self.path / name
        return path if path.is_file() else None

    @cached_property
    def ito_rows(self) -> list[dict]:
        return read_csv(self.path / "ito.csv")

    @cached_property
    def null_text_rows(self) -> list[dict]:
        return read_csv(self.path / "null_text.csv")


def dataset_of(task_id: str) -> str:
    """``vangogh-07`` -> vangogh, ``coco-car-gen-02`` -> coco-car-gen, ``unsplash-03-a-chair`` -> unsplash.

    The id up to its first all-digit part; ids without one (a hand-named run) are ``misc``.
    """
    parts = task_id.split("-")
    for i, part in enumerate(parts):
        if _NUMBER.match(part):
            return "-".join(parts[:i]) if i > 0 else MISC
    return MISC


def group_label(dataset: str, mode: str) -> str:
    """The row a run is tabulated under: add-mode runs apart, as their score against the prompt should rise."""
    return dataset if mode in ("", "suppress") else f"{dataset} ({mode})"


def find_runs(results_dir: str | os.PathLike) -> list[Run]:
    """Every run directory (``*/run.json``) in ``results_dir``, sorted by name; ``results_dir`` may be one run."""
    folder = Path(results_dir).expanduser()
    if not folder.is_dir():
        raise SuppressEOTError(f"{folder} is not a folder: give the folder of run directories "
                               f"(the --out of `suppress-eot batch`, `generate` or `edit`)")
    paths = [folder / "run.json"] if (folder / "run.json").is_file() else sorted(folder.glob("*/run.json"))
    runs = []
    for path in paths:
        if path.parent.name.startswith("."):  # a run being written (save_run's temporary name)
            continue
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(record, dict):
            runs.append(Run(path.parent, record))
    if not runs:
        raise SuppressEOTError(f"no run directories (*/run.json) in {folder}: give the folder that "
                               f"`suppress-eot batch --out` (or generate/edit --out) wrote")
    return runs


# --- small table helpers --------------------------------------------------------------------------
def read_csv(path: Path) -> list[dict]:
    """Rows of a CSV as dicts of strings; a missing file is no rows."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    except FileNotFoundError:
        return []


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows({k: "" if row.get(k) is None else row.get(k) for k in columns} for row in rows)


def to_float(value) -> float | None:
    """A CSV cell as a finite float, or None for blanks and junk."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def fmt(value, digits: int = 3) -> str:
    """A table cell: blank for missing, fixed digits for floats."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else ""
    return str(value)


def markdown_table(columns: list[str], rows: list[list]) -> str:
    """A GitHub markdown table; ``|`` in cells is escaped so a prompt cannot break the layout."""
    def cell(value) -> str:
        return fmt(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def resolve_device(device: str) -> str:
    """``auto``: the first CUDA GPU if torch sees one, else the CPU."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def short_error(exc: BaseException) -> str:
    """An exception as one short line for an error message."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__
