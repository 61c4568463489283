#!/usr/bin/env bash
# Issue 33's speed targets measured in one go on a GPU machine: the GPU check with a full SD 1 bench (every mode,
# 50 steps, diffusers' plain generation, faithful, fast and compiled side by side), where the time of the
# repeated steps goes, SDXL with --compile, and the TFLOP/s each run reached (docs/benchmarks.md, "The compute
# floor"). Inductor compiles on a fresh machine, so it takes ~20 minutes: start it detached and poll for
# WORKDIR/DONE (a device call may last 10 minutes).
#
#   bash benchmarks/gpu_speed.sh [WORKDIR]       # from the repository root, .whl/ as for gpu_check.sh
#
# Parts (PARTS, default "sd1 profile sdxl flops"), each logged with its status, the next run either way:
#   sd1      gpu_check.sh (its GPU tests, then bench.py --size sd-v1 on gen0,gen10,real_npi,real_nt with
#            diffusers,faithful,fast,compiled) into WORKDIR/sd1
#   profile  benchmarks/probes/profile_steps.py --fast --compile on that model into WORKDIR/profile
#   sdxl     gpu_check.sh's bench part with --size sdxl on gen0,gen10 with diffusers,fast,compiled into WORKDIR/sdxl
#   flops    benchmarks/flops.py on each bench.json: FLOPs and TFLOP/s (CPU) into WORKDIR/flops-*
# Knobs: PARTS; STEPS (50); SIZE (sd-v1); CHECK_PARTS (gpu_check.sh's parts in sd1: "tests bench"); BENCH_TIMEOUT
# (1500 s a bench); IMPLS, MODES (the sd1 bench's); PYTHON (python3). A CPU smoke run of the script:
#   SIZE=tiny STEPS=2 CHECK_PARTS=bench PARTS="sd1 flops" IMPLS=faithful,fast MODES=gen0,gen10 bash benchmarks/gpu_speed.sh
# Writes WORKDIR/log (progress), WORKDIR/DONE at the end. Exit status: 0 when every part that ran passed.
set -u
cd "$(dirname "$0")/.."
W=${1:-/tmp/gpu-speed}
mkdir -p "$W"
W=$(cd "$W" && pwd)
LOG=$W/log
rm -f "$W/DONE"
say() { echo "[$(date +%T)] $*" | tee -a "$LOG"; }
PY=${PYTHON:-python3}
PARTS=" ${PARTS:-sd1 profile sdxl flops} "
STEPS=${STEPS:-50}
SIZE=${SIZE:-sd-v1}
export BENCH_TIMEOUT=${BENCH_TIMEOUT:-1500} TESTS_TIMEOUT=${TESTS_TIMEOUT:-600} PYTHON=$PY
FAILED=0
part() {  # part NAME COMMAND...: run it, log its status
  local name=$1 t=$SECONDS
  shift
  say "$name: $*"
  if "$@" >> "$W/$name.out" 2>&1; then say "$name: PASS in $((SECONDS - t)) s"; else say "$name: FAIL in $((SECONDS - t)) s (see $name.out)"; FAILED=1; fi
}
say "gpu_speed in $W; parts:$PARTS; commit $(git rev-parse --short HEAD 2>/dev/null)"

if [[ $PARTS == *" sd1 "* ]]; then
  part sd1 env PARTS="${CHECK_PARTS:-tests bench}" SIZE="$SIZE" STEPS="$STEPS" MODES="${MODES:-gen0,gen10,real_npi,real_nt}" \
    IMPLS="${IMPLS:-diffusers,faithful,fast,compiled}" bash benchmarks/gpu_check.sh "$W/sd1"
fi
export HF_HUB_OFFLINE=1 PYTHONPATH="$W/sd1/site:$PWD/src"
if [[ $PARTS == *" profile "* ]]; then
  part profile $PY benchmarks/probes/profile_steps.py --model-dir "$W/sd1/model-$SIZE" --size "$SIZE" --fast \
    --compile --out "$W/profile"
fi
if [[ $PARTS == *" sdxl "* ]]; then
  part sdxl env PARTS=bench SIZE=sdxl STEPS="$STEPS" MODES=gen0,gen10 IMPLS=diffusers,fast,compiled \
    bash benchmarks/gpu_check.sh "$W/sdxl"
fi
if [[ $PARTS == *" flops "* ]]; then
  for run in sd1 sdxl; do
    model=$W/$run/model-$([ $run = sd1 ] && echo "$SIZE" || echo sdxl)
    if [ -f "$W/$run/bench/bench.json" ]; then
      part "flops-$run" $PY benchmarks/flops.py --model-dir "$model" --steps "$STEPS" \
        --bench "$W/$run/bench/bench.json" --out "$W/flops-$run"
    fi
  done
fi
say "gpu_speed: $([ $FAILED = 0 ] && echo PASS || echo FAIL)"
touch "$W/DONE"
exit $FAILED
