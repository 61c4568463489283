#!/usr/bin/env bash
# `batch --ray` over the GPUs of one machine: the same manifest run several ways, each timed end to end on a
# fresh output folder, for the scaling figure (throughput on N GPUs over one GPU; the goal is at least 0.95·N):
#   local  the local batch (no Ray)
#   ray1   one Ray worker with one GPU         (--ray --workers 1 --gpus-per-worker 1)
#   rayN   one worker per GPU                  (--ray --workers N --gpus-per-worker 1)
#   ray2N  two workers per GPU                 (--ray --workers 2N --gpus-per-worker 0.5)
#   ray2   two workers sharing one GPU         (--ray --workers 2 --gpus-per-worker 0.5; the one-GPU run of 2026-12-03)
# N is the number of GPUs `nvidia-smi -L` lists. A config whose flags equal an earlier one's is skipped: on one
# GPU rayN is ray1 and ray2N is ray2. Then `eval --ray` (CLIPScore) over rayN's folder on N workers, timed.
# The model is the SD-v1.4-shaped random model (benchmarks/gpu_bench.sh builds the same), with --fast.
#
#   bash benchmarks/ray_gpu.sh WORKDIR          # from the repository root, on the GPU machine
#   CLIP=random bash benchmarks/ray_gpu.sh .bench/ray-scale     # eval with a ViT-B/32-shaped random CLIP
#
# Each command of the lent machines may run 10 minutes: split the configs over calls on the same warm machine
# and WORKDIR (CONFIGS="local ray1", then CONFIGS="rayN ray2N" CLIP=random); WORKDIR/ray.md covers every config
# found in WORKDIR (its header and notes: the last call's), and the scaling divides by the ray1 found there (run
# it on the same machine, with the same SETS, REPEAT, GROUP and FLAGS in every call: each call rewrites the manifest).
#
# Ray is not on the GPU image: carry its wheel and the four packages it needs that the image lacks, in .whl/
# (git-ignored), with diffusers as for gpu_bench.sh. On a machine with pip and a registry:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d .whl \
#       ray==2.60.0 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1 \
#       diffusers==0.42.1
#   python benchmarks/slim_ray_wheel.py .whl/ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl   # 79 MB -> 43 MB
# (the image has Ray's other needs: click, filelock, msgpack, packaging, protobuf, pyyaml, requests, attrs, and
# nvidia-ml-py for the utilization sampler.) Without .whl/ the script uses what python3 imports (PYTHONPATH kept).
#
# Knobs (environment variables):
#   CONFIGS        configs to run, in order (default "local ray1 rayN ray2N"; also ray2)
#   SETS           prepare's sets instead of the study (default: `prepare --all`, the study's 52 cases without the
#                  COCO photos, 10 of them photos); e.g. SETS="vangogh tyler" for the 30 generated tasks of 2026-12-03
#   REPEAT         copies of the manifest's tasks (ids suffixed -r1, -r2, ...; default 1): more groups per worker
#                  when N is large (52 tasks in groups of 4 are 13 groups: fewer than two for each of 8 workers)
#   GROUP          --group-size (default 4)
#   FLAGS          more batch options (default --fast); e.g. --cpus-per-worker 2
#   TIMEOUT        seconds per config (default 240); a config cut short is reported with what it saved
#   GPUS           N instead of what `nvidia-smi -L` lists; GPUS=0: no GPU, Ray workers on the CPU
#   DEVICE         --device of batch and eval (default: theirs, auto); DEVICE=cpu runs CPU workers (no
#                  --gpus-per-worker, rayN is N CPU workers, ray2N and ray2 are skipped)
#   SIZE           the random model's size: sd-v1 (default) or tiny (256 px; for a smoke run on the CPU)
#   CLIP           eval's CLIP model: a local folder of a transformers CLIPModel (no download on the GPU machine),
#                  or `random` (built here: ViT-B/32's shape and cost, random weights: timings only); unset: no eval
#   NVML_INTERVAL  seconds between utilization samples (default 0.5)
#   REPORT_ONLY=1  run nothing, rewrite WORKDIR/ray.md from what WORKDIR holds
#   DRY_RUN=1      prepare the manifest and print each config's command without running it (no model, no ray.md)
# Results: WORKDIR/ray.md (tables, column definitions, the exact commands), and per config WORKDIR/<config>/
# (summary.csv and the run directories), <config>.log, <config>.meta.json (command, flags, start and end),
# <config>.cpu.json (the driver's CPU time), <config>.nvml.csv (every GPU's utilization.gpu every NVML_INTERVAL s);
# WORKDIR/eval/clipscores.csv for the eval.
set -u
cd "$(dirname "$0")/.."
REPO=$PWD
W=${1:-/tmp/ray-gpu}
mkdir -p "$W"
W=$(cd "$W" && pwd)
LOG=$W/log
T=$W/tools
say() { echo "[$(date +%T)] $*" | tee -a "$LOG"; }
GROUP=${GROUP:-4}
FLAGS=${FLAGS:---fast}
TIMEOUT=${TIMEOUT:-240}
NVML_INTERVAL=${NVML_INTERVAL:-0.5}
REPEAT=${REPEAT:-1}
SIZE=${SIZE:-sd-v1}
DEVICE=${DEVICE:-}
CONFIGS=${CONFIGS:-local ray1 rayN ray2N}
SITE=$W/site
if compgen -G "$REPO/.whl/*.whl" > /dev/null; then
  export PYTHONPATH="$SITE:$REPO/src"
