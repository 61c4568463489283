"""Run a manifest's tasks, one run directory each, so that a killed batch resumes where it stopped.

State lives only on disk: a task is finished when ``<id>--<backend>/run.json`` exists (``save_run``
writes the folder under a temporary name and renames it when complete), failed while
``.failed/<id>--<backend>.json`` exists. ``summary.csv`` and ``failures.csv`` are rebuilt from those
after every task, so they are complete whatever happened before, and shards running into one folder
do not overwrite each other's rows.
"""
from __future__ import annotations

import csv
import difflib
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import SuppressEOTError
from .manifests import Manifest, Task
from .memory import DEFAULT_INTERVAL, MemorySampler, MemoryTrace

FAILED_DIR = ".failed"
STAGE_ORDER = ["inversion_text_encoding", "vae_encode", "ddim_inversion", "null_text", "text_encoding",
               "swr_ito_sampling", "vae_decode"]
FAILURE_COLUMNS = ["task", "backend", "error", "time"]


@dataclass
class BatchOptions:
    """Settings for every task of a batch; None: the task's own value, else the official default."""

    steps: int = 50
    guidance_scale: float = 7.5
    iterations: int | None = None  # ITO iterations per step (official 10)
    max_step_to_erase: int = 20
    null_text_steps: int = 10
    inversion: str | None = None  # nt | npi (official nt)
    memory_interval: float = DEFAULT_INTERVAL
    group_size: int = 1  # tasks with the same settings run together, their UNet passes batched
    ito_blocks: tuple = ("up", "down", "mid")  # UNet blocks whose maps ITO reads (suppress-eot --ito-blocks)


def run_name(task_id: str, backend: str) -> str:
    return f"{task_id}--{backend}"


def is_finished(out_dir: Path, name: str) -> bool:
    return (out_dir / name / "run.json").is_file()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(out_dir: Path) -> list[Path]:
    """Remove ``.*.tmp-PID`` leftovers of killed processes (a live PID's are another shard's, kept)."""
    removed = []
    for folder in (out_dir, out_dir / FAILED_DIR):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            name, _, pid = path.name.rpartition(".tmp-")
            if not path.name.startswith(".") or not name or not pid.isdigit() or _pid_alive(int(pid)):
                continue
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def select_tasks(tasks: list[Task], only: list[str] | None = None, shard: tuple[int, int] | None = None,
                 limit: int | None = None) -> list[Task]:
    """--only IDs, then round-robin shard I of N (1-based), then the first --limit tasks."""
    if only:
        known = {t.id for t in tasks}
        unknown = [i for i in only if i not in known]
        if unknown:
            hints = [m for i in unknown for m in difflib.get_close_matches(i, known, n=2)]
            raise SuppressEOTError(f"--only: no task with id {', '.join(unknown)} in the manifest"
                                   + (f" (did you mean {', '.join(hints)}?)" if hints else "")
                                   + "; the ids are in the manifest's tasks")
        wanted = set(only)
        tasks = [t for t in tasks if t.id in wanted]
    if shard is not None:
        index, count = shard
        tasks = tasks[index - 1::count]
    if limit is not None:
        tasks = tasks[:limit]
    return tasks


# --- failures -------------------------------------------------------------------------------------
def _write_json_atomic(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, default=str)
    os.replace(tmp, path)


