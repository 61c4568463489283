"""``suppress-eot report``: two sets of runs (typically torch vs jittor) compared in one markdown report.

The earlier study's comparison figures were made by hand; this writes them all from the run
directories: ITO loss curves, seconds per iteration, memory, time and CLIPScore per dataset, image
grids, and the parity numbers of tasks both sides ran. Plots use matplotlib's Agg backend (no display).
With one folder the report compares its approaches instead (``methods``, which draws its grids with this
module's ``tile_grid``).
"""
from __future__ import annotations

import datetime
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..errors import SuppressEOTError
from . import Run, find_runs, markdown_table, mean, read_csv, to_float

STAGE_ORDER = ["inversion_text_encoding", "vae_encode", "ddim_inversion", "null_text", "text_encoding",
               "swr_ito_sampling", "vae_decode"]
COLORS = ("tab:blue", "tab:orange")
PLOTS = ("ito_loss.png", "seconds_per_iteration.png", "memory_per_stage.png", "memory_trace.png")
GRID_ROWS = 8  # tasks per grid image
EPS = 1e-12


@dataclass
class Side:
    """One set of runs: a label, its folder, its runs, and what ``eval`` and ``batch`` wrote beside them."""

    label: str
    folder: Path
    runs: list[Run]
    scores: dict[str, dict] = field(default_factory=dict)  # clipscores.csv rows by run_dir
    summary: list[dict] = field(default_factory=list)  # summary.csv rows, if the batch wrote one


def load_side(folder: str | Path, label: str) -> Side:
    """Runs of ``folder``; when it holds several backends and ``label`` names one, only that backend's."""
    folder = Path(folder).expanduser()
    runs = find_runs(folder)
    if len({r.backend for r in runs}) > 1 and any(r.backend == label for r in runs):
        runs = [r for r in runs if r.backend == label]
    scores = {row.get("run_dir", ""): row for row in read_csv(folder / "clipscores.csv")}
    backends = {r.backend for r in runs}
    summary = [row for row in read_csv(folder / "summary.csv") if row.get("backend") in backends]
    return Side(label, folder, runs, scores, summary)


def match_runs(a: list[Run], b: list[Run]) -> list[tuple[Run, Run]]:
    """Pairs of runs of the same task and approach: same task id, else identical prompt, tokens and seed (or
    photo). The approach is part of both keys, so folders holding several approaches pair each with its own."""
    by_id, by_key = {}, {}
    for run in b:
        by_id.setdefault((run.task_id, run.approach), run)
        by_key.setdefault((run.match_key, run.approach), run)
    pairs, used = [], set()
    for run in a:
        other = by_id.get((run.task_id, run.approach))
        if other is None or other.path in used:
            other = by_key.get((run.match_key, run.approach))
        if other is not None and other.path not in used:
            pairs.append((run, other))
            used.add(other.path)
    return pairs


def several_approaches(runs: list[Run]) -> bool:
    return len({r.approach for r in runs}) > 1


def task_label(run: Run, with_approach: bool) -> str:
    """A task's name in tables and grids; with several approaches the approach too (a task has a run of each)."""
    return f"{run.task_id} · {run.approach}" if with_approach else run.task_id


# --- parity ---------------------------------------------------------------------------------------
def _max_rel(rows_a: list[dict], rows_b: list[dict], keys: tuple[str, ...], column: str) -> tuple[float | None, int]:
    """max |a-b| / |b| over the rows both logs have (matched by ``keys``), and how many there were."""
    index = {tuple(r.get(k) for k in keys): to_float(r.get(column)) for r in rows_b}
    rel = []
    for row in rows_a:
        va, vb = to_float(row.get(column)), index.get(tuple(row.get(k) for k in keys))
        if va is not None and vb is not None:
            rel.append(abs(va - vb) / max(abs(vb), EPS))
    return (max(rel) if rel else None), len(rel)


