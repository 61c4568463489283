"""``suppress-eot report RUNS``: the approaches of one folder compared, per set, with 95% intervals.

Every approach writes the same run directory and ``eval`` scores each one from its two images alone, so a
folder holding SuppressEOT, its ablations and the baselines on the same tasks can be tabulated side by side:
per set, one row per approach, each measure's mean with a 95% interval (few tasks give wide intervals, and
the page should say how wide), the best mean of each column marked; then an image grid per task.
"""
from __future__ import annotations

import datetime
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..approaches import APPROACHES
from ..errors import SuppressEOTError
from . import Run, find_runs, markdown_table, read_csv, to_float
from .report import Side, _by_group, _count, _describe, clear_out, grid_lines, grid_pages, tile_grid

CONFIDENCE = 0.95
BETTER = {"higher": "↑", "lower": "↓", "near 0": "→0"}
FLIPPED = {"higher": "lower", "lower": "higher", "near 0": "near 0"}


@dataclass(frozen=True)
class Metric:
    """A column of the methods table: where its value comes from, and which way is better."""

    key: str  # a clipscores.csv column, or one of RUN_METRICS (read from run.json)
    label: str  # the table's header
    better: str  # "higher", "lower" or "near 0"
    meaning: str  # for the page
    needs: str = "`suppress-eot eval`"  # what writes its values (said where no run has one)
    share: bool = False  # a 0/1 column: its mean is a proportion, with a Wilson interval
    flips_in_add: bool = False  # add-mode groups strengthen the words: there the other way is better
    digits: int = 3

    def direction(self, mode: str) -> str:
        return FLIPPED[self.better] if mode == "add" and self.flips_in_add else self.better


DETECTOR = "`suppress-eot eval --detector`"
# The methods table's columns, in order, with their direction (the one list to edit).
METRICS = (
    Metric("suppressed_vs_prompt", "CLIP edit→prompt", "lower", "CLIPScore of the edited image against the original "
           "prompt: lower when what the suppressed words name is gone", flips_in_add=True),
    Metric("delta_prompt", "Δ prompt", "lower", "edited minus original image, both scored against the original "
           "prompt: below 0 when suppression worked", flips_in_add=True),
    Metric("delta_kept", "Δ kept", "near 0", "edited minus original image against the prompt without the suppressed "
           "words: near 0 when the rest of the content is kept"),
    Metric("suppressed_detected", "still detected", "lower", "share of edited images where the detector still finds "
           "the object (`eval --detector`)", needs=DETECTOR, share=True, flips_in_add=True),
    Metric("clip_image_similarity", "CLIP img sim", "higher", "cosine of the original's and the edited image's CLIP "
           "image embeddings (1: unchanged, as an edit that did nothing is)"),
    Metric("ssim", "SSIM", "higher", "structural similarity of the original and the edited image"),
    Metric("ssim_outside_boxes", "SSIM outside boxes", "higher", "SSIM away from the detector's boxes of the object "
           "(`eval --detector`): the change the edit made elsewhere", needs=DETECTOR),
    Metric("seconds", "s / run", "lower", "wall seconds per run (the batch's task time, else the sum of stage times; "
           "a task run in a group gets its share)", needs="the runs' stage times", digits=2),
    Metric("peak_gib", "peak GiB", "lower", "largest peak allocated device memory of the run's stages, GiB (the "
           "group's for a task run in a group; not recorded on the CPU)", needs="a GPU run", digits=2),
)
RUN_METRICS = ("seconds", "peak_gib")
Key = tuple[str, str]  # (approach, backend): a row of the table


# --- values and estimates -------------------------------------------------------------------------
def peak_allocated(run: Run) -> float | None:
    """The largest peak allocated bytes over the run's stages (None where none was recorded: the CPU)."""
    values = [to_float(m.get("allocated")) for m in (run.record.get("memory") or {}).values() if isinstance(m, dict)]
    values = [v for v in values if v is not None]
    return max(values) if values else None


def run_value(metric: Metric, run: Run, scores: dict[str, dict]) -> float | None:
    """One run's value of ``metric``: from run.json, or from its clipscores.csv row (by run directory)."""
    if metric.key == "seconds":
        return run.wall_seconds
    if metric.key == "peak_gib":
        peak = peak_allocated(run)
        return None if peak is None else peak / 2 ** 30
    return to_float(scores.get(run.name, {}).get(metric.key))


