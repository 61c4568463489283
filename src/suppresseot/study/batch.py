"""Run a manifest's tasks by each of the batch's approaches, one run directory a pair, so that a killed batch
resumes where it stopped.

The unit of work is a (task, approach) pair (``pairs``). State lives only on disk: a pair is finished when
``<id>--<approach>--<backend>/run.json`` exists (``save_run`` writes the folder under a temporary name and
renames it when complete), failed while ``.failed/<id>--<approach>--<backend>.json`` exists.
``summary.csv`` and ``failures.csv`` are rebuilt from those after every run, so they are complete whatever
happened before, and shards running into one folder do not overwrite each other's rows.
"""
from __future__ import annotations

import csv
import difflib
import json
import os
import shutil
import sys
import time
import weakref
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from tqdm.auto import tqdm

from .. import approaches
from ..errors import SuppressEOTError
from .manifests import DEFAULT_SEED, Manifest, Task
from .memory import DEFAULT_INTERVAL, MemorySampler, MemoryTrace
from .pairs import Pair, Plan, as_pair, run_name

FAILED_DIR = ".failed"
# summary.csv's stage columns in pipeline order, SuppressEOT's and the baselines' (inversion, sampling*)
STAGE_ORDER = ["inversion_text_encoding", "vae_encode", "ddim_inversion", "null_text", "inversion", "text_encoding",
               "swr_ito_sampling", "sampling", "sampling_original", "sampling_edited", "vae_decode"]
FAILURE_COLUMNS = ["task", "approach", "backend", "error", "time"]


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