def parity(a: Run, b: Run) -> dict:
    """How far A is from B on one task: final latents, ITO total loss, null-text loss (B is the reference)."""
    row = {"task": a.task_id, "dataset": a.dataset}
    la, lb = a.file("final_latents.npy"), b.file("final_latents.npy")
    if la is not None and lb is not None:
        xa, xb = np.load(la).astype(np.float64), np.load(lb).astype(np.float64)
        if xa.shape == xb.shape:
            diff = xa - xb
            row["latent_rel"] = float(np.linalg.norm(diff) / max(np.linalg.norm(xb), EPS))
            row["latent_max_abs"] = float(np.abs(diff).max())
            if xa.ndim and xa.shape[0] == 2:  # (original, suppressed): the original branch has no ITO
                for i, branch in enumerate(("original", "suppressed")):
                    row[f"latent_rel_{branch}"] = float(np.linalg.norm(diff[i]) / max(np.linalg.norm(xb[i]), EPS))
        else:
            row["note"] = f"latent shapes differ: {xa.shape} vs {xb.shape}"
    row["ito_rel"], row["ito_rows"] = _max_rel(a.ito_rows, b.ito_rows, ("step", "iteration"), "total")
    row["null_rel"], row["null_rows"] = _max_rel(a.null_text_rows, b.null_text_rows, ("step", "iteration"), "loss")
    return row


# --- plots ----------------------------------------------------------------------------------------
def _pyplot():
    try:
        import matplotlib
    except ImportError as exc:
        raise SuppressEOTError("report needs matplotlib: pip install 'suppresseot[eval]'") from exc
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return path


def _ito_curve(run: Run) -> tuple[np.ndarray, np.ndarray]:
    """ITO total loss against step, each step's iterations spread over [step, step + 1)."""
    rows = [(int(to_float(r["step"])), int(to_float(r["iteration"])), to_float(r["total"])) for r in run.ito_rows
            if to_float(r.get("step")) is not None and to_float(r.get("iteration")) is not None
            and to_float(r.get("total")) is not None]
    if not rows:
        return np.zeros(0), np.zeros(0)
    per_step = max(i for _, i, _ in rows) + 1
    return np.array([s + i / per_step for s, i, _ in rows]), np.array([v for _, _, v in rows])