def _stats():
    try:
        from scipy import stats
    except ImportError as exc:
        raise SuppressEOTError("the methods report needs scipy for its intervals: pip install 'suppresseot[eval]'") \
            from exc
    return stats


@dataclass
class Estimate:
    """A mean over ``n`` runs and its 95% interval (None where it cannot be had: no runs, or one for a mean)."""

    mean: float | None
    low: float | None = None
    high: float | None = None
    n: int = 0


def estimate(values, share: bool = False, confidence: float = CONFIDENCE) -> Estimate:
    """Mean and interval: Student's t interval of the mean (n − 1 degrees of freedom), or for a share of 0/1
    values Wilson's score interval, which stays inside [0, 1] and is not empty at 0 or n successes."""
    values = [float(v) for v in values if v is not None]
    n = len(values)
    if not n:
        return Estimate(None)
    m = float(np.mean(values))
    if share:
        ci = _stats().binomtest(int(round(sum(values))), n).proportion_ci(confidence, method="wilson")
        return Estimate(m, float(ci.low), float(ci.high), n)
    if n < 2:
        return Estimate(m, n=n)
    sem = float(np.std(values, ddof=1)) / math.sqrt(n)
    if sem == 0:  # identical values: scipy wants a positive scale
        return Estimate(m, m, m, n)
    low, high = _stats().t.interval(confidence, n - 1, loc=m, scale=sem)
    return Estimate(m, float(low), float(high), n)


# --- the table ------------------------------------------------------------------------------------
def approach_order(keys) -> list[Key]:
    """Rows in the order of the approaches table (SuppressEOT first), unknown names after; then backend."""
    known = list(APPROACHES)
    return sorted(set(keys), key=lambda k: (known.index(k[0]) if k[0] in known else len(known), k[0], k[1]))


def row_label(key: Key, with_backend: bool) -> str:
    return f"{key[0]} ({key[1]})" if with_backend else key[0]


def by_key(runs: list[Run]) -> dict[Key, list[Run]]:
    groups: dict[Key, list[Run]] = {}
    for run in runs:
        groups.setdefault((run.approach, run.backend), []).append(run)
    return {key: groups[key] for key in approach_order(groups)}


@dataclass
class Row:
    key: Key
    runs: int
    tasks: int  # of the table's tasks, those this approach ran
    estimates: list[Estimate]
    best: list[bool]


def compare(runs: list[Run], scores: dict[str, dict], metrics, mode: str = "suppress") -> list[Row]:
    """One row per approach (and backend): each metric's estimate over its runs, and whether its mean is the
    column's best. Best is judged on the value as shown (a tie marks both) and only among the approaches that
    ran every task of the table: a mean over other tasks is not comparable (a baseline for photos only in a
    pooled table); never in a column with fewer than two such means."""
    tasks = {r.task_id for r in runs}
    rows = [Row(key, len(members), len({r.task_id for r in members}),
                [estimate([run_value(m, r, scores) for r in members], m.share) for m in metrics],
                [False] * len(metrics)) for key, members in by_key(runs).items()]
    for i, metric in enumerate(metrics):
        shown = {k: _rounded(metric, row.estimates[i].mean) for k, row in enumerate(rows)
                 if row.estimates[i].mean is not None and row.tasks == len(tasks)}
        if len(shown) < 2:
            continue
        direction = metric.direction(mode)
        rank = {"higher": lambda v: -v, "lower": lambda v: v, "near 0": abs}[direction]
        top = min(map(rank, shown.values()))
        for k, value in shown.items():
            rows[k].best[i] = rank(value) == top
    return rows


def _rounded(metric: Metric, value: float) -> float:
    """The value as the table shows it (a share in whole percent): what "best" is judged on."""
    return (round(100 * value) if metric.share else round(value, metric.digits)) + 0.0  # + 0.0: no -0.0


def _number(metric: Metric, value: float) -> str:
    return f"{_rounded(metric, value):.0f}%" if metric.share else f"{_rounded(metric, value):.{metric.digits}f}"