def _write_csv_atomic(path: Path, columns: list[str], rows: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def error_line(exc: BaseException) -> str:
    """One line: the message of our own errors, the exception class too for anything else (OOM, ...)."""
    text = str(exc).strip().splitlines()
    message = text[0] if text else ""
    return message if isinstance(exc, SuppressEOTError) else f"{type(exc).__name__}: {message}".rstrip(": ")


def record_failure(out_dir: Path, task: Task, backend: str, exc: BaseException) -> str:
    folder = out_dir / FAILED_DIR
    folder.mkdir(exist_ok=True)
    line = error_line(exc)
    _write_json_atomic(folder / f"{run_name(task.id, backend)}.json",
                       {"task": task.id, "backend": backend, "error": line,
                        "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return line


def clear_failure(out_dir: Path, task: Task, backend: str) -> None:
    (out_dir / FAILED_DIR / f"{run_name(task.id, backend)}.json").unlink(missing_ok=True)


def read_failures(out_dir: Path) -> dict[str, dict]:
    failures = {}
    folder = out_dir / FAILED_DIR
    if folder.is_dir():
        for path in sorted(folder.glob("*.json")):
            if path.name.startswith("."):
                continue
            try:
                failures[path.stem] = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
    return failures


# --- summary --------------------------------------------------------------------------------------
def read_runs(out_dir: Path) -> dict[str, dict]:
    """run.json of every finished batch run directory in ``out_dir``, by folder name."""
    runs = {}
    for run_json in sorted(out_dir.glob("*/run.json")):
        if run_json.parent.name.startswith(".") or "--" not in run_json.parent.name:
            continue
        try:
            record = json.loads(run_json.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(record.get("task"), dict):
            runs[run_json.parent.name] = record
    return runs


def _stages(records) -> list[str]:
    seen = {stage for record in records for stage in record.get("seconds", {})}
    return [s for s in STAGE_ORDER if s in seen] + sorted(seen - set(STAGE_ORDER))


def _max(values):
    values = [v for v in values if v is not None]
    return max(values) if values else None


def summary_rows(out_dir: Path, manifest: Manifest, backend: str) -> tuple[list[str], list[dict]]:
    """One row per manifest task and backend (finished, failed or pending), then other runs found in out_dir."""
    runs, failures = read_runs(out_dir), read_failures(out_dir)
    backends = [backend] + sorted({n.rsplit("--", 1)[1] for n in [*runs, *failures]} - {backend})
    stages = _stages(runs.values())
    rows, listed = [], set()

    def row_for(name: str, task_id: str, task_set: str, task_type: str, task_backend: str) -> dict:
        row = {"task": task_id, "set": task_set, "type": task_type, "backend": task_backend, "status": "pending"}
        record = runs.get(name)
        if record is not None:
            seconds, memory, nvml = record.get("seconds", {}), record.get("memory", {}), record.get("nvml") or {}
            row.update(status="finished", run_dir=name, task_seconds=record.get("task_seconds"),
                       group_size=record.get("group_size", 1),
                       stage_seconds_total=round(sum(seconds.values()), 4),
                       peak_allocated_bytes=_max(m.get("allocated") for m in memory.values()),
                       peak_reserved_bytes=_max(m.get("reserved") for m in memory.values()),
                       nvml_peak_used_bytes=nvml.get("peak_used_bytes"),
                       nvml_baseline_used_bytes=nvml.get("baseline_used_bytes"),
                       nvml_rate_hz=nvml.get("rate_hz"), nvml_status=nvml.get("status"),
                       final_ito_total_loss=record.get("final_ito_total_loss"),
                       mean_null_text_loss=record.get("mean_null_text_loss"))
            for stage in stages:
                row[f"seconds_{stage}"] = None if stage not in seconds else round(seconds[stage], 4)
                row[f"peak_allocated_bytes_{stage}"] = memory.get(stage, {}).get("allocated")
                row[f"peak_reserved_bytes_{stage}"] = memory.get(stage, {}).get("reserved")
            for image in ("original", "suppressed", "input", "reconstruction"):
                if (out_dir / name / f"{image}.png").is_file():
                    row[image] = f"{name}/{image}.png"
            if (out_dir / name / "memory_trace.csv").is_file():
                row["memory_trace"] = f"{name}/memory_trace.csv"
        elif name in failures:
            row.update(status="failed", error=failures[name].get("error"))
        return row

    for task in manifest.tasks:
        for task_backend in backends:
            name = run_name(task.id, task_backend)
            if task_backend != backend and name not in runs and name not in failures:
                continue  # another backend that never ran this task here
            rows.append(row_for(name, task.id, task.set, task.type, task_backend))
            listed.add(name)
    for name in sorted(set(runs) | set(failures)):
        if name not in listed:  # runs of other manifests written to the same folder
            task = runs[name]["task"] if name in runs else {"id": failures[name].get("task", name)}
            rows.append(row_for(name, task.get("id", name), task.get("set", ""), task.get("type", ""),
                                name.rsplit("--", 1)[1]))
    columns = (["task", "set", "type", "backend", "status", "run_dir", "task_seconds", "group_size",
                "stage_seconds_total"]
               + [f"seconds_{s}" for s in stages]
               + [f"peak_allocated_bytes_{s}" for s in stages] + [f"peak_reserved_bytes_{s}" for s in stages]
               + ["peak_allocated_bytes", "peak_reserved_bytes", "nvml_peak_used_bytes", "nvml_baseline_used_bytes",
                  "nvml_rate_hz", "nvml_status", "final_ito_total_loss", "mean_null_text_loss",
                  "original", "suppressed", "input", "reconstruction", "memory_trace", "error"])
    return columns, rows


def write_reports(out_dir: Path, manifest: Manifest, backend: str) -> None:
    """Rewrite summary.csv and failures.csv from the run directories and failure records."""
    columns, rows = summary_rows(out_dir, manifest, backend)
    _write_csv_atomic(out_dir / "summary.csv", columns, rows)
    failures = sorted(read_failures(out_dir).values(), key=lambda f: (f.get("task", ""), f.get("backend", "")))
    _write_csv_atomic(out_dir / "failures.csv", FAILURE_COLUMNS, failures)


# --- running --------------------------------------------------------------------------------------
def task_settings(task: Task, options: BatchOptions):
    """The suppression settings and (real photos) inversion settings a task runs with."""
    from ..config import InversionSettings, SuppressionSettings

    iterations = options.iterations if options.iterations is not None else task.iterations
    settings = SuppressionSettings(alpha=task.alpha, tau=task.tau, max_step_to_erase=options.max_step_to_erase,
                                   ito_blocks=options.ito_blocks,
                                   **({} if iterations is None else {"iterations": iterations})).validate()
    inversion = None if task.type != "real" else InversionSettings(
        method=options.inversion or task.inversion or "nt", inner_steps=options.null_text_steps)
    return settings, inversion


def group_key(task: Task, options: BatchOptions) -> tuple:
    """Tasks with equal keys can run as one group: same kind, same settings (only prompts, tokens, seeds and
    photos differ)."""
    try:
        settings, inversion = task_settings(task, options)
    except Exception:  # noqa: BLE001 - a bad task runs alone, and fails alone with its own message
        return ("alone", task.id)
    return task.type, repr(settings), repr(inversion)


def make_groups(tasks: list[Task], options: BatchOptions) -> list[list[Task]]:
    """Tasks in manifest order, gathered into groups of at most ``group_size`` tasks of one key (a group
    starts where its first task stands)."""
    size = max(1, options.group_size)
    open_groups: dict[tuple, list[Task]] = {}
    groups: list[list[Task]] = []
    for task in tasks:
        key = group_key(task, options)
        group = open_groups.get(key)
        if group is None or len(group) >= size:
            group = open_groups[key] = []
            groups.append(group)
        group.append(task)
    return groups


@dataclass
class GroupOutcome:
    """What one group produced, in memory: written by ``save_group`` here, or by the driver of a Ray batch."""

    results: list  # SuppressionResult per task, in the group's order
    seconds: float  # the whole group's wall time
    trace: MemoryTrace  # device memory sampled over the group


def compute_group(model, tasks: list[Task], manifest: Manifest, options: BatchOptions, device: str,
                  photos: list | None = None) -> GroupOutcome:
    """Tasks of one group key on a loaded model: photos are inverted, then edited; generated images generated;
    several tasks at once when the group has more than one (UNet passes batched). ``photos``: the real tasks'
    images already loaded (a Ray worker has no access to the driver's files), else read from their paths."""
    settings, inversion = task_settings(tasks[0], options)
    sampler = MemorySampler(device, interval=options.memory_interval)
    started = time.perf_counter()
    with sampler:
        if tasks[0].type == "real":
            paths = [task.image_path(manifest.base_dir) for task in tasks]
            inverted = model.invert_many(paths if photos is None else photos, [task.prompt for task in tasks],
                                         inversion, steps=options.steps, guidance_scale=options.guidance_scale)
            for inv, path in zip(inverted, paths):
                inv.source = str(path)
            results = model.edit_many(inverted, None, [task.token_group for task in tasks], settings=settings,
                                      guidance_scale=options.guidance_scale)
        else:
            results = model.generate_many([task.prompt for task in tasks], [task.token_group for task in tasks],
                                          [task.seed for task in tasks], settings=settings, steps=options.steps,
                                          guidance_scale=options.guidance_scale)
    return GroupOutcome(results, round(time.perf_counter() - started, 4), sampler.trace)


def save_group(outcome: GroupOutcome, tasks: list[Task], out_dir: Path, backend: str, extra: dict) -> list[Path]:
    """One run directory ``<id>--<backend>`` per task of a computed group (each written atomically)."""
    from ..runs import save_run

    paths = []
    for task, result in zip(tasks, outcome.results):
        record = {**extra, "task": task.to_json(), "task_seconds": outcome.seconds, "nvml": outcome.trace.summary()}
        if len(tasks) > 1:
            record["group"] = [t.id for t in tasks]
        path = save_run(result, out_dir, name=run_name(task.id, backend), extra=record)
        outcome.trace.write_csv(path / "memory_trace.csv")
        paths.append(path)
    return paths


def run_group(model, tasks: list[Task], manifest: Manifest, options: BatchOptions, out_dir: Path, backend: str,
              device: str, extra: dict) -> list[Path]:
    """``compute_group`` then ``save_group``: the local batch's unit of work."""
    return save_group(compute_group(model, tasks, manifest, options, device), tasks, out_dir, backend, extra)


def run_task(model, task: Task, manifest: Manifest, options: BatchOptions, out_dir: Path, backend: str,
             device: str, extra: dict) -> Path:
    """One task into ``<id>--<backend>``: a photo is inverted once, then edited; memory sampled throughout."""
    return run_group(model, [task], manifest, options, out_dir, backend, device, extra)[0]


def _note(text: str) -> None:
    tqdm.write(text, file=sys.stderr)


def _check_free(out_dir: Path, tasks: list[Task], backend: str) -> None:
    for task in tasks:
        if (out_dir / run_name(task.id, backend)).exists():  # not written by save_run (those are complete)
            raise SuppressEOTError(f"{out_dir / run_name(task.id, backend)} exists but has no run.json: move it "
                                   f"away and rerun")


def _run_one(model, task, manifest, options, out_dir, backend, device, extra, debug, bar) -> int:
    """One task; returns 1 if it failed (recorded in failures.csv), else 0."""
    bar.set_postfix_str(task.id)
    started = time.perf_counter()
    try:
        _check_free(out_dir, [task], backend)
        path = run_task(model, task, manifest, options, out_dir, backend, device, extra)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        line = record_failure(out_dir, task, backend, exc)
        _note(f"FAILED {task.id}: {line}")
        if debug:
            import traceback

            traceback.print_exc()
        return 1
    clear_failure(out_dir, task, backend)
    _note(f"finished {task.id} in {time.perf_counter() - started:.1f} s -> {path}")
    return 0


def _run_together(model, group, manifest, options, out_dir, backend, device, extra, bar) -> bool:
    """A group of tasks in one go; False if it failed (its tasks are then run one by one, so a bad task
    fails alone)."""
    bar.set_postfix_str(f"{group[0].id} +{len(group) - 1}")
    started = time.perf_counter()
    try:
        _check_free(out_dir, group, backend)
        paths = run_group(model, group, manifest, options, out_dir, backend, device, extra)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        _note(f"group of {len(group)} failed ({error_line(exc)}): running its tasks one by one")
        model.backend.release_cache(graphs=True)  # out of memory, perhaps: the kept graphs' pool too
        return False
    for task, path in zip(group, paths):
        clear_failure(out_dir, task, backend)
        _note(f"finished {task.id} in a group of {len(group)} ({time.perf_counter() - started:.1f} s) -> {path}")
    write_reports(out_dir, manifest, backend)
    bar.update(len(group))
    model.backend.release_cache()
    return True


def run_batch(manifest: Manifest, tasks: list[Task], load_model, backend: str, out_dir: Path,
              options: BatchOptions, progress: bool = True, debug: bool = False, extra: dict | None = None) -> int:
    """Run the pending ``tasks``; ``load_model()`` is called once, only if something is left to run (once per
    model and LoRA set where the manifest names them: ``load_model(model, loras)``).

    Returns 0 when every selected task is finished, 1 when some failed (listed in failures.csv).
    """
    pending = start_batch(manifest, tasks, backend, out_dir)
    failed = 0
    by_model: dict[tuple, list[Task]] = {}  # tasks of one model and LoRA set: the model loads once
    for task in pending:
        by_model.setdefault(manifest.model_of(task), []).append(task)
    if pending:
        extra = batch_extra(manifest, backend, options, extra)
        bar = progress_bar(manifest, tasks, pending, backend, progress)
        try:
            for spec, model_tasks in by_model.items():
                model = None  # the previous model is freed before the next loads
                model = load_model() if spec == (None, None) else load_model(*spec)  # (model, loras): a task's own
                info = model.backend.info()
                device = str(getattr(model.backend, "device", None) or info.get("device", ""))
                for group in make_groups(model_tasks, options):
                    if len(group) > 1 and _run_together(model, group, manifest, options, out_dir, backend, device,
                                                        extra, bar):
                        continue
                    for task in group:
                        if is_finished(out_dir, run_name(task.id, backend)):  # saved before its group failed
                            bar.update(1)
                            continue
                        failed += _run_one(model, task, manifest, options, out_dir, backend, device, extra, debug, bar)
                        write_reports(out_dir, manifest, backend)
                        bar.update(1)
                        model.backend.release_cache()
        finally:
            bar.close()
    return finish_batch(tasks, backend, out_dir, failed)


def start_batch(manifest: Manifest, tasks: list[Task], backend: str, out_dir: Path) -> list[Task]:
    """Clean a killed run's leftovers, rewrite the reports; returns the tasks still to run."""
    for path in clean_stale(out_dir):
        _note(f"removed {path.name} (left by a killed run)")
    done = [t for t in tasks if is_finished(out_dir, run_name(t.id, backend))]
    pending = [t for t in tasks if t not in done]
    for task in done:  # finished since a failure was recorded, e.g. by another shard
        clear_failure(out_dir, task, backend)
    if done:
        _note(f"{len(done)} of {len(tasks)} tasks already finished in {out_dir}: skipping them")
    write_reports(out_dir, manifest, backend)
    return pending


def batch_extra(manifest: Manifest, backend: str, options: BatchOptions, extra: dict | None) -> dict:
    """What every run.json of the batch records about it."""
    return {**(extra or {}), "batch": {"manifest": str(manifest.path), "backend": backend,
                                       "options": asdict(options)}}


def progress_bar(manifest: Manifest, tasks: list[Task], pending: list[Task], backend: str, progress: bool):
    return tqdm(total=len(tasks), initial=len(tasks) - len(pending), desc=f"{manifest.name} [{backend}]",
                unit="task", disable=not progress, dynamic_ncols=True, file=sys.stderr)


def finish_batch(tasks: list[Task], backend: str, out_dir: Path, failed: int) -> int:
    """The closing line; 0 when every selected task is finished, else 1."""
    finished = sum(is_finished(out_dir, run_name(t.id, backend)) for t in tasks)
    _note(f"{finished} of {len(tasks)} tasks finished, {failed} failed in this run"
          + (f" (see {out_dir / 'failures.csv'})" if failed else "") + f"; summary: {out_dir / 'summary.csv'}")
    return 1 if finished < len(tasks) else 0