def plot_ito_loss(sides: list[Side], path: Path) -> Path | None:
    """Every task's curve (thin), the mean and +-1 std band per side, and both means together."""
    curves = [[c for c in map(_ito_curve, side.runs) if c[0].size] for side in sides]
    if not any(curves):
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(sides) + 1, figsize=(5 * (len(sides) + 1), 3.8), sharey=True)
    for ax, side, side_curves, color in zip(axes, sides, curves, COLORS):
        ax.set_title(f"{side.label} ({_count(len(side_curves), 'run')})")
        for x, y in side_curves:
            ax.plot(x, y, color=color, alpha=0.3, linewidth=0.8, marker=".", markersize=3)
        if side_curves:
            xs, mu, sd = _mean_band(side_curves)
            for target in (ax, axes[-1]):
                target.plot(xs, mu, color=color, linewidth=2, marker="o", markersize=3, label=f"{side.label} mean")
                target.fill_between(xs, mu - sd, mu + sd, color=color, alpha=0.2)
    axes[-1].set_title("mean ± std")
    axes[-1].legend()
    for ax in axes:
        ax.set_xlabel("DDIM step (iterations within a step)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("ITO total loss")
    return _save(fig, path)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _mean_band(curves) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    values: dict[float, list[float]] = {}
    for x, y in curves:
        for xi, yi in zip(x.tolist(), y.tolist()):
            values.setdefault(round(xi, 6), []).append(yi)
    xs = np.array(sorted(values))
    return xs, np.array([np.mean(values[x]) for x in xs]), np.array([np.std(values[x]) for x in xs])


def iteration_seconds(side: Side) -> dict[str, list[float]]:
    """Seconds of every null-text and ITO iteration of a side's runs (the per-iteration cost of each loop)."""
    out = {}
    for name, attribute in (("null-text", "null_text_rows"), ("ITO", "ito_rows")):
        out[name] = [v for run in side.runs for v in (to_float(r.get("seconds")) for r in getattr(run, attribute))
                     if v is not None]
    return out


def plot_iteration_seconds(sides: list[Side], path: Path) -> Path | None:
    data = [iteration_seconds(side) for side in sides]
    if not any(values for d in data for values in d.values()):
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    for ax, loop in zip(axes, ("null-text", "ITO")):
        values = [d[loop] for d in data]
        ax.set_title(f"{loop}: seconds per iteration")
        if not any(values):
            ax.text(0.5, 0.5, f"no {loop} iterations", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            continue
        shown = [(side.label, v, c) for side, v, c in zip(sides, values, COLORS) if v]
        box = ax.boxplot([v for _, v, _ in shown], patch_artist=True, widths=0.5, medianprops={"color": "black"})
        ax.set_xticks(range(1, len(shown) + 1), [f"{label}\n(n={len(v)})" for label, v, _ in shown])
        for patch, (_, _, color) in zip(box["boxes"], shown):
            patch.set_facecolor(color)
            patch.set_alpha(0.5)
        ax.set_ylabel("seconds")
        ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def peak_memory(side: Side) -> dict[str, dict[str, float]]:
    """Highest peak per stage over a side's runs (bytes): allocator allocated/reserved, NVML over the whole task."""
    out: dict[str, dict[str, float]] = {}
    for run in side.runs:
        for stage, mem in (run.record.get("memory") or {}).items():
            for kind in ("allocated", "reserved"):
                value = to_float(mem.get(kind)) if isinstance(mem, dict) else None
                if value is not None:
                    slot = out.setdefault(stage, {})
                    slot[kind] = max(slot.get(kind, 0.0), value)
        nvml = to_float((run.record.get("nvml") or {}).get("peak_used_bytes"))
        if nvml is not None:
            slot = out.setdefault("whole task (NVML)", {})
            slot["nvml"] = max(slot.get("nvml", 0.0), nvml)
    return out


def _stage_order(stages) -> list[str]:
    stages = set(stages)
    return [s for s in STAGE_ORDER if s in stages] + sorted(stages - set(STAGE_ORDER))


def plot_peak_memory(sides: list[Side], path: Path) -> Path | None:
    peaks = [peak_memory(side) for side in sides]
    stages = _stage_order(s for p in peaks for s in p)
    if not stages:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(stages) + 2), 4))
    width = 0.8 / len(sides)
    x = np.arange(len(stages))
    for k, (side, peak, color) in enumerate(zip(sides, peaks, COLORS)):
        offset = x - 0.4 + width * (k + 0.5)
        reserved = [peak.get(s, {}).get("reserved", 0) / 2 ** 30 for s in stages]
        used = [(peak.get(s, {}).get("allocated") or peak.get(s, {}).get("nvml") or 0) / 2 ** 30 for s in stages]
        ax.bar(offset, reserved, width, color="none", edgecolor=color, hatch="//", linewidth=1)
        ax.bar(offset, used, width, color=color, alpha=0.75, label=side.label)
    ax.set_xticks(x, [s.replace("_", " ") for s in stages], rotation=20, ha="right")
    ax.set_ylabel("GiB")
    ax.set_title("peak memory per stage (solid: allocated or NVML used, hatched: reserved)")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


def memory_traces(side: Side) -> list[tuple[np.ndarray, np.ndarray]]:
    traces = []
    for run in side.runs:
        rows = read_csv(run.path / "memory_trace.csv")
        points = [(to_float(r.get("seconds")), to_float(r.get("nvml_used_bytes"))) for r in rows]
        points = [(t, m) for t, m in points if t is not None and m is not None]
        if points:
            traces.append((np.array([t for t, _ in points]), np.array([m for _, m in points]) / 2 ** 30))
    return traces


