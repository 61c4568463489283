"""Study throughput: images per hour of a `suppress-eot batch` run against the official code run case by case.

The official code runs one case at a time, and on the random-weight benchmark model every case of one mode
costs the same (null-text never stops early), so its time for a manifest is the sum, over the tasks, of
its per-mode seconds measured by bench.py in the same session on the same GPU (generated -> gen10, or gen0
for tasks without ITO; real photos -> real_nt or real_npi). Ours is the batch's own record: the sum of
task_seconds over tasks, a group's time counted once (task_seconds / group_size per task). Model loading
is left out on both sides.

    python benchmarks/throughput.py --bench RESULTS/bench.json --batch STUDY_RUNS/
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path


def official_seconds(bench: dict) -> dict[str, float]:
    results = bench["results"].get("official", {})
    return {mode: r["total_s"] for mode, r in results.items() if isinstance(r, dict) and "total_s" in r}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bench", type=Path, required=True, help="bench.json of a run with the official code")
    p.add_argument("--batch", type=Path, required=True, help="the --out folder of `suppress-eot batch`")
    args = p.parse_args(argv)
    per_mode = official_seconds(json.loads(args.bench.read_text()))
    with open(args.batch / "summary.csv", newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["status"] == "finished"]
    ours, official, missing = 0.0, 0.0, []
    for row in rows:
        record = json.loads((args.batch / row["run_dir"] / "run.json").read_text())
        ours += float(record["task_seconds"]) / max(1, int(record.get("group_size") or 1))
        if record["kind"] == "real":
            mode = "real_nt" if record["inversion"]["method"] == "nt" else "real_npi"
        else:
            mode = "gen10" if record["settings"]["iterations"] else "gen0"
        if mode in per_mode:
            official += per_mode[mode]
        else:
            missing.append(mode)
    if missing:
        raise SystemExit(f"bench.json has no official result for {sorted(set(missing))}: run bench.py with those modes")
    report = {"tasks": len(rows), "official_case_by_case_s": round(official, 2), "ours_s": round(ours, 2),
              "official_images_per_hour": round(3600 * len(rows) / official, 1),
              "ours_images_per_hour": round(3600 * len(rows) / ours, 1), "ratio": round(official / ours, 2)}
    print(json.dumps(report, indent=1))
    print(f"\n| tasks | official s (case by case) | ours s | official img/h | ours img/h | ratio |\n"
          f"| --- | --- | --- | --- | --- | --- |\n| {report['tasks']} | {report['official_case_by_case_s']} | "
          f"{report['ours_s']} | {report['official_images_per_hour']} | {report['ours_images_per_hour']} | "
          f"**{report['ratio']}x** |")
    return report


if __name__ == "__main__":
    main()
