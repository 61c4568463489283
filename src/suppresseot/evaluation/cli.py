"""``suppress-eot eval`` and ``suppress-eot report`` (added to the main CLI through ``EXTRA_COMMANDS``)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import SuppressEOTError


def add_parser(subparsers) -> None:
    from ..cli import _finite, whole_number
    from ..ray_pool import add_ray_options
    from .clipscore import DEFAULT_CLIP
    from .detect import DEFAULT_DETECTOR, DEFAULT_THRESHOLD

    ev = subparsers.add_parser(
        "eval", help="CLIPScore of every run against the prompt and against the prompt without the suppressed words, "
                     "and how much of the original image the edit kept",
        description="Score the original-branch and the suppressed image of every run directory in RESULTS_DIR with "
                    "CLIPScore (Hessel et al. 2021) against (a) the original prompt (suppression works when it "
                    "drops) and (b) the prompt without the suppressed words (the rest is kept when it holds), and "
                    "measure preservation between the two images (CLIP image similarity, SSIM; with --detector, SSIM "
                    "outside the suppressed object's boxes), the same for every approach. Writes a CSV row per run "
                    "and a markdown table per dataset, approach and backend.")
    ev.set_defaults(command="eval")
    ev.add_argument("results", metavar="RESULTS_DIR", help="folder of run directories (e.g. the --out of batch)")
    ev.add_argument("--clip-model", default=DEFAULT_CLIP,
                    help="hub id or local folder of a transformers CLIPModel (default: %(default)s)")
    ev.add_argument("--device", default="auto", help="auto (cuda if present), cpu or cuda (default: %(default)s)")
    ev.add_argument("--out", type=Path, default=None, metavar="FILE",
                    help="the per-run CSV (default: RESULTS_DIR/clipscores.csv, which `report` reads); the markdown "
                         "table is written beside it with the suffix .md")
    ev.add_argument("--detector", nargs="?", const=DEFAULT_DETECTOR, default=None, metavar="MODEL",
                    help="also count images where a zero-shot object detector still finds the suppressed word "
                         "(DetScore-style) and compute SSIM outside its boxes "
                         f"(without MODEL: {DEFAULT_DETECTOR})")
    ev.add_argument("--detector-threshold", type=_finite, default=DEFAULT_THRESHOLD,
                    help="a box scoring above this counts as detected and is left out of ssim_outside_boxes "
                         "(default: %(default)s)")
    add_ray_options(ev)
    ev.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    ev.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")

    rep = subparsers.add_parser(
        "report", help="compare the approaches of one folder of runs, or two sets of runs (e.g. torch vs jittor), "
                       "in a markdown report with tables, plots and image grids",
        description="With one folder (RUNS_A alone): write DIR/report.md comparing the approaches found in it "
                    "(SuppressEOT, its ablations, the baselines): per set, each approach's mean and 95% interval of "
                    "every CLIPScore, detector and preservation measure (run `eval` first), seconds and memory per "
                    "run, and an image grid per task. With two: compare the runs in RUNS_A and RUNS_B (ITO loss, "
                    "seconds per iteration, memory, time and CLIPScore per dataset, image grids and parity numbers of "
                    "the tasks both ran, matched by task and approach). RUNS_A and RUNS_B may be the same folder when "
                    "it holds both backends' runs and --labels names the backends.")
    rep.set_defaults(command="report")
    rep.add_argument("runs_a", metavar="RUNS_A", help="folder of run directories (alone: its approaches compared; "
                                                      "else the first side)")
    rep.add_argument("runs_b", metavar="RUNS_B", nargs="?", default=None,
                     help="folder of run directories (second side, the reference); leave out for the methods report")
    rep.add_argument("--out", required=True, metavar="DIR", help="folder for report.md and its PNGs")
    rep.add_argument("--labels", nargs=2, default=None, metavar=("LABEL_A", "LABEL_B"),
                     help="names of the two sides, e.g. torch jittor (default: A B); two folders only")
    rep.add_argument("--thumb", type=whole_number(16), default=128, metavar="PX",
                     help="image size in the grids (default: %(default)s)")
    rep.add_argument("--max-grid-tasks", type=whole_number(0), default=24, metavar="N",
                     help="at most N tasks per dataset (set) in the image grids; 0: all (default: %(default)s)")
    rep.add_argument("--title", default=None, help="the report's title")
    rep.add_argument("--note", default=None, help="a paragraph under the title (e.g. what the runs were)")
    rep.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")


def run(args) -> int:
    if args.command == "eval":
        return cmd_eval(args)
    if args.command == "report":
        return cmd_report(args)
    raise SuppressEOTError(f"unknown command {args.command!r}")


def cmd_eval(args) -> int:
    from tqdm.auto import tqdm

    from ..ray_pool import ray_options
    from ..runs import check_writable
    from . import find_runs, write_csv
    from .clipscore import COLUMNS, CLIPScorer, markdown_report, score_runs
    from .preservation import require_skimage

    ray = ray_options(args, args.device)
    runs = find_runs(args.results)
    csv_path = Path(args.out) if args.out else Path(args.results) / "clipscores.csv"
    md_path = csv_path.with_suffix(".md")
    check_writable(csv_path.parent)  # before loading any model
    require_skimage()

    def progress_bar():  # after the models load: a load error stays one line
        return tqdm(total=len(runs), desc="scoring", unit="run", disable=args.no_progress, file=sys.stderr)

    if ray is not None:
        from .ray_eval import score_runs_ray

        bar = progress_bar()
        try:
            rows = score_runs_ray(runs, args.clip_model, args.detector, args.device, args.detector_threshold, ray,
                                  progress=bar.update)
        finally:
            bar.close()
        names = str(args.clip_model), args.detector and str(args.detector)
    else:
        scorer = CLIPScorer(args.clip_model, device=args.device)
        detector = None
        if args.detector:
            from .detect import Detector

            detector = Detector(args.detector, device=args.device)
        bar = progress_bar()
        rows = score_runs(runs, scorer, detector, args.detector_threshold, progress=lambda *_: bar.update())
        bar.close()
        names = scorer.name, detector.name if detector else None
    write_csv(csv_path, COLUMNS, rows)
    text = markdown_report(rows, names[0], names[1], args.detector_threshold)
    md_path.write_text(text, encoding="utf-8")
    print(text)
    print(f"wrote {csv_path} ({len(rows)} runs) and {md_path}", file=sys.stderr)
    return 0


def cmd_report(args) -> int:
    """Two folders (or one and --labels naming its backends): the two sides; one folder: its approaches."""
    common = dict(thumb=args.thumb, max_grid_tasks=args.max_grid_tasks or None, title=args.title, note=args.note)
    if args.runs_b is None:
        if args.labels:
            raise SuppressEOTError("--labels names the two sides of a comparison: give RUNS_B too, or leave "
                                   "--labels out to compare the approaches of RUNS")
        from .methods import build_methods_report

        path = build_methods_report(args.runs_a, args.out, **common)
    else:
        from .report import build_report

        path = build_report(args.runs_a, args.runs_b, args.out, labels=args.labels, **common)
    print(path)
    return 0