def cell(metric: Metric, est: Estimate, best: bool, runs: int) -> str:
    """``mean [low, high]``, the mean bold when it is the column's best, ``(n=k)`` when not every run has a value."""
    if est.mean is None:
        return ""
    text = f"**{_number(metric, est.mean)}**" if best else _number(metric, est.mean)
    if est.low is not None:
        text += f" [{_number(metric, est.low)}, {_number(metric, est.high)}]"
    return text + (f" (n={est.n})" if est.n != runs else "")


def header(metric: Metric, mode: str) -> str:
    return f"{metric.label} {BETTER[metric.direction(mode)]}"


def methods_table(runs: list[Run], scores: dict[str, dict], metrics, mode: str, with_backend: bool) -> str:
    rows = compare(runs, scores, metrics, mode)
    tasks = len({r.task_id for r in runs})
    body = [[row_label(r.key, with_backend), r.runs, f"{r.tasks}/{tasks}"]
            + [cell(m, e, b, r.runs) for m, e, b in zip(metrics, r.estimates, r.best)] for r in rows]
    return markdown_table(["approach", "n", "tasks"] + [header(m, mode) for m in metrics], body)


def shown_metrics(runs: list[Run], scores: dict[str, dict]) -> list[Metric]:
    """The metrics some run has a value of: without `eval` time and memory; without --detector no detector columns."""
    return [m for m in METRICS if any(run_value(m, r, scores) is not None for r in runs)]


# --- image grids ----------------------------------------------------------------------------------
def method_grids(runs: list[Run], out: Path, size: int, max_tasks: int | None,
                 with_backend: bool) -> list[tuple[str, Path]]:
    """Per set, pages of tasks: the original, then each approach's edited image, in the table's order."""
    written = []
    for group, members in sorted(_by_group(runs).items()):
        keys = list(by_key(members))
        rows = grid_rows(members, keys)[:max_tasks or None]
        headers = ["original"] + [row_label(k, with_backend) for k in keys]
        written += grid_pages(group, lambda i, j: tile_grid(headers, rows[i:j], size), len(rows), out)
    return written


def grid_rows(runs: list[Run], keys: list[Key]) -> list[tuple[str, list[Path | None]]]:
    """Per task (sorted): its id, the first approach's original, each approach's edited image (None: not run)."""
    index: dict[tuple[str, Key], Run] = {}
    for run in sorted(runs, key=lambda r: r.name):  # a rerun (name-2) after the first
        index.setdefault((run.task_id, (run.approach, run.backend)), run)
    rows = []
    for task in sorted({r.task_id for r in runs}):
        found = [index.get((task, key)) for key in keys]
        first = next(run for run in found if run is not None)
        rows.append((task, [first.file("original.png")] + [r and r.file("suppressed.png") for r in found]))
    return rows


# --- the page -------------------------------------------------------------------------------------
def build_methods_report(folder: str | Path, out: str | Path, thumb: int = 128, max_grid_tasks: int | None = 24,
                         title: str | None = None, note: str | None = None) -> Path:
    """Write ``out/report.md`` and its grids comparing the approaches of the runs in ``folder``."""
    folder = Path(folder).expanduser()
    runs = find_runs(folder)
    scores = {row.get("run_dir", ""): row for row in read_csv(folder / "clipscores.csv")}
    _stats()  # before writing anything
    out = clear_out(out)
    with_backend = len({r.backend for r in runs}) > 1
    groups = _by_group(runs)
    metrics = shown_metrics(runs, scores)

    md = [f"# {title or 'SuppressEOT: approaches compared'}", ""]
    if note:
        md += [note, ""]
    keys = by_key(runs)
    md += [f"Written by `suppress-eot report` on {datetime.datetime.now():%Y-%m-%d %H:%M} from `{folder}`: "
           f"{_count(len(runs), 'run')} of {len(keys)} approach{'' if len(keys) == 1 else 'es'} on "
           f"{_count(len({r.task_id for r in runs}), 'task')} in {_count(len(groups), 'set')}.", ""]
    md += _approaches_section(folder, keys, with_backend)
    md += _columns_section(metrics, scores, runs, folder)
    for name, members in sorted(groups.items()):
        md += [f"### {name}", "", methods_table(members, scores, metrics, members[0].mode, with_backend), ""]
    pooled = [r for r in runs if r.mode != "add"]
    if pooled and len(groups) > 1:
        left_out = " Add-mode runs are left out (there the score against the prompt should rise)." \
            if len(pooled) < len(runs) else ""
        md += ["### all sets", "", "Every set's runs pooled: each approach's mean is over the tasks it ran, and some "
               "run on generated images or photos only, so only the approaches that ran every task are marked "
               f"best; compare the others within a set.{left_out}", "",
               methods_table(pooled, scores, metrics, "suppress", with_backend), ""]
    md += _grid_section(runs, out, thumb, max_grid_tasks, with_backend)
    path = out / "report.md"
    path.write_text("\n".join(md) + "\n", encoding="utf-8")
    return path


