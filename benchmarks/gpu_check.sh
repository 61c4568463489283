#!/usr/bin/env bash
# The check to run on the GPU machine after any change to src/suppresseot/backends/ or src/suppresseot/algorithm/:
# the GPU-only tests, then a short side-by-side benchmark. Under 5 minutes on an H100.
#
#   bash benchmarks/gpu_check.sh [WORKDIR]       # from the repository root; WORKDIR defaults to /tmp/gpu-check
#
# Needs, beside the checkout, .whl/diffusers-*.whl (git-ignored; the GPU image has torch, transformers, pytest
# and the rest, not diffusers), downloaded on a machine with internet (diffusers is pure Python):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 -d .whl diffusers==0.42.1
# Without the wheel the diffusers that python3 already imports is used, if any.
#
# Parts (PARTS, default "tests bench"), each recorded PASS or FAIL with its seconds, the next run either way:
#   tests  python3 -m pytest -q -m gpu tests/: every test marked gpu (CUDA graphs against eager runs, the graph
#          cache replaying a first image's graphs, fast mode compiled and graphed); FAIL also when torch sees no
#          CUDA GPU or no test passed
#   bench  benchmarks/bench.py on the SD-v1.4-shaped random model (--size sd-v1, built into WORKDIR/model-sd-v1
#          while the tests run, reused by later calls): modes gen0,gen10, implementations diffusers,faithful,fast,
#          20 DDIM steps; bench.json and bench.md in WORKDIR/bench. FAIL when bench.py fails or an implementation or
#          mode recorded an error instead of a time, or its latents are not finite
# Knobs: PARTS; SIZE (sd-v1; tiny for a CPU smoke run of the bench part), STEPS (20), NULL_TEXT_STEPS (10; the
# real_* modes), MODES (gen0,gen10; e.g. gen10,real_nt, about a minute more), IMPLS (diffusers,faithful,fast),
# DEVICE (cuda; auto for the tiny sizes), TESTS_TIMEOUT / BENCH_TIMEOUT (seconds, 240 each), PYTHON (python3).
# Writes WORKDIR/log (progress and the summary), WORKDIR/tests.log, WORKDIR/model.log, WORKDIR/bench.log.
# Exit status: 0 when every part that ran passed, 1 otherwise.
set -u
cd "$(dirname "$0")/.."
REPO=$PWD
W=${1:-/tmp/gpu-check}
mkdir -p "$W"
W=$(cd "$W" && pwd)
LOG=$W/log
: > "$LOG"
say() { echo "[$(date +%T)] $*" | tee -a "$LOG"; }
PY=${PYTHON:-python3}
PARTS=" ${PARTS:-tests bench} "
SIZE=${SIZE:-sd-v1}
STEPS=${STEPS:-20}
NULL_TEXT_STEPS=${NULL_TEXT_STEPS:-10}
MODES=${MODES:-gen0,gen10}
IMPLS=${IMPLS:-diffusers,faithful,fast}
case $SIZE in tiny*) DEVICE=${DEVICE:-auto} ;; *) DEVICE=${DEVICE:-cuda} ;; esac
MODEL=$W/model-$SIZE
SITE=$W/site
SUMMARY=()
FAILED=0
T0=$SECONDS
record() {  # record PART PASS|FAIL SECONDS [detail]
  SUMMARY+=("$(printf '%-6s %-4s %5ss  %s' "$1" "$2" "$3" "${4:-}")")
  [ "$2" = PASS ] || FAILED=1
  say "$1: $2 in $3 s${4:+ ($4)}"
}

say "gpu_check in $W; parts:$PARTS; commit $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
say "machine: $(command -v nvidia-smi > /dev/null && nvidia-smi -L | head -1 || echo 'no nvidia-smi'); $($PY --version 2>&1)"

# setup: the carried wheels into a private folder, first on the path
t=$SECONDS
WHEELS=$(ls .whl/diffusers-*.whl 2> /dev/null | sort -V | tail -1)  # the newest, if several
if [ -n "$WHEELS" ]; then
  if $PY -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" $WHEELS >> "$LOG" 2>&1; then
    record setup PASS $((SECONDS - t)) "$(basename $WHEELS) into $SITE"
  else
    record setup FAIL $((SECONDS - t)) "pip install of $WHEELS (see log)"
  fi
else
  say "no .whl/diffusers-*.whl: using the diffusers python3 finds, if any (the header says how to fetch the wheel)"
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH="$SITE:$REPO/src"
say "$($PY -c 'import torch, diffusers; print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
  "diffusers", diffusers.__version__, "from", diffusers.__path__[0].rsplit("/", 1)[0])' 2>&1 | tail -1)"