def plot_memory_traces(sides: list[Side], path: Path) -> Path | None:
    traces = [memory_traces(side) for side in sides]
    if not any(traces):
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 3.8))
    for side, side_traces, color in zip(sides, traces, COLORS):
        for i, (t, m) in enumerate(side_traces):
            ax.plot(t, m, color=color, alpha=0.5, linewidth=0.8,
                    label=f"{side.label} ({_count(len(side_traces), 'run')})" if i == 0 else None)
    ax.set_xlabel("seconds since the task started")
    ax.set_ylabel("GiB used (NVML)")
    ax.set_title("device memory over each task")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


# --- image grids ----------------------------------------------------------------------------------
def _thumb(path: Path | None, size: int) -> Image.Image:
    if path is None:
        return Image.new("RGB", (size, size), "lightgray")
    with Image.open(path) as image:
        return image.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)


def _wrap(text: str, chars: int, max_lines: int = 4) -> str:
    """``text`` in lines of at most ``chars`` characters, broken after a '-' or ' ' where it can be."""
    lines = []
    for part in text.split("\n"):
        while len(part) > chars:
            cut = max(part.rfind("-", 0, chars), part.rfind(" ", 0, chars)) + 1 or chars
            lines.append(part[:cut].rstrip())
            part = part[cut:]
        lines.append(part)
    return "\n".join(lines[:max_lines])


def tile_grid(headers: list[str], rows: list[tuple[str, list[Path | None]]], size: int) -> Image.Image:
    """Image tiles under column headers, each row's label on its left; a missing image is a gray tile."""
    font = ImageFont.load_default()
    name_w, pad, line_h = 150, 4, 12
    chars = max(4, size // 6)  # what fits above a thumbnail in the default font
    heads = [_wrap(h, chars) for h in headers]
    head_h = 6 + line_h * max(h.count("\n") + 1 for h in heads)
    grid = Image.new("RGB", (name_w + len(headers) * (size + pad), head_h + len(rows) * (size + pad)), "white")
    draw = ImageDraw.Draw(grid)
    for c, head in enumerate(heads):
        draw.multiline_text((name_w + c * (size + pad) + 2, 2), head, fill="black", font=font)
    for r, (label, paths) in enumerate(rows):
        y = head_h + r * (size + pad)
        draw.multiline_text((4, y + 4), _wrap(label, 22, max_lines=4), fill="black", font=font)
        for c, path in enumerate(paths):
            grid.paste(_thumb(path, size), (name_w + c * (size + pad), y))
    return grid


def image_grid(pairs: list[tuple[Run, Run]], labels: list[str], size: int) -> Image.Image:
    """Rows of tasks: A original | A suppressed | B original | B suppressed, the task id on the left."""
    headers = [f"{label}\n{branch}" for label in labels for branch in ("original", "suppressed")]
    with_approach = several_approaches([a for a, _ in pairs])
    rows = [(task_label(a, with_approach), [a.file("original.png"), a.file("suppressed.png"),
                                            b.file("original.png"), b.file("suppressed.png")]) for a, b in pairs]
    return tile_grid(headers, rows, size)


def grid_pages(dataset: str, make, count: int, out: Path) -> list[tuple[str, Path]]:
    """``grid-<dataset>-N.png``, ``GRID_ROWS`` tasks a page: ``make(start, stop)`` draws one page."""
    name = "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in dataset)
    written = []
    for page, start in enumerate(range(0, count, GRID_ROWS), 1):
        path = out / f"grid-{name}-{page}.png"
        make(start, start + GRID_ROWS).save(path, optimize=True)
        written.append((dataset, path))
    return written


def write_grids(pairs: list[tuple[Run, Run]], labels: list[str], out: Path, size: int,
                max_tasks: int | None) -> list[tuple[str, Path]]:
    """One or more grid PNGs per dataset (``GRID_ROWS`` tasks each), at most ``max_tasks`` tasks per dataset."""
    by_dataset: dict[str, list] = {}
    for pair in sorted(pairs, key=lambda p: (p[0].task_id, p[0].approach)):
        by_dataset.setdefault(pair[0].group, []).append(pair)
    written = []
    for dataset, members in sorted(by_dataset.items()):
        members = members[:max_tasks] if max_tasks else members
        written += grid_pages(dataset, lambda i, j: image_grid(members[i:j], labels, size), len(members), out)
    return written


# --- tables ---------------------------------------------------------------------------------------
def _by_group(runs: list[Run]) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.group, []).append(run)
    return groups


