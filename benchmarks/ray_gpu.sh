#!/usr/bin/env bash
# `batch --ray` on one GPU: the same generated-image manifest three ways, timed end to end:
#   local  the local batch (no Ray)
#   ray1   one Ray worker with the whole GPU      (--ray --workers 1 --gpus-per-worker 1)
#   ray2   two Ray workers sharing it             (--ray --workers 2 --gpus-per-worker 0.5)
# on the SD-v1.4-shaped random model (benchmarks/gpu_bench.sh builds the same), with --fast.
#
#   bash benchmarks/ray_gpu.sh WORKDIR          # from the repository root, on the GPU machine
#
# Ray is not on the GPU image: carry its wheel and the four packages it needs that the image lacks, in .whl/
# (git-ignored), with diffusers as for gpu_bench.sh. On a machine with pip and a registry:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d .whl \
#       ray==2.60.0 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1 \
#       diffusers==0.42.1
#   python benchmarks/slim_ray_wheel.py .whl/ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl   # 79 MB -> 43 MB
# (the image has Ray's other needs: click, filelock, msgpack, packaging, protobuf, pyyaml, requests, attrs.)
# Knobs: CONFIGS (default "local ray1 ray2"), SETS (prepare's sets, default "vangogh tyler": 30 generated tasks),
# GROUP (--group-size, default 4), FLAGS (more batch options, default --fast), TIMEOUT (seconds per config, 240).
# Results: WORKDIR/ray.md (the table for docs/benchmarks.md), WORKDIR/<config>.log, WORKDIR/<config>/summary.csv.
set -u
cd "$(dirname "$0")/.."
REPO=$PWD
W=${1:-/tmp/ray-gpu}
mkdir -p "$W"
LOG=$W/log
say() { echo "[$(date +%T)] $*" | tee -a "$LOG"; }
SITE=$W/site
MODEL=$W/sdv1

say "machine: $(nvidia-smi -L | head -1); $(python3 --version)"
python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl >> "$LOG" 2>&1 \
  || { say "FAIL: wheel install"; exit 1; }
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH="$SITE:$REPO/src"
unset RAY_ADDRESS
python3 -c "import ray, diffusers; print('ray', ray.__version__, 'diffusers', diffusers.__version__)" 2>&1 | tee -a "$LOG"

if [ ! -f "$MODEL/model_index.json" ]; then
  say "building the SD-v1.4-shaped random model"
  python3 -c "
from pathlib import Path
from suppresseot.random_model import save_random_model
save_random_model(Path('$MODEL'), Path('$REPO/src/suppresseot/data/clip-tokenizer'), size='sd-v1', seed=0)
" > "$W/model.log" 2>&1 || { say "FAIL: model (model.log)"; exit 1; }
fi

say "manifest: ${SETS:-vangogh tyler}"
python3 -m suppresseot.cli prepare ${SETS:-vangogh tyler} --out "$W/manifests" >> "$LOG" 2>&1
python3 - "$W/manifests" ${SETS:-vangogh tyler} <<'EOF'
import json, sys
from pathlib import Path
folder, sets = Path(sys.argv[1]), sys.argv[2:]
tasks = [t for s in sets for t in json.loads((folder / f"{s}.json").read_text())["tasks"]]
(folder / "gen.json").write_text(json.dumps({"name": "gen", "tasks": tasks}, indent=1))
print(len(tasks), "tasks")
EOF

common=(batch "$W/manifests/gen.json" --model "$MODEL" ${FLAGS:---fast} --group-size "${GROUP:-4}" --no-progress)
for config in ${CONFIGS:-local ray1 ray2}; do
  case $config in
    local) extra=() ;;
    ray1) extra=(--ray --workers 1 --gpus-per-worker 1 --no-dashboard) ;;
    ray2) extra=(--ray --workers 2 --gpus-per-worker 0.5 --no-dashboard) ;;
    *) say "unknown config $config"; continue ;;
  esac
  rm -rf "$W/$config"
  start=$(date +%s.%N)
  timeout "${TIMEOUT:-240}" python3 -m suppresseot.cli "${common[@]}" "${extra[@]}" --out "$W/$config" \
    > "$W/$config.log" 2>&1
  rc=$?
  python3 -c "import sys; print(round(float(sys.argv[1]) - float(sys.argv[2]), 1))" "$(date +%s.%N)" "$start" \
    > "$W/$config.wall"
  say "$config: rc $rc, $(cat "$W/$config.wall") s; $(tail -1 "$W/$config.log")"
done

python3 - "$W" ${CONFIGS:-local ray1 ray2} <<'EOF' | tee "$W/ray.md"
import csv, json, sys
from pathlib import Path
w, configs = Path(sys.argv[1]), sys.argv[2:]
print("| config | tasks finished | wall s (start to exit) | s from first to last run saved | tasks/min (saved span) "
      "| tasks per worker | device peak GiB (NVML) |")
print("|---|---:|---:|---:|---:|---|---:|")
for c in configs:
    out = w / c
    rows = list(csv.DictReader(open(out / "summary.csv"))) if (out / "summary.csv").is_file() else []
    done = [r for r in rows if r["status"] == "finished"]
    records = [json.loads((out / r["run_dir"] / "run.json").read_text()) for r in done]
    stamps = sorted((out / r["run_dir"] / "run.json").stat().st_mtime for r in done)
    span = stamps[-1] - stamps[0] if len(stamps) > 1 else float("nan")
    # the first group's saving opens the span: count the tasks saved after it
    first = sum(1 for s in stamps if s == stamps[0]) if stamps else 0
    rate = (len(stamps) - first) / span * 60 if span == span and span > 0 else float("nan")
    workers = {}
    for rec in records:
        key = (rec.get("ray_worker") or {}).get("pid", "local")
        workers[key] = workers.get(key, 0) + 1
    peaks = [float(r["nvml_peak_used_bytes"]) for r in done if r.get("nvml_peak_used_bytes")]
    wall = float((w / f"{c}.wall").read_text()) if (w / f"{c}.wall").is_file() else float("nan")
    peak = f"{max(peaks) / 2**30:.1f}" if peaks else ""
    split = " + ".join(str(n) for n in sorted(workers.values(), reverse=True))
    print(f"| {c} | {len(done)}/{len(rows)} | {wall:.1f} | {span:.1f} | {rate:.1f} | {split} | {peak} |")
EOF