else
  case ":${PYTHONPATH:-}:" in *":$REPO/src:"*) ;; *) export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}" ;; esac
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
unset RAY_ADDRESS

report() {
python3 - "$W" <<'EOF' > "$W/ray.md"
import csv, json, math, statistics, sys
from pathlib import Path

w = Path(sys.argv[1])
NAN = float("nan")
ORDER = ["local", "ray1", "ray2", "rayN", "ray2N", "eval"]


def num(x, digits=1):
    return "" if x is None or x != x else f"{x:.{digits}f}"


def load(path, default=None):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default


def busy(config, lo, hi):
    """Mean utilization.gpu of each GPU over the samples taken between lo and hi."""
    path = w / f"{config}.nvml.csv"
    if not path.is_file() or lo != lo or hi != hi:
        return None
    per = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if lo <= float(row["time"]) <= hi:
                per.setdefault(int(row["gpu"]), []).append(float(row["util_gpu"]))
    return {gpu: statistics.mean(v) for gpu, v in sorted(per.items())}


def busy_text(config, lo, hi):
    shares = busy(config, lo, hi)
    if shares is None:
        none = w / f"{config}.nvml.csv.none"
        return "no NVML" if none.is_file() else ""
    return " ".join(f"{v:.0f}" for v in shares.values()) or "no samples"


def cpu_text(meta):
    cpu = load(w / f"{meta['config']}.cpu.json")
    if not cpu:
        return "", "", ""
    own = cpu["user"] + cpu["sys"]
    wall = meta["end"] - meta["start"]
    return (f"{own:.1f} ({cpu['user']:.1f} + {cpu['sys']:.1f})", num(own / wall * 100, 0) if wall > 0 else "",
            num(cpu["children_user"] + cpu["children_sys"]))


def batch_stats(meta):
    out = w / meta["folder"]
    rows = list(csv.DictReader(open(out / "summary.csv"))) if (out / "summary.csv").is_file() else []
    done = [r for r in rows if r["status"] == "finished"]
    runs = []
    for r in done:
        path = out / r["run_dir"] / "run.json"
        runs.append((json.loads(path.read_text()), path.stat().st_mtime))
    stamps = sorted(t for _, t in runs)
    span = stamps[-1] - stamps[0] if len(stamps) > 1 else NAN
    # as on 2026-12-03: the runs saved after the first, over the span from the first saved to the last
    first = sum(1 for s in stamps if s == stamps[0]) if stamps else 0
    one_group = len({json.dumps(rec.get("group") or rec["task"]["id"]) for rec, _ in runs}) < 2
    rate_span = (len(stamps) - first) / span * 60 if span == span and span > 0 and not one_group else NAN
    wall = meta["end"] - meta["start"]
    # each worker's groups: (run.json's ray_worker pid, its group's runs) -> save times, the group's seconds
    workers = {}
    for rec, t in runs:
        who = (rec.get("ray_worker") or {}).get("pid", "local")
        approach = rec.get("approach")
        approach = approach.get("name") if isinstance(approach, dict) else approach
        key = (tuple(rec.get("group") or [rec["task"]["id"]]), approach)
        group = workers.setdefault(who, {}).setdefault(key, {"times": [], "seconds": rec.get("task_seconds") or 0.0})
        group["times"].append(t)
    rates, shares = [], []
    for groups in workers.values():
        seq = sorted((max(g["times"]), len(g["times"]), g["seconds"]) for g in groups.values())
        if len(seq) > 1 and seq[-1][0] > seq[0][0]:
            rates.append(sum(n for _, n, _ in seq[1:]) / (seq[-1][0] - seq[0][0]) * 60)
        begin = seq[0][0] - seq[0][2]
        if seq[-1][0] > begin:
            shares.append(sum(s for _, _, s in seq) / (seq[-1][0] - begin))
    steady = statistics.mean(rates) * len(workers) if rates else NAN
    peaks = [float(r["nvml_peak_used_bytes"]) for r in done if r.get("nvml_peak_used_bytes")]
    return dict(rows=rows, done=done, wall=wall, span=span, rate_span=rate_span, steady=steady,
                rate_wall=len(done) / wall * 60 if wall > 0 else NAN, measured=len(rates), workers=workers,
                split=" + ".join(str(sum(len(g["times"]) for g in gs.values()))
                                 for gs in sorted(workers.values(), key=lambda gs: -sum(len(g["times"]) for g in gs.values()))),
                share=statistics.mean(shares) if shares else NAN,
                peak=f"{max(peaks) / 2**30:.1f}" if peaks else "",
                lo=stamps[0] if stamps else NAN, hi=stamps[-1] if stamps else NAN)


metas = [m for m in (load(p) for p in w.glob("*.meta.json")) if m]
metas.sort(key=lambda m: (ORDER.index(m["config"]) if m["config"] in ORDER else len(ORDER), m["start"]))
setup = load(w / "setup.json", {})
batches = [m for m in metas if m["kind"] == "batch"]
evals = [m for m in metas if m["kind"] == "eval"]
stats = {m["config"]: batch_stats(m) for m in batches}

print("# `batch --ray` over the GPUs of one machine (benchmarks/ray_gpu.sh)\n")
for key, label in (("gpus", "GPUs (nvidia-smi -L)"), ("n", "N"), ("mode", "workers"), ("versions", "software"),
                   ("commit", "commit"), ("manifest", "manifest"), ("knobs", "knobs"), ("date", "date")):
    if setup.get(key) not in (None, ""):
        print(f"- {label}: {setup[key]}")
print()
if batches:
    print("| config | workers x GPU share | tasks finished | wall s (start to exit) | s from first to last run saved "
          "| tasks/min (saved span) | tasks/min (wall) | tasks/min (steady, per worker) | tasks per worker "
          "| workers' compute share | driver CPU s (user + sys) | driver CPU % of wall | its reaped children's CPU s "
          "| GPU busy % (wall), per GPU | GPU busy % (saved span), per GPU | device peak GiB (NVML) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---|---|---:|")
    for m in batches:
        s = stats[m["config"]]
        own, share_of_wall, children = cpu_text(m)
        cut = "" if m["rc"] in (0, 1) else f" (rc {m['rc']})"
        print(f"| {m['config']}{cut} | {m['label']} | {len(s['done'])}/{len(s['rows'])} | {num(s['wall'])} "
              f"| {num(s['span'])} | {num(s['rate_span'])} | {num(s['rate_wall'])} | {num(s['steady'])} "
              f"| {s['split']} | {num(s['share'] * 100, 0)}{'%' if s['share'] == s['share'] else ''} | {own} | {share_of_wall} | {children} "
              f"| {busy_text(m['config'], m['start'], m['end'])} | {busy_text(m['config'], s['lo'], s['hi'])} "
              f"| {s['peak']} |")
    base = stats.get("ray1")
    print()
    if not base or not base["done"]:
        print("No finished ray1 in this folder: no scaling figure (it divides by ray1's throughput).")
    elif not [m for m in batches if m["config"] != "ray1" and m["workers"]]:
        print("No Ray config beside ray1 in this folder: no scaling figure.")
    else:
        print("Scaling: throughput over ray1's (one worker, one GPU). Goal: at least 0.95 x the GPUs used.\n")
        print("| config | GPUs used | x ray1 (steady, per worker) | x ray1 (saved span) | x ray1 (wall) "
              "| goal (0.95 x GPUs) | steady meets it |")
        print("|---|---:|---:|---:|---:|---:|---|")
        for m in batches:
            if m["config"] == "ray1" or m["workers"] == 0:
                continue
            s = stats[m["config"]]
            ratio = {k: s[k] / base[k] if base[k] and base[k] == base[k] else NAN
                     for k in ("steady", "rate_span", "rate_wall")}
            gpus = m.get("gpus")
            goal = 0.95 * gpus if gpus and gpus > 1 else None
            met = "" if goal is None or ratio["steady"] != ratio["steady"] else (
                "yes" if ratio["steady"] >= goal else "no")
            print(f"| {m['config']} | {num(gpus, 1) if gpus else 'CPU workers: ' + str(m['workers'])} "
                  f"| {num(ratio['steady'], 2)} | {num(ratio['rate_span'], 2)} | {num(ratio['rate_wall'], 2)} "
                  f"| {num(goal, 2) if goal else '-'} | {met} |")
    print()
    print("- tasks/min (saved span): the runs saved after the first, over the time from the first run directory "
          "saved to the last (the measure of 2026-12-03). With several workers it overstates: the other workers' "
          "first groups, computed before the span opens, are counted in it.")
    print("- tasks/min (wall): finished runs over the wall time from start to exit: Ray's start and every worker's "
          "model load included.")
    print("- tasks/min (steady, per worker): the sum of the workers' own rates, each the runs of its groups after "
          "its first over the time from its first group saved to its last (run.json's ray_worker pid and group); "
          f"a worker with one group counts at the others' mean. Measured on: "
          + ", ".join(f"{c} {s['measured']}/{len(s['workers'])} workers" for c, s in stats.items()) + ".")
    print("- workers' compute share: each worker's groups' seconds (run.json's task_seconds) over its time from "
          "its first group's start to its last save, mean over workers; below 100% a worker waited for the "
          "driver (saving, the queue).")
    print("- driver CPU: user + sys seconds of the `suppress-eot` process alone (getrusage RUSAGE_SELF in the "
          "wrapper tools/driver.py, at exit). Ray's workers are other processes and are not in it; "
          "'its reaped children' (RUSAGE_CHILDREN) are the processes it started and waited for: the Ray servers "
          "a local Ray starts (and whatever they reaped).")
    print("- GPU busy %: the mean of NVML's utilization.gpu (share of time a kernel ran) over the samples taken "
          f"every {setup.get('nvml_interval', '?')} s between the config's start and exit, or between its first "
          "and last run saved; one figure per GPU in NVML's order.")
if evals:
    print("\n`eval --ray` (CLIPScore and the preservation measures) over a batch folder:\n")
    print("| folder | workers x GPU share | CLIP | runs scored | wall s (start to exit) | runs/min (wall) "
          "| driver CPU s (user + sys) | driver CPU % of wall | GPU busy % (wall), per GPU |")
    print("|---|---|---|---:|---:|---:|---:|---:|---|")
    for m in evals:
        scored = list(csv.DictReader(open(m["csv"]))) if Path(m["csv"]).is_file() else []
        wall = m["end"] - m["start"]
        own, share_of_wall, _ = cpu_text(m)
        cut = "" if m["rc"] == 0 else f" (rc {m['rc']})"
        print(f"| {m['folder']}{cut} | {m['label']} | {m['clip']} | {len(scored)} | {num(wall)} "
              f"| {num(len(scored) / wall * 60 if wall > 0 else NAN)} | {own} | {share_of_wall} "
              f"| {busy_text(m['config'], m['start'], m['end'])} |")
    print("\neval sends the runs to the workers in chunks of 16: a folder of R runs keeps at most ceil(R/16) "
          "workers busy.")
if setup.get("notes"):
    print()
    for note in setup["notes"]:
        print(f"- {note}")
print("\nCommands, as run (from the repository root; PYTHONPATH=" + setup.get("pythonpath", "?") + "):\n")
print("```bash")
for line in setup.get("commands", []):
    print(line)
for m in metas:
    print(m["command"])
print("```")
EOF
}