def _score(side: Side, runs: list[Run], column: str) -> float | None:
    return mean(to_float(side.scores.get(run.name, {}).get(column)) for run in runs)


def dataset_rows(sides: list[Side]) -> list[list]:
    """Per dataset: runs, mean wall seconds per run, and (if eval ran) the mean CLIPScore deltas, per side."""
    groups = [_by_group(side.runs) for side in sides]
    names = sorted(set().union(*groups)) + ["all"]
    rows = []
    for name in names:
        members = [side.runs if name == "all" else g.get(name, []) for side, g in zip(sides, groups)]
        times = [mean(r.wall_seconds for r in m) for m in members]
        row = [name] + [len(m) for m in members] + ["" if t is None else f"{t:.2f}" for t in times]
        for column in ("suppressed_vs_prompt", "delta_prompt", "delta_kept"):
            row += [_score(side, m, column) for side, m in zip(sides, members)]
        rows.append(row)
    return rows


def dataset_columns(labels: list[str]) -> list[str]:
    a, b = labels
    return (["dataset", f"runs {a}", f"runs {b}", f"time {a} (s)", f"time {b} (s)",
             f"CLIP supp→prompt {a}", f"CLIP supp→prompt {b}", f"Δ prompt {a}", f"Δ prompt {b}",
             f"Δ kept {a}", f"Δ kept {b}"])


def _summary_status(side: Side) -> str:
    if not side.summary:
        return ""
    counts: dict[str, int] = {}
    for row in side.summary:
        counts[row.get("status", "?")] = counts.get(row.get("status", "?"), 0) + 1
    return ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))


def _describe(side: Side) -> list:
    infos = [r.record.get("backend") if isinstance(r.record.get("backend"), dict) else {} for r in side.runs]

    def values(key):
        return ", ".join(sorted({str(i.get(key)) for i in infos if i.get(key) is not None})) or ""

    def version(value):  # the Jittor backend records a dict of versions and flags under "jittor"
        return value.get("version") if isinstance(value, dict) else value

    versions = sorted({f"{k} {version(i[k])}" for i in infos for k in ("torch", "jittor", "diffusers")
                       if i.get(k) and version(i[k])})
    steps = sorted({str((r.record.get("sampling") or {}).get("num_steps")) for r in side.runs})
    iterations = sorted({str((r.record.get("settings") or {}).get("iterations")) for r in side.runs})
    return [side.label, str(side.folder), len(side.runs), values("backend"), values("gpu") or values("device"),
            values("dtype"), ", ".join(versions), "/".join(steps), "/".join(iterations), _summary_status(side)]


def _stat(values: list[float], fn) -> float | None:
    return float(fn(values)) if values else None


# --- the report -----------------------------------------------------------------------------------
def clear_out(out: str | Path) -> Path:
    """The report's folder, writable, without a previous report's figures (a rerun replaces them)."""
    from ..runs import check_writable

    out = check_writable(out)
    for stale in [*(out / name for name in PLOTS), *out.glob("grid-*.png")]:
        stale.unlink(missing_ok=True)
    return out