def record_failure(out_dir: Path, pair: Pair | Task, backend: str, exc: BaseException) -> str:
    pair = as_pair(pair)
    folder = out_dir / FAILED_DIR
    folder.mkdir(exist_ok=True)
    line = error_line(exc)
    _write_json_atomic(folder / f"{pair.name(backend)}.json",
                       {"task": pair.task.id, "approach": pair.approach, "backend": backend, "error": line,
                        "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return line


def clear_failure(out_dir: Path, pair: Pair | Task, backend: str) -> None:
    (out_dir / FAILED_DIR / f"{as_pair(pair).name(backend)}.json").unlink(missing_ok=True)


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


def _run_key(name: str, record: dict) -> tuple[str, str, str]:
    """(task id, approach, backend) of a batch's run.json, from what it records (a task id may itself hold
    ``--``); a run from before approaches is SuppressEOT's."""
    approach = record.get("approach")
    approach = approach.get("name") if isinstance(approach, dict) else approach
    info = record.get("backend")
    backend = (record.get("batch") or {}).get("backend") or (info.get("backend") if isinstance(info, dict) else None)
    return (str(record["task"].get("id", name)), str(approach or approaches.DEFAULT),
            str(backend or name.rsplit("--", 1)[-1]))


def _failure_key(name: str, record: dict) -> tuple[str, str, str]:
    return (str(record.get("task", name)), str(record.get("approach") or approaches.DEFAULT),
            str(record.get("backend") or name.rsplit("--", 1)[-1]))


def _found(runs: dict[str, dict], failures: dict[str, dict]) -> dict[tuple, str]:
    """The folder (or failure record) name of every (task, approach, backend) on disk: a finished run over a
    failure, the canonical name over another."""
    found: dict[tuple, str] = {}
    for name, record in failures.items():
        found[_failure_key(name, record)] = name
    for name, record in runs.items():
        key = _run_key(name, record)
        if key not in found or found[key] not in runs or name == run_name(*key):
            found[key] = name
    return found


def summary_rows(out_dir: Path, manifest: Manifest, plan: Plan | str) -> tuple[list[str], list[dict]]:
    """One row per manifest task and approach of the batch that can run it (finished, failed or pending), task
    by task, plus what other approaches and backends left for it in out_dir; then other runs found there."""
    plan = Plan(backend=plan) if isinstance(plan, str) else plan
    runs, failures = read_runs(out_dir), read_failures(out_dir)
    stages = _stages(runs.values())
    by_task: dict[str, dict[tuple[str, str], str]] = {}
    for (task_id, approach, backend), name in _found(runs, failures).items():
        by_task.setdefault(task_id, {})[approach, backend] = name
    order = {name: i for i, name in reversed(list(enumerate([*plan.approaches, *approaches.APPROACHES])))}
    rows, listed = [], set()

    def row_for(name: str, task_id: str, task_set: str, task_type: str, approach: str, backend: str) -> dict:
        row = {"task": task_id, "set": task_set, "type": task_type, "approach": approach, "backend": backend,
               "status": "pending"}
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
        here = by_task.get(task.id, {})
        combos = {(pair.approach, plan.backend) for pair in plan.pairs([task])} | set(here)
        for approach, backend in sorted(combos, key=lambda c: (order.get(c[0], len(order)), c[0],
                                                               c[1] != plan.backend, c[1])):
            name = here.get((approach, backend), run_name(task.id, approach, backend))
            rows.append(row_for(name, task.id, task.set, task.type, approach, backend))
            listed.add(name)
    for name in sorted(set(runs) | set(failures)):
        if name not in listed:  # runs of other manifests written to the same folder
            task = runs[name]["task"] if name in runs else {}
            task_id, approach, backend = (_run_key(name, runs[name]) if name in runs
                                          else _failure_key(name, failures[name]))
            rows.append(row_for(name, task_id, task.get("set", ""), task.get("type", ""), approach, backend))
    columns = (["task", "set", "type", "approach", "backend", "status", "run_dir", "task_seconds", "group_size",
                "stage_seconds_total"]
               + [f"seconds_{s}" for s in stages]
               + [f"peak_allocated_bytes_{s}" for s in stages] + [f"peak_reserved_bytes_{s}" for s in stages]
               + ["peak_allocated_bytes", "peak_reserved_bytes", "nvml_peak_used_bytes", "nvml_baseline_used_bytes",
                  "nvml_rate_hz", "nvml_status", "final_ito_total_loss", "mean_null_text_loss",
                  "original", "suppressed", "input", "reconstruction", "memory_trace", "error"])
    return columns, rows


def write_reports(out_dir: Path, manifest: Manifest, plan: Plan | str) -> None:
    """Rewrite summary.csv and failures.csv from the run directories and failure records."""
    columns, rows = summary_rows(out_dir, manifest, plan)
    _write_csv_atomic(out_dir / "summary.csv", columns, rows)
    failures = [{**f, "approach": f.get("approach") or approaches.DEFAULT} for f in read_failures(out_dir).values()]
    failures.sort(key=lambda f: (f.get("task", ""), f["approach"], f.get("backend", "")))
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


def group_key(item: Pair | Task, options: BatchOptions) -> tuple:
    """Pairs with equal keys can run as one group: one approach that batches (the SuppressEOT family), one
    kind, the same settings (only prompts, tokens, seeds and photos differ). Baselines run alone."""
    pair = as_pair(item)
    if not approaches.get(pair.approach).batched:
        return ("alone", *pair.key)
    try:
        settings, inversion = task_settings(pair.task, options)
    except Exception:  # noqa: BLE001 - a bad task runs alone, and fails alone with its own message
        return ("alone", *pair.key)
    return pair.approach, pair.task.type, repr(settings), repr(inversion)


def make_groups(items: list, options: BatchOptions) -> list[list]:
    """Pairs (or tasks) in order, gathered into groups of at most ``group_size`` of one key (a group starts
    where its first member stands, so task-major pairs stay task-major group by group)."""
    size = max(1, options.group_size)
    open_groups: dict[tuple, list] = {}
    groups: list[list] = []
    for item in items:
        key = group_key(item, options)
        group = open_groups.get(key)
        if group is None or len(group) >= size:
            group = open_groups[key] = []
            groups.append(group)
        group.append(item)
    return groups


@dataclass
class GroupOutcome:
    """What one group produced, in memory: written by ``save_group`` here, or by the driver of a Ray batch."""

    results: list  # SuppressionResult per pair, in the group's order
    seconds: float  # the whole group's wall time
    trace: MemoryTrace  # device memory sampled over the group


def compute_group(model, pairs: list[Pair | Task], manifest: Manifest, options: BatchOptions, device: str,
                  photos: list | None = None) -> GroupOutcome:
    """Pairs of one group key on a loaded model, through the API, which runs the approach: photos edited
    (``edit_many``: inverted with this project's inversion or the approach's own), generated images generated;
    several tasks at once when the group has more than one (UNet passes batched). SuppressEOT's settings go to
    every approach (a baseline ignores them). ``photos``: the real tasks' images already loaded (a Ray worker
    has no access to the driver's files), else read from their paths."""
    pairs = [as_pair(p) for p in pairs]
    tasks = [pair.task for pair in pairs]
    settings, inversion = task_settings(tasks[0], options)
    shared = dict(settings=settings, steps=options.steps, guidance_scale=options.guidance_scale,
                  approach=pairs[0].approach)
    prompts, groups = [task.prompt for task in tasks], [task.token_group for task in tasks]
    sampler = MemorySampler(device, interval=options.memory_interval)
    started = time.perf_counter()
    reused = 0.0
    with sampler:
        if tasks[0].type == "real":
            paths = [task.image_path(manifest.base_dir) for task in tasks]
            images = paths if photos is None else photos
            if approaches.get(pairs[0].approach).shares_inversion:
                images, reused = _inverted(model, tasks, images, inversion, options)
            seed = DEFAULT_SEED if tasks[0].seed is None else tasks[0].seed  # a baseline's own noise
            results = model.edit_many(images, prompts, groups, inversion=inversion, seed=seed, **shared)
            for result, path in zip(results, paths):
                if result.inversion is not None:  # a Ray worker got an array: the run records the file
                    result.inversion.source = str(path)
        else:
            results = model.generate_many(prompts, groups, [task.seed for task in tasks], **shared)
    return GroupOutcome(results, round(time.perf_counter() - started + reused, 4), sampler.trace)


# model -> (what was inverted, the Inversions): the last group's photos, for the next approach that edits them
_LAST_INVERSIONS = weakref.WeakKeyDictionary()


def _inverted(model, tasks: list[Task], images: list, inversion, options: BatchOptions) -> tuple[list, float]:
    """The photos as this project's ``Inversion``s, reused where the previous group inverted the same photos with
    the same settings: pairs come task-major, so the approaches that edit this project's inversion (SuppressEOT,
    its ablations, a negative prompt) invert each photo once. Returns them and the seconds a reuse saved, which
    count into the pair's time: each approach's time stays what it costs alone."""
    key = ([task.id for task in tasks], repr(inversion), options.steps, options.guidance_scale)
    last = _LAST_INVERSIONS.get(model)
    if last is not None and last[0] == key:
        return last[1], sum(last[1][0].seconds.values())
    _LAST_INVERSIONS.pop(model, None)  # the previous photos' tensors go before these are made
    inverted = model.invert_many(images, [task.prompt for task in tasks], inversion, steps=options.steps,
                                 guidance_scale=options.guidance_scale)
    _LAST_INVERSIONS[model] = (key, inverted)
    return inverted, 0.0


def save_group(outcome: GroupOutcome, pairs: list[Pair | Task], out_dir: Path, backend: str,
               extra: dict) -> list[Path]:
    """One run directory ``<id>--<approach>--<backend>`` per pair of a computed group (each written atomically)."""
    from ..runs import save_run

    pairs = [as_pair(p) for p in pairs]
    paths = []
    for pair, result in zip(pairs, outcome.results):
        record = {**extra, "task": pair.task.to_json(), "task_seconds": outcome.seconds,
                  "nvml": outcome.trace.summary()}
        if len(pairs) > 1:
            record["group"] = [p.task.id for p in pairs]
        path = save_run(result, out_dir, name=pair.name(backend), extra=record)
        outcome.trace.write_csv(path / "memory_trace.csv")
        paths.append(path)
    return paths


def run_group(model, pairs: list[Pair], manifest: Manifest, options: BatchOptions, out_dir: Path, backend: str,
              device: str, extra: dict) -> list[Path]:
    """``compute_group`` then ``save_group``: the local batch's unit of work."""
    return save_group(compute_group(model, pairs, manifest, options, device), pairs, out_dir, backend, extra)


def run_task(model, pair: Pair | Task, manifest: Manifest, options: BatchOptions, out_dir: Path, backend: str,
             device: str, extra: dict) -> Path:
    """One pair into ``<id>--<approach>--<backend>``, memory sampled throughout."""
    return run_group(model, [as_pair(pair)], manifest, options, out_dir, backend, device, extra)[0]


def _note(text: str) -> None:
    tqdm.write(text, file=sys.stderr)


def _check_free(out_dir: Path, pairs: list[Pair], backend: str) -> None:
    for pair in pairs:
        if (out_dir / pair.name(backend)).exists():  # not written by save_run (those are complete)
            raise SuppressEOTError(f"{out_dir / pair.name(backend)} exists but has no run.json: move it "
                                   f"away and rerun")


def _run_one(model, pair, manifest, options, out_dir, backend, device, extra, debug, bar) -> int:
    """One pair; returns 1 if it failed (recorded in failures.csv), else 0."""
    bar.set_postfix_str(pair.label)
    started = time.perf_counter()
    try:
        _check_free(out_dir, [pair], backend)
        path = run_task(model, pair, manifest, options, out_dir, backend, device, extra)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        line = record_failure(out_dir, pair, backend, exc)
        _note(f"FAILED {pair.label}: {line}")
        if debug:
            import traceback

            traceback.print_exc()
        return 1
    clear_failure(out_dir, pair, backend)
    _note(f"finished {pair.label} in {time.perf_counter() - started:.1f} s -> {path}")
    return 0


def _run_together(model, group, manifest, plan, options, out_dir, device, extra, bar) -> bool:
    """A group of pairs in one go; False if it failed (its pairs are then run one by one, so a bad task
    fails alone)."""
    backend = plan.backend
    bar.set_postfix_str(f"{group[0].label} +{len(group) - 1}")
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
    for pair, path in zip(group, paths):
        clear_failure(out_dir, pair, backend)
        _note(f"finished {pair.label} in a group of {len(group)} ({time.perf_counter() - started:.1f} s) -> {path}")
    write_reports(out_dir, manifest, plan)
    bar.update(len(group))
    model.backend.release_cache()
    return True


def run_batch(manifest: Manifest, tasks: list[Task], load_model, backend: str, out_dir: Path,
              options: BatchOptions, progress: bool = True, debug: bool = False, extra: dict | None = None,
              plan: Plan | None = None) -> int:
    """Run the pending pairs of ``tasks`` and the ``plan``'s approaches (default: SuppressEOT alone), task-major;
    ``load_model()`` is called once, only if something is left to run (once per model and LoRA set where the
    manifest names them: ``load_model(model, loras)``), and the one model runs every approach.

    Returns 0 when every selected pair is finished, 1 when some failed (listed in failures.csv).
    """
    plan = replace(plan or Plan(), backend=backend)
    pairs = plan.pairs(tasks)
    pending = start_batch(manifest, pairs, plan, out_dir)
    failed = 0
    by_model: dict[tuple, list[Pair]] = {}  # pairs of one model and LoRA set: the model loads once
    for pair in pending:
        by_model.setdefault(manifest.model_of(pair.task), []).append(pair)
    if pending:
        extra = batch_extra(manifest, backend, options, extra, plan)
        bar = progress_bar(manifest, pairs, pending, backend, progress)
        try:
            for spec, model_pairs in by_model.items():
                model = None  # the previous model is freed before the next loads
                model = load_model() if spec == (None, None) else load_model(*spec)  # (model, loras): a task's own
                info = model.backend.info()
                device = str(getattr(model.backend, "device", None) or info.get("device", ""))
                for group in make_groups(model_pairs, options):
                    if len(group) > 1 and _run_together(model, group, manifest, plan, options, out_dir, device,
                                                        extra, bar):
                        continue
                    for pair in group:
                        if is_finished(out_dir, pair.name(backend)):  # saved before its group failed
                            bar.update(1)
                            continue
                        failed += _run_one(model, pair, manifest, options, out_dir, backend, device, extra, debug, bar)
                        write_reports(out_dir, manifest, plan)
                        bar.update(1)
                        model.backend.release_cache()
        finally:
            bar.close()
    return finish_batch(pairs, backend, out_dir, failed)


def start_batch(manifest: Manifest, pairs: list[Pair], plan: Plan, out_dir: Path) -> list[Pair]:
    """Clean a killed run's leftovers, rewrite the reports; returns the pairs still to run."""
    for path in clean_stale(out_dir):
        _note(f"removed {path.name} (left by a killed run)")
    done = [p for p in pairs if is_finished(out_dir, p.name(plan.backend))]
    finished = {p.key for p in done}
    pending = [p for p in pairs if p.key not in finished]
    for pair in done:  # finished since a failure was recorded, e.g. by another shard
        clear_failure(out_dir, pair, plan.backend)
    if done:
        _note(f"{len(done)} of {len(pairs)} runs already finished in {out_dir}: skipping them")
    write_reports(out_dir, manifest, plan)
    return pending


def batch_extra(manifest: Manifest, backend: str, options: BatchOptions, extra: dict | None,
                plan: Plan | None = None) -> dict:
    """What every run.json of the batch records about it."""
    return {**(extra or {}), "batch": {"manifest": str(manifest.path), "backend": backend,
                                       "approaches": (plan or Plan()).approaches, "options": asdict(options)}}


def progress_bar(manifest: Manifest, pairs: list[Pair], pending: list[Pair], backend: str, progress: bool):
    return tqdm(total=len(pairs), initial=len(pairs) - len(pending), desc=f"{manifest.name} [{backend}]",
                unit="run", disable=not progress, dynamic_ncols=True, file=sys.stderr)


def finish_batch(pairs: list[Pair], backend: str, out_dir: Path, failed: int) -> int:
    """The closing line; 0 when every selected pair is finished, else 1."""
    finished = sum(is_finished(out_dir, p.name(backend)) for p in pairs)
    _note(f"{finished} of {len(pairs)} runs finished, {failed} failed in this run"
          + (f" (see {out_dir / 'failures.csv'})" if failed else "") + f"; summary: {out_dir / 'summary.csv'}")
    return 1 if finished < len(pairs) else 0