if [ "${REPORT_ONLY:-0}" = 1 ]; then
  report && cat "$W/ray.md" && exit 0
  exit 1
fi

# the GPUs, N, where the workers run
GPU_LIST=$(nvidia-smi -L 2>/dev/null)
DETECTED=$(printf '%s\n' "$GPU_LIST" | grep -c '^GPU ')
N=${GPUS:-$DETECTED}
case $N in ''|*[!0-9]*) say "GPUS=$N: give a whole number"; exit 1 ;; esac
if [ "$N" -ge 1 ] && [ "$DEVICE" != cpu ]; then ON_GPU=1; MODE="GPU workers, N=$N"
else ON_GPU=0; MODE="CPU workers (GPUS=$N, DEVICE=${DEVICE:-auto}): no --gpus-per-worker, rayN has max(N, 1) workers"; fi
NW=$(( N > 0 ? N : 1 ))
say "machine: ${GPU_LIST:-no GPU listed by nvidia-smi}; $(python3 --version); $MODE"

if compgen -G "$REPO/.whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "$REPO"/.whl/*.whl >> "$LOG" 2>&1 \
    || { say "FAIL: wheel install"; exit 1; }
fi
VERSIONS=$(python3 -c "
import platform, ray, diffusers, torch
print(f'Python {platform.python_version()}, torch {torch.__version__}, Ray {ray.__version__}, diffusers {diffusers.__version__}')
" 2>> "$LOG") || { say "FAIL: ray, diffusers or torch do not import (see log)"; exit 1; }
say "$VERSIONS"

mkdir -p "$T"
cat > "$T/driver.py" <<'EOF'
"""`suppress-eot ARGS` (the same main()), then its own CPU time into OUT: python3 driver.py OUT ARGS..."""
import json, resource, signal, sys

out = sys.argv.pop(1)  # sys.argv is then suppress-eot's (run.json records it)
signal.signal(signal.SIGINT, signal.default_int_handler)  # timeout's SIGINT is Ctrl-C, even where `&` ignored it
rc = 1
try:
    from suppresseot.cli import main

    rc = main(sys.argv[1:])
except SystemExit as exc:
    rc = exc.code if isinstance(exc.code, int) else 1
    raise
finally:
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(out, "w") as f:
        json.dump({"user": me.ru_utime, "sys": me.ru_stime, "children_user": children.ru_utime,
                   "children_sys": children.ru_stime, "rc": rc}, f)
sys.exit(rc)
EOF
cat > "$T/nvml_sample.py" <<'EOF'
"""Every GPU's utilization every INTERVAL s into OUT (CSV) until killed: python3 nvml_sample.py OUT INTERVAL"""
import sys, time

out, interval = sys.argv[1], float(sys.argv[2])
try:
    import pynvml

    pynvml.nvmlInit()
    handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
except Exception as exc:  # no nvidia-ml-py, no driver
    with open(out + ".none", "w") as f:
        f.write(f"{type(exc).__name__}: {exc}\n")
    sys.exit(0)
with open(out, "w", buffering=1) as f:
    f.write("time,gpu,util_gpu,util_memory,memory_used_mib\n")
    while True:
        now = time.time()
        for i, h in enumerate(handles):
            u, m = pynvml.nvmlDeviceGetUtilizationRates(h), pynvml.nvmlDeviceGetMemoryInfo(h)
            f.write(f"{now:.3f},{i},{u.gpu},{u.memory},{m.used / 2**20:.0f}\n")
        time.sleep(max(0.0, interval - (time.time() - now)))
EOF

COMMANDS=()
record() { COMMANDS+=("$(printf '%q ' "$@")"); "$@"; }

if [ "$SIZE" = sd-v1 ]; then MODEL=$W/sdv1; LATENT=64; else MODEL=$W/random-$SIZE; LATENT=32; fi
DRY=${DRY_RUN:-0}
if [ "$DRY" != 1 ] && [ ! -f "$MODEL/model_index.json" ]; then
  say "building the $SIZE random model"
  python3 -c "
from pathlib import Path
from suppresseot.random_model import save_random_model
save_random_model(Path('$MODEL'), Path('$REPO/src/suppresseot/data/clip-tokenizer'), size='$SIZE', seed=0,
                  latent_size=$LATENT)
" > "$W/model.log" 2>&1 || { say "FAIL: model (model.log)"; exit 1; }
fi
COMMANDS+=("# model: suppresseot.random_model.save_random_model($MODEL, size='$SIZE', seed=0, latent_size=$LATENT)")

rm -rf "$W/manifests"
if [ -n "${SETS:-}" ]; then
  say "manifest: $SETS"
  record python3 -m suppresseot.cli prepare $SETS --out "$W/manifests" >> "$LOG" 2>&1
  NAMES=$SETS
else
  say "manifest: the study (prepare --all)"
  record python3 -m suppresseot.cli prepare --all --out "$W/manifests" >> "$LOG" 2>&1
  NAMES=study
fi
MANIFEST_TEXT=$(python3 - "$W/manifests" "$REPEAT" $NAMES <<'EOF'
import collections, json, sys
from pathlib import Path
folder, repeat, names = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
manifests = [json.loads((folder / f"{n}.json").read_text()) for n in names]
tasks = [t for m in manifests for t in m["tasks"]]
tasks = [t if k == 0 else {**t, "id": f"{t['id']}-r{k}"} for k in range(repeat) for t in tasks]
head = {k: v for k, v in manifests[0].items() if k not in ("tasks", "skipped", "unavailable")}
(folder / "bench.json").write_text(json.dumps({**head, "name": "bench", "tasks": tasks}, indent=1))
kinds = collections.Counter(t["type"] for t in tasks)
print(f"{len(tasks)} tasks ({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))}) from {' '.join(names)}"
      + (f" x {repeat}" if repeat > 1 else ""))
EOF
) || { say "FAIL: manifest"; exit 1; }
say "manifest: $MANIFEST_TEXT"
COMMANDS+=("# manifests/bench.json: the tasks of $NAMES.json, $REPEAT time(s) ($MANIFEST_TEXT)")

SAMPLER=
start_sampler() { python3 "$T/nvml_sample.py" "$1" "$NVML_INTERVAL" & SAMPLER=$!; }
stop_sampler() { kill "$SAMPLER" 2>/dev/null; wait "$SAMPLER" 2>/dev/null; SAMPLER=; }
trap 'stop_sampler' EXIT

# run_config CONFIG KIND FOLDER WORKERS SHARE LABEL EXTRA ARGS...: `suppress-eot ARGS` through tools/driver.py,
# timed, its GPUs sampled, its CPU time and WORKDIR/CONFIG.meta.json (EXTRA: more JSON fields) written
run_config() {
  local config=$1 kind=$2 folder=$3 workers=$4 share=$5 label=$6 extra=$7
  shift 7
  # SIGINT at the timeout: Ray's core dies at once on SIGTERM; SIGINT is Ctrl-C (Ray shut down, the CPU time written)
  local cmd=(timeout -s INT -k 30 "$TIMEOUT" python3 "$T/driver.py" "$W/$config.cpu.json" "$@")
  if [ "$DRY" = 1 ]; then say "$config (dry run): $(printf '%q ' "${cmd[@]}")"; return 0; fi
  rm -rf "${W:?}/$config".{log,wall,cpu.json,nvml.csv,nvml.csv.none,meta.json}
  start_sampler "$W/$config.nvml.csv"
  local start end rc
  start=$(date +%s.%N)
  "${cmd[@]}" > "$W/$config.log" 2>&1
  rc=$?
  end=$(date +%s.%N)
  stop_sampler
  python3 -c "import sys; print(round(float(sys.argv[1]) - float(sys.argv[2]), 1))" "$end" "$start" > "$W/$config.wall"
  python3 - "$W/$config.meta.json" "$config" "$kind" "$folder" "$workers" "$share" "$label" "$start" "$end" "$rc" \
    "$(printf '%q ' "${cmd[@]}")" "$extra" <<'EOF'
import json, sys
out, config, kind, folder, workers, share, label, start, end, rc, command, extra = sys.argv[1:]
meta = dict(config=config, kind=kind, folder=folder, workers=int(workers), share=float(share) if share else None,
            gpus=int(workers) * float(share) if share else None, label=label, start=float(start), end=float(end),
            rc=int(rc), command=command.strip())
meta.update(json.loads(extra or "{}"))
open(out, "w").write(json.dumps(meta, indent=1))
EOF
  say "$config: rc $rc, $(cat "$W/$config.wall") s; $(tail -1 "$W/$config.log")"
}

# plan CONFIG: WORKERS (0: no Ray) and SHARE (empty: CPU workers), or WHY it is not run here
plan() {
  WORKERS= SHARE= WHY=
  case $1 in
    local) WORKERS=0 ;;
    ray1) WORKERS=1 SHARE=1 ;;
    rayN) WORKERS=$NW SHARE=1 ;;
    ray2) WORKERS=2 SHARE=0.5 ;;
    ray2N) WORKERS=$(( 2 * N )) SHARE=0.5 ;;
    *) WHY="unknown config (local ray1 rayN ray2N ray2)"; return 1 ;;
  esac
  if [ "$SHARE" = 0.5 ] && [ "$ON_GPU" = 0 ]; then WHY="two workers a GPU needs a GPU"; return 1; fi
  [ "$ON_GPU" = 1 ] || SHARE=
  return 0
}
ray_flags() {  # the flags of WORKERS and SHARE
  RAY_FLAGS=()
  [ "$WORKERS" -ge 1 ] && RAY_FLAGS=(--ray --workers "$WORKERS")
  [ -n "$SHARE" ] && RAY_FLAGS+=(--gpus-per-worker "$SHARE")
  [ "$WORKERS" -ge 1 ] && RAY_FLAGS+=(--no-dashboard)
  return 0
}
label() {
  if [ "$WORKERS" = 0 ]; then echo "no Ray"
  elif [ -n "$SHARE" ]; then echo "$WORKERS x $SHARE GPU"
  else echo "$WORKERS CPU worker(s)"; fi
}