def build_report(folder_a: str | Path, folder_b: str | Path, out: str | Path, labels: list[str] | None = None,
                 thumb: int = 128, max_grid_tasks: int | None = 24, title: str | None = None,
                 note: str | None = None) -> Path:
    """Write ``out/report.md`` and its PNGs comparing two folders (or one folder and --labels naming its
    backends); returns the report's path. One folder's approaches: ``methods.build_methods_report``."""
    labels = list(labels or ["A", "B"])
    if len(labels) != 2 or labels[0] == labels[1]:
        raise SuppressEOTError("--labels takes two different names, e.g. --labels torch jittor")
    sides = [load_side(folder_a, labels[0]), load_side(folder_b, labels[1])]
    if {r.path for r in sides[0].runs} == {r.path for r in sides[1].runs}:
        backends = sorted({r.backend for r in sides[0].runs})
        hint = " ".join(backends[:2]) if len(backends) > 1 else "torch jittor"
        raise SuppressEOTError(f"both sides are the same runs (backends: {', '.join(backends)}): give two folders, or "
                               f"one folder holding both backends and --labels naming them, e.g. --labels {hint}; "
                               f"or one folder alone to compare its approaches")
    out = clear_out(out)
    pairs = match_runs(sides[0].runs, sides[1].runs)
    a, b = labels
    md = [f"# {title or f'SuppressEOT: {a} vs {b}'}", ""]
    if note:
        md += [note, ""]
    md += [f"Written by `suppress-eot report` on {datetime.datetime.now():%Y-%m-%d %H:%M}. "
           f"{_count(len(pairs), 'task')} ran on both sides (matched by task id and approach, else by "
           f"prompt, tokens, seed and approach).", ""]
    approaches = sorted({r.approach for side in sides for r in side.runs})
    if len(approaches) > 1:
        md += [f"These folders hold several approaches ({', '.join(approaches)}): each task is compared with the "
               f"same approach on the other side, and the per-dataset means mix them. `suppress-eot report RUNS "
               f"--out DIR` with one folder compares the approaches.", ""]

    md += ["## Runs", "", markdown_table(
        ["label", "folder", "runs", "backend", "device", "dtype", "versions", "steps", "ITO iterations",
         "batch summary"], [_describe(side) for side in sides]), ""]

    md += ["## Time and CLIPScore per dataset", "",
           "Time: mean wall seconds per run (the batch's task time, else the sum of stage times). "
           "CLIPScore (Hessel et al. 2021, from `suppress-eot eval`): *supp→prompt* is the suppressed image "
           "against the original prompt; *Δ prompt* = suppressed − original image against the original prompt "
           "(suppression works when < 0); *Δ kept* = the same against the prompt without the suppressed words "
           "(content kept when near 0).", ""]
    missing = [side for side in sides if not side.scores]
    if missing:
        md += [f"**No CLIPScores for {', '.join(s.label for s in missing)}**: run `suppress-eot eval "
               f"{missing[0].folder}` to fill the score columns (left blank here).", ""]
    md += [markdown_table(dataset_columns(labels), dataset_rows(sides)), ""]

    md += _parity_section(pairs, labels)
    md += _plots_section(sides, out)
    md += _grid_section(pairs, labels, out, thumb, max_grid_tasks, sides)

    path = out / "report.md"
    path.write_text("\n".join(md) + "\n", encoding="utf-8")
    return path