# the random model (bench part) is built on the CPU while the tests use the GPU
model_pid=
if [[ $PARTS == *" bench "* ]] && [ ! -f "$MODEL/model_index.json" ] && [[ $SIZE == sd-v1 || $SIZE == tiny ]]; then
  say "building the random $SIZE model in $MODEL (beside the tests)"
  $PY -c "
from pathlib import Path
from suppresseot.random_model import save_random_model
save_random_model(Path('$MODEL'), Path('$REPO/src/suppresseot/data/clip-tokenizer'), size='$SIZE', seed=0)
" > "$W/model.log" 2>&1 &
  model_pid=$!
  model_t=$SECONDS
fi

if [[ $PARTS == *" tests "* ]]; then
  t=$SECONDS
  say "tests: $PY -m pytest -q -m gpu tests/ (log: tests.log)"
  if ! $PY -c 'import sys, torch, diffusers; torch.cuda.is_available() or sys.exit("torch sees no CUDA GPU")' \
      > "$W/tests.log" 2>&1; then
    record tests FAIL $((SECONDS - t)) "$(tail -1 "$W/tests.log"): the gpu tests would only be skipped"
  else
    timeout "${TESTS_TIMEOUT:-240}" $PY -m pytest -q -m gpu -p no:cacheprovider tests/ >> "$W/tests.log" 2>&1
    rc=$?
    last=$(grep -E '(passed|failed|error|skipped|deselected|no tests ran)' "$W/tests.log" | tail -1 | tr -d '=' | sed 's/^ *//; s/ *$//')
    if [ $rc = 0 ] && [[ $last == *passed* ]]; then
      record tests PASS $((SECONDS - t)) "$last"
    else
      record tests FAIL $((SECONDS - t)) "rc $rc: ${last:-no summary line}"
    fi
  fi
fi

if [ -n "$model_pid" ]; then
  wait "$model_pid"
  rc=$?
  if [ $rc = 0 ]; then
    record model PASS $((SECONDS - model_t)) "$(du -sh "$MODEL" | cut -f1), built beside the tests, reused next time"
  else
    record model FAIL $((SECONDS - model_t)) "rc $rc: $(tail -1 "$W/model.log")"
  fi
fi

if [[ $PARTS == *" bench "* ]]; then
  t=$SECONDS
  OUT=$W/bench
  rm -f "$OUT/bench.json" "$OUT/bench.md"
  say "bench: $SIZE, $STEPS steps, $MODES, $IMPLS on $DEVICE (log: bench.log)"
  timeout "${BENCH_TIMEOUT:-240}" $PY benchmarks/bench.py --size "$SIZE" --model-dir "$MODEL" --steps "$STEPS" \
    --null-text-steps "$NULL_TEXT_STEPS" --modes "$MODES" --only-impl "$IMPLS" --device "$DEVICE" --out "$OUT" \
    > "$W/bench.log" 2>&1
  rc=$?
  if [ ! -f "$OUT/bench.json" ]; then
    record bench FAIL $((SECONDS - t)) "rc $rc, no bench.json: $(tail -1 "$W/bench.log")"
  else
    # every (implementation, mode) asked for has a time and finite latents (diffusers' baseline edits no photos)
    detail=$($PY - "$OUT/bench.json" << 'EOF' 2>&1
import json, math, sys
report = json.load(open(sys.argv[1]))
impls, modes = report["settings"]["impls"], report["settings"]["modes"]
times, bad = [], []
for mode in modes:
    row = report["summary"].get(mode, {})
    for impl in impls:
        if impl == "diffusers" and mode.startswith("real"):
            continue
        r = report["results"].get(impl, {}).get(mode) or {}
        if "total_s" not in r:
            bad.append(f"{impl} {mode}: {r.get('error') or r.get('unavailable') or 'no result'}")
            continue
        times.append(f"{impl} {mode} {r['total_s']:.2f}s")
        diff = row.get(impl, {}).get("latent_rel_diff_vs_faithful")
        if diff is not None and not math.isfinite(diff):
            bad.append(f"{impl} {mode}: latents {diff} away from faithful's")
print("; ".join(bad) if bad else ", ".join(times))
sys.exit(1 if bad else 0)
EOF
)
    ok=$?
    if [ $rc = 0 ] && [ $ok = 0 ]; then
      record bench PASS $((SECONDS - t)) "$detail"
    else
      record bench FAIL $((SECONDS - t)) "rc $rc: $detail"
    fi
    cat "$OUT/bench.md" >> "$LOG"
  fi
fi

say "summary (total $((SECONDS - T0)) s; results in $W):"
for line in "${SUMMARY[@]}"; do say "  $line"; done
[ ${#SUMMARY[@]} -gt 0 ] || { say "  nothing ran: PARTS=\"$PARTS\" names no part (tests, bench)"; FAILED=1; }
say "$([ $FAILED = 0 ] && echo 'gpu_check: PASS' || echo 'gpu_check: FAIL')"
exit $FAILED