DEV=()
[ -n "$DEVICE" ] && DEV=(--device "$DEVICE")
common=(batch "$W/manifests/bench.json" --model "$MODEL" $FLAGS --group-size "$GROUP" --no-progress "${DEV[@]}")
declare -A SEEN=()
NOTES=()
skip() { say "$1: skipped: $2"; NOTES+=("$1: not run here: $2"); }
for config in $CONFIGS; do
  plan "$config" || { skip "$config" "$WHY"; continue; }
  key="$WORKERS/$SHARE"
  if [ -n "${SEEN[$key]:-}" ]; then skip "$config" "the same flags as ${SEEN[$key]} ($(label))"; continue; fi
  SEEN[$key]=$config
  ray_flags
  [ "$DRY" = 1 ] || rm -rf "${W:?}/$config"
  say "$config: $(label)"
  run_config "$config" batch "$config" "$WORKERS" "$SHARE" "$(label)" "{}" \
    "${common[@]}" "${RAY_FLAGS[@]}" --out "$W/$config"
done

# eval --ray over rayN's folder (ray1's where they are the same) on rayN's workers
EVAL_FROM=rayN
plan ray1; r1="$WORKERS/$SHARE"
plan rayN
[ "$WORKERS/$SHARE" = "$r1" ] && EVAL_FROM=ray1
if [ -z "${CLIP:-}" ]; then
  skip "eval --ray" "no CLIP model given (CLIP=/path/to/a/local/CLIPModel folder, or CLIP=random)"
