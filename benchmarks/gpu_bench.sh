#!/usr/bin/env bash
# The full side-by-side benchmark on a GPU machine without network (the H100 test machine), in one go:
# official code, faithful, fast and the Jittor backend, all four modes, one bench.py run on one model.
#
#   bash benchmarks/gpu_bench.sh WORKDIR          # from the repository root, on the GPU machine
#
# Needs, beside the checkout (both folders are git-ignored; see docs/benchmarks.md):
#   .reference/   a snapshot of github sen-mao/SuppressEOT (never committed)
#   .whl/         wheels the GPU image lacks, downloaded on a machine with internet:
#     pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#         --platform manylinux_2_17_x86_64 -d .whl diffusers==0.42.1 numpy==1.26.4 astunparse
#     pip download --no-deps --no-binary :all: -d .whl jittor==1.3.11.0
#     pip wheel --no-deps --no-build-isolation -w .whl .whl/jittor-1.3.11.0.tar.gz
#
# Jittor pins numpy < 2 while the image's torch side has numpy 2, so Jittor runs in bench.py's child
# process (--jittor-python) with numpy 1.26 first on its path. Its CUDA-13 patches come from
# `suppresseot doctor --fix-jittor`; its core is compiled while the random model is being built, so
# neither cost lands in a timed stage. The study manifest runs with --fast --group-size 16 (GROUP) (after the
# bench, see below), benchmarks/throughput.py compares its images per hour with the official code's (case by case),
# and benchmarks/probes/profile_jittor.py shows where Jittor's time goes.
# Progress goes to WORKDIR/log; results to WORKDIR/results, WORKDIR/profile_jittor.log.
set -u
cd "$(dirname "$0")/.."
REPO=$PWD
W=${1:-/tmp/gpu-bench}
mkdir -p "$W"
LOG=$W/log
say() { echo "[$(date +%T)] $*" | tee -a "$LOG"; }
W_SITE=$W/site        # diffusers for the torch side
W_JT=$W/jittor        # jittor and its pure-Python needs
W_NP=$W/numpy1        # numpy 1.26, seen only by the jittor process
MODEL=$W/sdv1
RESULTS=$W/results

say "machine: $(nvidia-smi -L | head -1); $(python3 --version); torch $(python3 -c 'import torch; print(torch.__version__)')"
python3 -m pip install -q --no-index --no-deps --no-compile --target "$W_SITE" .whl/diffusers-*.whl >> "$LOG" 2>&1 \
  || { say "FAIL: diffusers install"; exit 1; }
python3 -m pip install -q --no-index --no-deps --no-compile --target "$W_JT" .whl/jittor-*-py3-none-any.whl \
  .whl/astunparse-*.whl >> "$LOG" 2>&1 || { say "FAIL: jittor install"; exit 1; }
python3 -m pip install -q --no-index --no-deps --no-compile --target "$W_NP" .whl/numpy-1.26.4-*.whl >> "$LOG" 2>&1 \
  || { say "FAIL: numpy 1.26 install"; exit 1; }

if [ -x /usr/local/cuda/bin/nvcc ]; then NVCC=/usr/local/cuda/bin/nvcc; else NVCC=$(readlink -f "$(command -v nvcc)"); fi
export nvcc_path="$NVCC" FIX_TORCH_ERROR=0 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
TORCH_PATH="$W_SITE:$REPO/src"
JITTOR_PATH="$W_NP:$W_JT:$W_SITE:$REPO/src"

say "doctor --fix-jittor"
PYTHONPATH=$JITTOR_PATH python3 -m suppresseot.cli doctor --fix-jittor > "$W/doctor.log" 2>&1 \
  || { say "FAIL: doctor --fix-jittor (see doctor.log)"; tail -5 "$W/doctor.log" | tee -a "$LOG"; }

say "building the SD-v1.4-shaped random model and compiling jittor's core, side by side"
PYTHONPATH=$TORCH_PATH python3 -c "
from pathlib import Path
from suppresseot.random_model import save_random_model
save_random_model(Path('$MODEL'), Path('$REPO/src/suppresseot/data/clip-tokenizer'), size='sd-v1', seed=0)
" > "$W/model.log" 2>&1 &
model_pid=$!
PYTHONPATH=$JITTOR_PATH python3 -c "
from suppresseot.backends.jittor.env import import_jittor
jt = import_jittor('cuda')
import jittor.compile_extern as ce
print('jittor', jt.__version__, 'cuda', jt.flags.use_cuda, 'cudnn', bool(ce.cudnn))
" > "$W/jittor-core.log" 2>&1
say "jittor core: rc $? $(tail -1 "$W/jittor-core.log")"
wait $model_pid
say "model: rc $? $(du -sh "$MODEL" | cut -f1)"