def _approaches_section(folder: Path, keys: dict[Key, list[Run]], with_backend: bool) -> list[str]:
    summary = read_csv(folder / "summary.csv")
    rows = []
    for key, members in keys.items():
        spec = APPROACHES.get(key[0])
        info = _describe(Side(key[1], folder, members))
        statuses: dict[str, int] = {}
        for row in summary:
            if (row.get("approach") or "suppresseot") == key[0] and row.get("backend", key[1]) == key[1]:
                statuses[row.get("status", "?")] = statuses.get(row.get("status", "?"), 0) + 1
        rows.append([row_label(key, with_backend), len(members), len({r.task_id for r in members}),
                     ", ".join(sorted({r.group for r in members})), info[4], info[7],
                     ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())),
                     spec.summary if spec else "(not in this version's approaches table)"])
    columns = ["approach", "runs", "tasks", "sets", "device", "steps", "batch summary", "what it is"]
    if not summary:
        columns, rows = columns[:6] + columns[7:], [r[:6] + r[7:] for r in rows]
    return ["## Approaches", "", markdown_table(columns, rows), ""]


def _columns_section(metrics: list[Metric], scores: dict, runs: list[Run], folder: Path) -> list[str]:
    md = ["## Methods per set", ""]
    if not scores:
        md += [f"**No CLIPScores**: run `suppress-eot eval {folder}` (with `--detector` for the detector's columns) "
               f"to add the CLIPScore, detector and preservation columns; this page shows time and memory only.", ""]
    md += ["Each cell is the mean over the approach's runs in that set with its 95% interval in brackets: Student's "
           "t interval of the mean (blank for a single run), or Wilson's score interval for a share. *n*: runs; "
           "*tasks*: of the table's tasks, those the approach ran. **Bold**: the best mean of the column among "
           "the approaches that ran every task of the table (ties: all). `(n=k)`: only k of the runs have a "
           "value. Arrows give the "
           "better direction; in add-mode sets (`(add)`, negative alpha: the words are strengthened) the score "
           "against the prompt and the detector's share should rise instead. With few tasks the intervals are "
           "wide: read the means beside them.", "",
           markdown_table(["column", "better", "what it is"], [[m.label, _direction_text(m), m.meaning]
                                                               for m in metrics]), ""]
    missing = [f"{m.label} (needs {m.needs})" for m in METRICS if m not in metrics]
    if missing:
        md += [f"Left out, as no run has a value: {'; '.join(missing)}.", ""]
    return md


def _direction_text(metric: Metric) -> str:
    return metric.better + (" (add: " + FLIPPED[metric.better] + ")" if metric.flips_in_add else "")


def _grid_section(runs: list[Run], out: Path, thumb: int, max_grid_tasks: int | None,
                  with_backend: bool) -> list[str]:
    md = ["## Images", "",
          "Per task: the original, then each approach's edited image (columns in the table's order); a gray tile: "
          "the approach did not run that task" + (f"; at most {max_grid_tasks} tasks per set" if max_grid_tasks
                                                   else "") + ". "
          "The approaches of a task start from the same initial noise (generated images) or the same photo, so "
          "one original serves them all: the first approach's. For a photo each approach's original is its own "
          "reconstruction of the photo and may differ a little from the one shown.", ""]
    return md + grid_lines(method_grids(runs, out, thumb, max_grid_tasks, with_backend))