elif [ "$DRY" != 1 ] && [ ! -f "$W/$EVAL_FROM/summary.csv" ]; then
  skip "eval --ray" "no $EVAL_FROM batch folder in $W"
else
  CLIP_DIR=$CLIP
  CLIP_NAME=$CLIP
  if [ "$CLIP" = random ]; then
    CLIP_DIR=$W/clip-random
    CLIP_NAME="random ViT-B/32-shaped (timings only)"
    if [ "$DRY" != 1 ] && [ ! -f "$CLIP_DIR/config.json" ]; then
      say "building a random CLIP of ViT-B/32's shape (transformers' CLIPConfig defaults)"
      python3 -c "
import torch, transformers
torch.manual_seed(0)
tok = '$REPO/src/suppresseot/data/clip-tokenizer'
transformers.CLIPModel(transformers.CLIPConfig()).eval().save_pretrained('$CLIP_DIR')
transformers.CLIPTokenizer(tok + '/vocab.json', tok + '/merges.txt', model_max_length=77).save_pretrained('$CLIP_DIR')
transformers.CLIPImageProcessor().save_pretrained('$CLIP_DIR')
" > "$W/clip.log" 2>&1 || { skip "eval --ray" "FAIL: the random CLIP (clip.log)"; CLIP_DIR=; }
    fi
    COMMANDS+=("# $CLIP_DIR: transformers.CLIPModel(CLIPConfig()) with torch.manual_seed(0), the shipped tokenizer")
  fi
  if [ -n "$CLIP_DIR" ]; then
    ray_flags
    [ "$DRY" = 1 ] || { rm -rf "${W:?}/eval"; mkdir -p "$W/eval"; }
    say "eval: $EVAL_FROM's runs, $(label), CLIP $CLIP_NAME"
    run_config eval eval "$EVAL_FROM" "$WORKERS" "$SHARE" "$(label)" \
      "$(python3 -c 'import json, sys; print(json.dumps({"clip": sys.argv[1], "csv": sys.argv[2]}))' \
         "$CLIP_NAME" "$W/eval/clipscores.csv")" \
      eval "$W/$EVAL_FROM" --clip-model "$CLIP_DIR" --out "$W/eval/clipscores.csv" \
      --no-progress "${DEV[@]}" "${RAY_FLAGS[@]}"
  fi