# The study after the bench: twice the first GPU work on a fresh machine ran ~20% slower (docs/benchmarks.md,
# "cache"), and the bench's timed runs come after warm-ups anyway. bench.py writes its report after every
# (implementation, mode); the Jittor child writes its own after every mode (results/jittor-child/), so a lease
# that runs out keeps what finished (run BENCH_BACKENDS=torch first where device time is short).
# STEPS picks parts, run in this order: convprobe (cuDNN convolutions alone, torch and jittor, benchmarks/probes/probe_conv.py),
# gnprobe (Jittor's GroupNorm kernels alone, benchmarks/probes/probe_groupnorm.py), profile (benchmarks/probes/profile_jittor.py), bench, study, report (a few study cases on both backends for the
# study report's table), steps (e.g. STEPS=profile for
# the Jittor profile alone; "steps" adds
# benchmarks/probes/profile_steps.py, the torch faithful steps eager vs graphed, kernel by kernel; PROFILE_FLAGS="--fast
# --compile" profiles fast mode and adds the compiled UNet; PROFILE_JITTOR_FLAGS=--static adds jittor's replayed
# static graphs to the Jittor profile); CONVPROBE the convolution probes; STUDY_FLAGS adds batch options; BENCH_IMPLS the torch-side
# implementations; JITTOR_MEMORY=1 adds one untimed Jittor run per mode for its peak memory (bench.py
# --jittor-memory; about as long again as the timed Jittor runs); JITTOR_STATIC=0 runs Jittor without its default
# --static-graphs (jittor.vcompiler); BENCH_BACKENDS=torch leaves Jittor out.
STEPS=" ${STEPS:-study bench profile} "

if [[ $STEPS == *" convprobe "* ]]; then
# cuDNN convolutions alone (benchmarks/probes/probe_conv.py): torch with/without TF32, NCHW/NHWC, and jittor; time, error
say "convolution probe (benchmarks/probes/probe_conv.py)"
mkdir -p "$RESULTS/convprobe"
# CONVPROBE picks the probes: torch's three settings, jittor, and cuDNN's legacy API with and without its set-up
for v in ${CONVPROBE:-torch-1-nchw torch-0-nchw torch-1-nhwc jittor cudnn-setup cudnn-cached}; do
  case $v in
  torch-*) IFS=- read -r _ tf32 layout <<< "$v"
    PYTHONPATH=$TORCH_PATH timeout 300 python3 benchmarks/probes/probe_conv.py --framework torch --tf32 "$tf32" \
      --layout "$layout" --out "$RESULTS/convprobe/torch-tf32$tf32-$layout.json" >> "$W/convprobe.log" 2>&1 ;;
  jittor) PYTHONPATH=$JITTOR_PATH timeout 300 python3 benchmarks/probes/probe_conv.py --framework jittor \
      --out "$RESULTS/convprobe/jittor-nchw.json" >> "$W/convprobe.log" 2>&1 ;;
  *) PYTHONPATH=$TORCH_PATH timeout 300 python3 benchmarks/probes/probe_conv.py --framework "$v" \
      --out "$RESULTS/convprobe/$v.json" >> "$W/convprobe.log" 2>&1 ;;
  esac
  say "  $v: rc $?"
done
fi
if [[ $STEPS == *" gnprobe "* ]]; then
say "GroupNorm kernels alone (benchmarks/probes/probe_groupnorm.py), batch 1 and 2"
for b in 1 2; do
  PYTHONPATH=$JITTOR_PATH timeout 300 python3 benchmarks/probes/probe_groupnorm.py --batch $b >> "$W/gnprobe.log" 2>&1
  say "  batch $b: rc $?"
done
fi
if [[ $STEPS == *" profile "* ]]; then
say "jittor profile (benchmarks/probes/profile_jittor.py)"
PYTHONPATH=$JITTOR_PATH timeout "${PROFILE_TIMEOUT:-300}" python3 benchmarks/probes/profile_jittor.py --model-dir "$MODEL" --out "$RESULTS" \
  ${PROFILE_JITTOR_FLAGS:-} > "$W/profile_jittor.log" 2>&1
say "jittor profile: rc $? $(grep -h ' ms ' "$W/profile_jittor.log" | tr '\n' ' ')"
fi