def _parity_section(pairs: list[tuple[Run, Run]], labels: list[str]) -> list[str]:
    a, b = labels
    md = ["## Parity on matching tasks", ""]
    if not pairs:
        return md + ["No task ran on both sides: nothing to compare.", ""]
    with_approach = several_approaches([x for x, _ in pairs])
    rows = [{**parity(x, y), "task": task_label(x, with_approach)} for x, y in pairs]

    def worst(key):
        values = [r[key] for r in rows if r.get(key) is not None]
        return (max(values), float(np.median(values))) if values else (None, None)

    md += [f"{b} is the reference: latent relative difference ‖{a}−{b}‖/‖{b}‖ over both branches (and per branch: "
           f"the original branch has no ITO), max |{a}−{b}|; loss differences are max |{a}−{b}|/|{b}| over the "
           f"ITO iterations (total loss) and null-text iterations both logs have.", ""]
    summary = []
    for key, name in (("latent_rel", "final latents ‖a−b‖/‖b‖"), ("latent_max_abs", "final latents max |a−b|"),
                      ("ito_rel", "ITO total loss max rel. diff."), ("null_rel", "null-text loss max rel. diff.")):
        top, median = worst(key)
        summary.append([name, _sci(top), _sci(median)])
    md += [markdown_table(["quantity", "worst task", "median task"], summary), ""]
    body = [[r["task"], _sci(r.get("latent_rel")), _sci(r.get("latent_rel_original")),
             _sci(r.get("latent_rel_suppressed")), _sci(r.get("latent_max_abs")), _sci(r.get("ito_rel")),
             r.get("ito_rows"), _sci(r.get("null_rel")), r.get("null_rows"), r.get("note", "")] for r in rows]
    md += ["<details><summary>per task</summary>", "",
           markdown_table(["task", "latent rel", "rel (original)", "rel (suppressed)", "max abs", "ITO loss rel",
                           "ITO rows", "null-text rel", "null-text rows", "note"], body), "", "</details>", ""]
    return md


def _sci(value) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.3g}"


def _plots_section(sides: list[Side], out: Path) -> list[str]:
    md = ["## ITO loss", ""]
    path = plot_ito_loss(sides, out / "ito_loss.png")
    md += [f"![ITO total loss per step]({path.name})" if path else "No ITO iterations were logged.", ""]

    md += ["## Seconds per iteration", ""]
    table = []
    for side in sides:
        for loop, values in iteration_seconds(side).items():
            if values:
                table.append([side.label, loop, len(values), _stat(values, np.median), _stat(values, np.mean),
                              _stat(values, lambda v: np.percentile(v, 90))])
    path = plot_iteration_seconds(sides, out / "seconds_per_iteration.png")
    if path:
        md += [markdown_table(["side", "loop", "iterations", "median s", "mean s", "p90 s"], table), "",
               f"![seconds per iteration]({path.name})", ""]
    else:
        md += ["No iteration times were logged.", ""]

    md += ["## Memory", ""]
    path = plot_peak_memory(sides, out / "memory_per_stage.png")
    md += [f"![peak memory per stage]({path.name})" if path else
           "No peak memory was recorded (runs on the CPU record none; see memory.csv).", ""]
    path = plot_memory_traces(sides, out / "memory_trace.png")
    if path:
        md += [f"![memory over time]({path.name})", ""]
    else:
        md += ["No memory traces (memory_trace.csv with samples; the batch writes them on NVIDIA GPUs).", ""]
    return md


def _grid_section(pairs, labels, out: Path, thumb: int, max_grid_tasks: int | None, sides) -> list[str]:
    md = ["## Images", ""]
    unmatched = [f"{side.label}: {len(side.runs) - len(pairs)}" for side in sides if len(side.runs) > len(pairs)]
    if not pairs:
        return md + ["No task ran on both sides: no side-by-side images.", ""]
    md += ["Original-branch and suppressed images of each task on both sides"
           + (f" (at most {max_grid_tasks} tasks per dataset)" if max_grid_tasks else "") + "."
           + (f" Runs without a match, not shown: {', '.join(unmatched)}." if unmatched else ""), ""]
    return md + grid_lines(write_grids(pairs, labels, out, thumb, max_grid_tasks))


def grid_lines(written: list[tuple[str, Path]]) -> list[str]:
    """Markdown for grid PNGs written per group: a heading where the group changes, then each image."""
    md, current = [], None
    for group, path in written:
        if group != current:
            md += [f"### {group}", ""]
            current = group
        md += [f"![{group}]({path.name})", ""]
    return md