fi

[ "$DRY" = 1 ] && exit 0
S_GPUS=$(printf '%s' "$GPU_LIST" | paste -sd ';') S_N=$N S_MODE=$MODE S_VERSIONS=$VERSIONS S_REPO=$REPO \
S_MANIFEST=$MANIFEST_TEXT S_INTERVAL=$NVML_INTERVAL S_NOTES=$(printf '%s\n' "${NOTES[@]}") \
S_KNOBS="CONFIGS=\"$CONFIGS\" SETS=\"${SETS:-}\" REPEAT=$REPEAT GROUP=$GROUP FLAGS=\"$FLAGS\" TIMEOUT=$TIMEOUT \
GPUS=${GPUS:-} DEVICE=$DEVICE SIZE=$SIZE CLIP=${CLIP:-} NVML_INTERVAL=$NVML_INTERVAL" \
python3 - "$W/setup.json" "${COMMANDS[@]}" <<'EOF'
import datetime, json, os, subprocess, sys
e = os.environ
git = lambda *a: subprocess.run(["git", "-C", e["S_REPO"], *a], capture_output=True, text=True).stdout.strip()
commit = git("log", "-1", "--format=%h %s")
if commit and git("status", "--porcelain", "--untracked-files=no"):
    commit += " (with uncommitted changes)"
setup = dict(gpus=e["S_GPUS"] or "none", n=int(e["S_N"]), mode=e["S_MODE"], versions=e["S_VERSIONS"],
             commit=commit or "unknown (no git here)", manifest=e["S_MANIFEST"], knobs=e["S_KNOBS"],
             date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
             nvml_interval=float(e["S_INTERVAL"]), pythonpath=e["PYTHONPATH"], commands=sys.argv[2:],
             notes=[n for n in e["S_NOTES"].splitlines() if n])
open(sys.argv[1], "w").write(json.dumps(setup, indent=1))
EOF
report || { say "FAIL: the report (ray.md)"; exit 1; }
say "wrote $W/ray.md"
cat "$W/ray.md"
