"""``suppress-eot prepare`` and ``suppress-eot batch``: the study as commands (added to the main CLI)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli import whole_number
from ..errors import SuppressEOTError
from ..ray_pool import add_ray_options, ray_options
from . import manifests as mf


_positive, _non_negative = whole_number(1), whole_number(0)


def _shard(text: str) -> tuple[int, int]:
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a shard: write I/N, e.g. 1/4 (I counts from 1)")
    if count < 1 or not 1 <= index <= count:
        raise argparse.ArgumentTypeError(f"shard {text}: I/N needs 1 <= I <= N, e.g. 1/4 ... 4/4")
    return index, count


def add_parser(subparsers) -> None:
    from ..cli import _add_model_options, _blocks, _finite

    prep = subparsers.add_parser(
        "prepare", help="write the study's task manifests (JSON) for `suppress-eot batch`",
        description="Write validated task manifests: one JSON file per set (or study.json with --all, the "
                    "study's 64 cases). Shipped photos are copied under OUT/images/ so the folder can be moved.")
    prep.set_defaults(command="prepare")
    prep.add_argument("sets", nargs="*", metavar="SET", help=f"sets to prepare: {', '.join(mf.SETS)}")
    prep.add_argument("--all", action="store_true",
                      help=f"one manifest (study.json) with the study's 64 cases: {', '.join(mf.STUDY_SETS)}")
    prep.add_argument("--out", default="manifests", help="folder for the manifests (default: %(default)s)")
    prep.add_argument("--coco-captions", type=Path, default=None, metavar="JSON",
                      help="COCO annotations/captions_val2017.json (default: the 79 car captions shipped with "
                           "suppresseot)")
    prep.add_argument("--coco-images", type=Path, default=None, metavar="DIR",
                      help="the unzipped COCO val2017/ folder (needed for coco-car-real)")
    prep.add_argument("--approaches", default=None, metavar="LIST",
                      help="record in the manifest the approaches `batch` runs each task by: a comma list of "
                           "names (`suppress-eot approaches`) or all (default: not recorded, SuppressEOT alone)")
    prep.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")

    batch = subparsers.add_parser(
        "batch", help="run every task of a manifest by each approach, one run directory a pair (resumable)",
        description="Run a manifest's tasks, each by every approach of the batch, into "
                    "OUT/<task id>--<approach>--<backend>/. Rerunning skips finished runs; a failing run is "
                    "recorded in OUT/failures.csv and the batch goes on; OUT/summary.csv is rewritten after "
                    "every run.")
    batch.set_defaults(command="batch")
    batch.add_argument("manifest", help="a manifest written by `suppress-eot prepare`")
    batch.add_argument("--out", required=True, help="folder for the run directories, summary.csv, failures.csv")
    _add_model_options(batch)
    s = batch.add_argument_group("settings for every task (official defaults)")
    s.add_argument("--steps", type=_positive, default=50, help="DDIM steps (default: %(default)s)")
    s.add_argument("--guidance-scale", type=_finite, default=7.5, help="classifier-free guidance (default: "
                                                                       "%(default)s)")
    s.add_argument("--iterations", type=_non_negative, default=None,
                   help="ITO gradient steps per step, for every task (default: the task's own, else 10)")
    s.add_argument("--max-step-to-erase", type=_non_negative, default=20,
                   help="ITO runs at steps [(1-tau)*steps, this) (default: %(default)s)")
    s.add_argument("--ito-blocks", type=_blocks, default=("up", "down", "mid"), metavar="BLOCKS",
                   help="UNet blocks whose attention maps ITO reads, a comma list of down, mid, up (default: all, "
                        "the official choice; see suppress-eot generate --help)")
    s.add_argument("--null-text-steps", type=_positive, default=10,
                   help="null-text Adam steps per DDIM step, real photos (default: %(default)s)")
    s.add_argument("--inversion", choices=list(mf.INVERSIONS), default=None,
                   help="nt (null-text) or npi, for every real task (default: the task's own, else nt)")
    s.add_argument("--group-size", type=_positive, default=1,
                   help="run up to N tasks of the same kind and settings together, their UNet passes batched "
                        "(each task keeps its own null-text, ITO state and run directory; results equal one-by-one "
                        "runs within float rounding; seconds and memory are the group's; a GPU with room for N "
                        "tasks' activations; with --fast on an H200, 8 gave 18x the official code's images per "
                        "hour, 16 to 64 about 22x; default: "
                        "%(default)s, one at a time)")
    w = batch.add_argument_group("which tasks, by which approaches")
    w.add_argument("--approaches", default=None, metavar="LIST",
                   help="run each task by each of these approaches, a comma list of names (`suppress-eot "
                        "approaches`), or all: every approach that can run it here (default: the manifest's "
                        "\"approaches\", else suppresseot). A pair an approach cannot run (a photo for a baseline "
                        "of generated images, an add task for a baseline) is left out and said so in one line")
    w.add_argument("--only", nargs="+", metavar="ID", help="run only these task ids")
    w.add_argument("--shard", type=_shard, default=None, metavar="I/N",
                   help="run every N-th task starting at the I-th (1/2 and 2/2 split a manifest in two)")
    w.add_argument("--limit", type=_positive, default=None, help="run only the first N selected tasks")
    add_ray_options(batch)
    o = batch.add_argument_group("output")
    o.add_argument("--no-progress", action="store_true", help="hide progress bars")
    o.add_argument("--debug", action="store_true", help="show tracebacks (one-line errors otherwise)")


def run(args) -> int:
    if args.command == "prepare":
        return cmd_prepare(args)
    return cmd_batch(args)


def _say(text: str = "") -> None:
    print(text, flush=True)


def cmd_prepare(args) -> int:
    from ..cli import shipped_tokenizer
    from ..runs import check_writable

    if args.all and args.sets:
        raise SuppressEOTError("give set names or --all, not both")
    if not args.all and not args.sets:
        raise SuppressEOTError(f"name the sets to prepare ({', '.join(mf.SETS)}) or use --all")
    unknown = [s for s in args.sets if s not in mf.SETS]
    if unknown:
        raise SuppressEOTError(f"unknown set {', '.join(unknown)}: choose from {', '.join(mf.SETS)} (or --all)")
    approaches = None if args.approaches is None else mf.approach_list(args.approaches)  # before any work
    sources = mf.Sources(coco_captions=args.coco_captions, coco_images=args.coco_images)
    tokenizer = shipped_tokenizer()
    names = list(mf.STUDY_SETS) if args.all else list(dict.fromkeys(args.sets))
    results, unavailable = [], []
    for name in names:
        try:
            results.append(mf.build_set(name, tokenizer, sources))
        except mf.NotPreparable as exc:
            if not args.all:  # asked for by name: nothing is written
                raise
            unavailable.append({"set": name, "reason": str(exc)})
    out = check_writable(args.out)
    if args.all:
        outputs = [(out / "study.json", "study", results)]
    else:
        outputs = [(out / f"{r.name}.json", r.name, [r]) for r in results]
    for path, name, group in outputs:
        mf.write_manifest(path, name, group, unavailable, tokenizer, approaches)
    for result in results:
        _say(f"{result.name:<14} {len(result.tasks):>3} tasks"
             + (f", {len(result.skipped)} skipped" if result.skipped else ""))
        for note in result.notes:
            _say(f"    {note}")
        for entry in result.skipped:
            _say(f"    skipped {entry['id']}: {entry['reason']}")
    for entry in unavailable:
        _say(f"{entry['set']:<14}   not preparable: {entry['reason']}")
    for path, name, group in outputs:
        total = sum(len(r.tasks) for r in group)
        if args.all:
            expected = sum(mf.COUNTS.get(n, 10) for n in mf.STUDY_SETS)
            _say(f"wrote {path}: {total} of the study's {expected} cases"
                 + (f" ({', '.join(e['set'] for e in unavailable)} not preparable here)" if unavailable else ""))
        else:
            _say(f"wrote {path}: {total} tasks")
    if approaches is not None:
        _say(f"approaches recorded for batch: {', '.join(approaches)}")
    return 0


def _families(args, manifest: mf.Manifest, tasks: list[mf.Task]) -> dict[str, str]:
    """Each task's model family (by task id), read from its model folder's configs: the folder resolved as
    loading it would (downloaded or converted once, and cached), the weights not loaded."""
    from ..cli import loras_of
    from ..families import detect_family
    from ..weights import LoRA, resolve_model

    by_spec: dict[tuple, str] = {}
    families = {}
    for task in tasks:
        spec = manifest.model_of(task)
        if spec not in by_spec:
            model, loras = spec
            folder = resolve_model(model or args.model, [LoRA.of(item) for item in (
                loras_of(args) if loras is None else loras)], args.variant, args.model_config)
            by_spec[spec] = detect_family(folder).name
        families[task.id] = by_spec[spec]
    return families


def batch_plan(args, manifest: mf.Manifest, tasks: list[mf.Task]):
    """The (task, approach) pairs' plan: ``--approaches``, else the manifest's, checked against the backend,
    the tasks and (where an approach lacks a family's pipeline) the models' families, before any work."""
    from .pairs import Plan

    plan = Plan.choose(args.approaches if args.approaches is not None else manifest.approaches, args.backend)
    plan.check(tasks)  # the backend, kinds and modes: no model needed
    if plan.needs_families:
        plan.families = _families(args, manifest, tasks)
        plan.check(tasks)
    return plan


def cmd_batch(args) -> int:
    from ..cli import shipped_tokenizer
    from ..runs import check_writable
    from .batch import BatchOptions, run_batch, select_tasks

    ray = ray_options(args, args.device)
    manifest = mf.load_manifest(args.manifest, shipped_tokenizer())
    tasks = select_tasks(manifest.tasks, args.only, args.shard, args.limit)
    if not tasks:
        raise SuppressEOTError(f"no task selected from {manifest.path} (check --only/--shard/--limit)")
    plan = batch_plan(args, manifest, tasks)  # one line and exit 2 where a named approach cannot run here
    missing = [t.id for t in tasks if t.type == "real" and not t.image_path(manifest.base_dir).is_file()]
    if missing:
        print(f"warning: {len(missing)} task(s) have no photo and will fail: {', '.join(missing[:5])}"
              + (" ..." if len(missing) > 5 else ""), file=sys.stderr)
    left_out = plan.left_out(tasks)
    if left_out:
        print(left_out, file=sys.stderr)
    out = check_writable(args.out)
    options = BatchOptions(steps=args.steps, guidance_scale=args.guidance_scale, iterations=args.iterations,
                           max_step_to_erase=args.max_step_to_erase, null_text_steps=args.null_text_steps,
                           inversion=args.inversion, group_size=args.group_size, ito_blocks=args.ito_blocks)

    def load_model(model=None, loras=None):
        """The command line's model and LoRAs, or those the manifest names: called once a model here, or once in
        each Ray worker (whose progress the batch's bar shows)."""
        from ..api import SuppressEOT
        from ..cli import loras_of

        return SuppressEOT.from_pretrained(model or args.model, backend=args.backend, device=args.device,
                                           dtype=args.dtype, fast=args.fast, cuda_graphs=args.cuda_graphs,
                                           offload_models=args.offload_models,
                                           fused_attention=args.fused_attention, compile_unet=args.compile,
                                           static_graphs=args.static_graphs,
                                           progress=not args.no_progress and ray is None,
                                           lora=loras_of(args) if loras is None else loras,
                                           variant=args.variant, config=args.model_config)

    command = {"command": " ".join(["suppress-eot"] + sys.argv[1:])}
    if ray is not None:
        from .ray_batch import run_batch_ray

        specs = {manifest.model_of(task) for task in tasks}
        if len(specs) > 1:
            raise SuppressEOTError("--ray runs one model and LoRA set; this manifest names several: run it without "
                                   "--ray, or select the tasks of one model with --only")
        spec = specs.pop()
        return run_batch_ray(manifest, tasks, lambda: load_model(*spec), args.backend, out, options, ray,
                             device=args.device, progress=not args.no_progress, debug=args.debug, extra=command,
                             plan=plan)
    return run_batch(manifest, tasks, load_model, args.backend, out, options, progress=not args.no_progress,
                     debug=args.debug, extra=command, plan=plan)