if [[ $STEPS == *" bench "* ]]; then
[[ ${BENCH_IMPLS:-official} == *official* ]] || say "no official implementation: throughput.py will have nothing to compare with"
say "bench: ${BENCH_IMPLS:-official,faithful,fast} (${BENCH_BACKENDS:-torch,jittor}); ${MODES:-gen0,gen10,real_npi,real_nt}"
JITTOR_FLAGS=""; [ "${JITTOR_MEMORY:-0}" = 1 ] && JITTOR_FLAGS=--jittor-memory
[ "${JITTOR_STATIC:-1}" = 0 ] && JITTOR_FLAGS="$JITTOR_FLAGS --no-jittor-static-graphs"
PYTHONPATH=$TORCH_PATH python3 benchmarks/bench.py --size sd-v1 --model-dir "$MODEL" --reference .reference \
  --only-impl "${BENCH_IMPLS:-official,faithful,fast}" --backends "${BENCH_BACKENDS:-torch,jittor}" $JITTOR_FLAGS \
  --jittor-python "env PYTHONPATH=$JITTOR_PATH python3" \
  --modes "${MODES:-gen0,gen10,real_npi,real_nt}" --out "$RESULTS" >> "$LOG" 2>&1
say "bench: rc $?"
fi
if [[ $STEPS == *" study "* ]]; then
say "study throughput: prepare --all (no COCO here: 52 cases), batch --fast --group-size ${GROUP:-16}"
PYTHONPATH=$TORCH_PATH python3 -m suppresseot.cli prepare --all --out "$W/manifests" >> "$LOG" 2>&1
PYTHONPATH=$TORCH_PATH timeout "${STUDY_TIMEOUT:-480}" python3 -m suppresseot.cli batch "$W/manifests/study.json" \
  --model "$MODEL" --fast --group-size "${GROUP:-16}" ${STUDY_FLAGS:-} --out "$W/study-fast" --no-progress \
  > "$W/study.log" 2>&1
say "study batch: rc $? ($(tail -1 "$W/study.log"))"
fi
if [[ $STEPS == *" report "* ]]; then
# The study report's torch-vs-Jittor table on a few cases (REPORT_TASKS, one per set by default), each backend
# as a user runs it (faithful torch, Jittor with its defaults); WORKDIR/report-runs/{torch,jittor} are batch
# folders for `suppress-eot report` (which needs matplotlib: run it where the runs are copied to)
say "study report runs: ${REPORT_TASKS:=unsplash-01-a-brown-leather-chair-at-a coco-car-gen-157756 vangogh-02 tyler-00}"
[ -f "$W/manifests/study.json" ] || PYTHONPATH=$TORCH_PATH python3 -m suppresseot.cli prepare --all \
  --out "$W/manifests" >> "$LOG" 2>&1
PYTHONPATH=$TORCH_PATH timeout "${REPORT_TIMEOUT:-400}" python3 -m suppresseot.cli batch "$W/manifests/study.json" \
  --model "$MODEL" --backend torch --only $REPORT_TASKS --out "$W/report-runs/torch" --no-progress \
  > "$W/report-torch.log" 2>&1
say "  torch: rc $? ($(tail -1 "$W/report-torch.log"))"
PYTHONPATH=$JITTOR_PATH timeout "${REPORT_TIMEOUT:-400}" python3 -m suppresseot.cli batch "$W/manifests/study.json" \
  --model "$MODEL" --backend jittor --only $REPORT_TASKS --out "$W/report-runs/jittor" --no-progress \
  > "$W/report-jittor.log" 2>&1
say "  jittor: rc $? ($(tail -1 "$W/report-jittor.log"))"
fi
if [ -f "$W/study-fast/summary.csv" ] && [ -f "$RESULTS/bench.json" ]; then
PYTHONPATH=$TORCH_PATH python3 benchmarks/throughput.py --bench "$RESULTS/bench.json" --batch "$W/study-fast" \
  > "$W/throughput.md" 2>&1
say "throughput: $(tail -1 "$W/throughput.md")"
else
say "throughput: skipped (needs both: add 'study' and 'bench' to STEPS)"
fi
if [[ $STEPS == *" steps "* ]]; then
say "torch step profile (benchmarks/probes/profile_steps.py: faithful's repeated steps, eager vs graphed, kernels)"
PYTHONPATH=$TORCH_PATH timeout "${PROFILE_TIMEOUT:-300}" python3 benchmarks/probes/profile_steps.py --model-dir "$MODEL" \
  ${PROFILE_FLAGS:-} --out "$RESULTS" > "$W/profile_steps.log" 2>&1
say "torch step profile: rc $?"
fi
say "DONE"
touch "$W/DONE"
