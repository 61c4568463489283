#!/usr/bin/env bash
# Jittor 1.3.11 on a CUDA 13 GPU machine (no internet): install from carried files, patch with
# `suppress-eot doctor --fix-jittor`, then check matmul/conv2d/softmax/GroupNorm/jt.grad/float16/cub ops on the GPU.
# Run from the repository root ON THE GPU MACHINE:   bash benchmarks/probes/jittor_gpu_probe.sh
# Writes logs under $OUT (default ./probe-out); prints PASS/FAIL lines and a summary at the end. ~3-6 minutes.
#
# Carried files (.whl/, ignored by git via .git/info/exclude), downloaded on a machine with internet:
#   pip download --no-deps --no-binary :all: jittor==1.3.11.0 -d .whl            # the sdist (jittor is pure Python)
#   pip wheel --no-deps --no-build-isolation -w .whl .whl/jittor-1.3.11.0.tar.gz  # -> jittor-1.3.11.0-py3-none-any.whl
#   pip download --no-deps --only-binary :all: --python-version 3.12 --implementation cp --abi cp312 \
#       --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
#       -d .whl numpy==1.26.4 pillow
#   pip download --no-deps --only-binary :all: --python-version 3.12 -d .whl astunparse six 'wheel<1.0' tqdm
# jittor's metadata pins numpy<2 and its C++ side mirrors numpy 1.x's PyArray_Descr (an `int elsize` right after
# type_num; numpy 2 put a 64-bit `flags` there), so numpy 1.26.4 goes into its own --target folder that only the
# jittor processes see; check 4 tries the machine's numpy 2 as well, for the record.
set -u
cd "$(dirname "$0")/../.."
REPO=$PWD
OUT=${OUT:-$REPO/probe-out}
mkdir -p "$OUT"
T=${PROBE_DIR:-/tmp/sdeot-jittor-probe}
rm -rf "$T" && mkdir -p "$T"
LOG=$OUT/probe.log
: > "$LOG"
say() { echo "$*" | tee -a "$LOG"; }
W=$REPO/.whl

say "== machine"
{ python3 --version; nproc; nvidia-smi -L; nvcc --version | tail -2; g++ --version | head -1
  python3 -c "import numpy; print('system numpy', numpy.__version__)"
  python3 -m pip list 2>/dev/null | grep -i -E "^(nvidia|torch|numpy|pillow|tqdm|astunparse|six|jittor)"
  echo "cuDNN files:"; timeout 30 find / -xdev \( -name 'libcudnn.so*' -o -name 'cudnn_version.h' \) 2>/dev/null | head -20
} >> "$LOG" 2>&1
grep -E "Python|GPU|release|system numpy" "$LOG"

say "== install (no network)"
# jittor takes CUDA_HOME from nvcc's folder: prefer the toolkit's own nvcc over wrappers on the PATH
if [ -x /usr/local/cuda/bin/nvcc ]; then NVCC=/usr/local/cuda/bin/nvcc; else NVCC=$(readlink -f "$(command -v nvcc)"); fi
pkgs=("$W"/jittor-1.3.11.0-py3-none-any.whl "$W"/astunparse-*.whl "$W"/six-*.whl "$W"/wheel-*.whl "$W"/tqdm-*.whl)
python3 -c "import PIL" 2>/dev/null || pkgs+=("$W"/pillow-*cp312*.whl)
if [ ! -f "$W/jittor-1.3.11.0-py3-none-any.whl" ]; then pkgs[0]="$W/jittor-1.3.11.0.tar.gz"; fi
python3 -m pip install --no-deps --no-index --no-build-isolation --target "$T/pkgs" "${pkgs[@]}" >> "$LOG" 2>&1 \
  && say "PASS install jittor + deps -> $T/pkgs" || say "FAIL install jittor + deps (see $LOG)"
python3 -m pip install --no-deps --no-index --target "$T/np126" "$W"/numpy-1.26.4-cp312-*.whl >> "$LOG" 2>&1 \
  && say "PASS install numpy 1.26.4 -> $T/np126" || say "FAIL install numpy 1.26.4"

# FIX_TORCH_ERROR=0: jittor would otherwise import torch (and its own cuDNN) into the process
export use_mkl=0 use_nccl=0 use_cutlass=0 use_cutt=0 nvcc_path="$NVCC" FIX_TORCH_ERROR=0
export PYTHONPATH="$T/np126:$T/pkgs:$REPO/src"
say "== doctor (before)"
python3 -m suppresseot.cli doctor 2>&1 | tee -a "$LOG"
say "== doctor --fix-jittor"
python3 -m suppresseot.cli doctor --fix-jittor > "$OUT/doctor-fix.log" 2>&1; rc=$?
grep -E "^  [a-z]" "$OUT/doctor-fix.log" | tee -a "$LOG"
[ $rc = 0 ] && say "PASS doctor --fix-jittor" || say "FAIL doctor --fix-jittor (rc $rc; $OUT/doctor-fix.log)"
python3 -m suppresseot.cli doctor --fix-jittor 2>&1 | grep -q "already applied" && say "PASS doctor --fix-jittor twice: no-op"

cat > "$T/check.py" <<'EOF'
import os, sys, time, traceback
t0 = time.perf_counter()
import numpy as np
label = sys.argv[1]
results = []
def check(name, fn):
    t = time.perf_counter()
    try:
        info = fn()
        ok = True
    except Exception as e:
        info, ok = f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:300] if str(e).strip() else ''}", False
        traceback.print_exc()
    line = f"{'PASS' if ok else 'FAIL'} [{label}] {name} ({time.perf_counter() - t:.1f} s){': ' + str(info) if info else ''}"
    print(line, file=sys.stderr, flush=True)
    results.append(line)
    return ok

def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))

def close(a, b, tol):
    r = rel(a, b)
    assert r < tol, f"relative error {r:.2e} >= {tol:g}"
    return f"rel err {r:.1e}"

state = {}
def imp():
    import jittor as jt
    state["jt"] = jt
    if os.environ.get("PROBE_CPU") != "1":  # PROBE_CPU=1: try this script on a machine without a GPU
        assert jt.has_cuda, "jittor found no CUDA"
        jt.flags.use_cuda = 1
    ce = jt.compile_extern
    return (f"jittor {jt.__version__}, numpy {np.__version__}, import {time.perf_counter() - t0:.0f} s, "
            f"cudnn {'loaded' if ce.cudnn else 'NOT loaded'}, cub {'loaded' if getattr(ce, 'cub_ops', None) else 'NOT loaded'}, "
            f"cublas {'loaded' if ce.cublas else 'NOT loaded'}, conv_opt={os.environ.get('conv_opt', '0')}")
if not check("import jittor (CUDA)", imp):
    sys.exit(1)
jt = state["jt"]
rng = np.random.default_rng(0)

def timeit(fn, n=10):
    fn(); jt.sync_all(True)
    t = time.perf_counter()
    for _ in range(n):
        fn()
    jt.sync_all(True)
    return (time.perf_counter() - t) / n * 1e3

def numpy_roundtrip():
    for dt in ("float32", "float16", "int64", "bool"):
        a = (rng.standard_normal((3, 5, 7)) > 0) if dt == "bool" else (rng.standard_normal((3, 5, 7)) * 10).astype(dt)
        b = jt.array(a).numpy()
        want = "int32" if dt == "int64" else dt  # jittor keeps 64-bit ints as int32 (auto_convert_64_to_32)
        assert b.dtype == want and b.shape == a.shape and np.array_equal(a, b), f"{dt} round trip differs: {b.dtype}"
    return "float32/float16/int64(->int32)/bool exact"
check("numpy <-> jittor round trip", numpy_roundtrip)

def matmul():
    a, b = rng.standard_normal((512, 256)).astype("float32"), rng.standard_normal((256, 384)).astype("float32")
    r = close((jt.array(a) @ jt.array(b)).numpy(), a.astype(np.float64) @ b, 1e-4)
    x = jt.randn(4096, 4096)
    ms = timeit(lambda: (x @ x).sync())
    h = x.float16()
    ms16 = timeit(lambda: (h @ h).sync())
    return f"{r}; 4096^2 fp32 {ms:.2f} ms, fp16 {ms16:.2f} ms"
check("matmul (cuBLAS)", matmul)

def np_conv(x, w, pad):
    n, c, H, W = x.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    k = w.shape[-1]
    out = np.zeros((n, w.shape[0], H + 2 * pad - k + 1, W + 2 * pad - k + 1))
    for i in range(k):
        for j in range(k):
            out += np.einsum("oc,nchw->nohw", w[:, :, i, j], xp[:, :, i:i + out.shape[2], j:j + out.shape[3]])
    return out

def conv():
    x, w = rng.standard_normal((2, 8, 16, 16)).astype("float32"), rng.standard_normal((16, 8, 3, 3)).astype("float32")
    r = close(jt.nn.conv2d(jt.array(x), jt.array(w), padding=1).numpy(), np_conv(x, w, 1), 1e-4)
    xl, wl = jt.randn(1, 320, 64, 64), jt.randn(320, 320, 3, 3)
    ms = timeit(lambda: jt.nn.conv2d(xl, wl, padding=1).sync())
    ms16 = timeit(lambda: jt.nn.conv2d(xl.float16(), wl.float16(), padding=1).sync())
    return f"{r}; 1x320x64x64 3x3 fp32 {ms:.2f} ms, fp16 {ms16:.2f} ms"
check("conv2d", conv)

def conv_grad():
    x, w = rng.standard_normal((1, 4, 8, 8)).astype("float32"), rng.standard_normal((6, 4, 3, 3)).astype("float32")
    jx, jw = jt.array(x), jt.array(w)
    gx, gw = jt.grad(jt.nn.conv2d(jx, jw, padding=1).sum(), [jx, jw])
    xp = np.pad(x[0].astype(np.float64), ((0, 0), (1, 1), (1, 1)))
    ref_gw = np.array([[[[xp[c, i:i + 8, j:j + 8].sum() for j in range(3)] for i in range(3)] for c in range(4)]] * 6)
    return close(gw.numpy(), ref_gw, 1e-4)
check("conv2d weight grad (jt.grad)", conv_grad)

def softmax():
    x = rng.standard_normal((2, 8, 4096, 77)).astype("float32") * 3
    e = np.exp(x - x.max(-1, keepdims=True)); ref = e / e.sum(-1, keepdims=True)
    r = close(jt.nn.softmax(jt.array(x), dim=-1).numpy(), ref, 1e-5)
    y = jt.randn(16, 4096, 4096)
    ms = timeit(lambda: jt.nn.softmax(y, dim=-1).sync(), 5)
    r16 = close(jt.nn.softmax(jt.array(x).float16(), dim=-1).float32().numpy(), ref, 2e-3)
    return f"{r} (fp16 {r16}); 16x4096x4096 {ms:.2f} ms"
check("softmax (code_softmax, CUB)", softmax)

def softmax_grad():
    x, c = rng.standard_normal((64, 77)).astype("float32"), rng.standard_normal((64, 77)).astype("float32")
    jx = jt.array(x)
    g = jt.grad((jt.nn.softmax(jx, dim=-1) * jt.array(c)).sum(), jx)
    e = np.exp(x - x.max(-1, keepdims=True)); s = e / e.sum(-1, keepdims=True)
    return close(g.numpy(), s * (c - (s * c).sum(-1, keepdims=True)), 1e-4)
check("softmax grad (jt.grad)", softmax_grad)

def groupnorm():
    x = rng.standard_normal((2, 320, 32, 32)).astype("float32") * 2 + 1
    gn = jt.nn.GroupNorm(32, 320, eps=1e-5)
    xr = x.reshape(2, 32, -1).astype(np.float64)
    ref = ((xr - xr.mean(-1, keepdims=True)) / np.sqrt(xr.var(-1, keepdims=True) + 1e-5)).reshape(x.shape)
    return close(gn(jt.array(x)).numpy(), ref, 1e-4)
check("GroupNorm", groupnorm)

def matmul_grad():
    x, w = rng.standard_normal((32, 64)).astype("float32"), rng.standard_normal((64, 16)).astype("float32")
    jx = jt.array(x)
    g = jt.grad(((jx @ jt.array(w)) ** 2).sum(), jx)
    return close(g.numpy(), 2 * (x.astype(np.float64) @ w) @ w.T, 1e-4)
check("jt.grad through matmul", matmul_grad)

def fp16():
    x = rng.standard_normal((256, 256)).astype("float32")
    h = jt.array(x).float16()
    y = (h @ h)
    assert str(y.dtype) == "float16", y.dtype
    return close(y.float32().numpy(), x.astype(np.float64) @ x, 5e-3)
check("float16 matmul", fp16)

def where():
    a = np.array([[0, 1, 0], [2, 0, 3]], "float32")
    idx = jt.where(jt.array(a))
    got = [i.numpy().tolist() for i in idx]
    assert got == [list(v) for v in np.nonzero(a)], got
    return "nonzero indices exact"
check("jt.where (cub_where_op)", where)

def cub_ops():
    x = rng.standard_normal((4, 1000)).astype("float32")
    idx, _ = jt.argsort(jt.array(x), dim=-1)
    assert np.array_equal(idx.numpy(), np.argsort(x, -1, kind="stable")), "argsort differs"
    am, _ = jt.argmax(jt.array(x), dim=-1)
    assert np.array_equal(am.numpy(), x.argmax(-1)), "argmax differs"
    r = close(jt.cumsum(jt.array(x), dim=-1).numpy(), np.cumsum(x.astype(np.float64), -1), 1e-4)
    return f"argsort/argmax exact, cumsum {r}"
check("argsort / argmax / cumsum", cub_ops)

def depthwise():
    x = rng.standard_normal((2, 8, 12, 12)).astype("float32")
    conv = jt.nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
    w = conv.weight.numpy()
    jx = jt.array(x)
    y = conv(jx)
    ref = np.stack([np_conv(x[:, c:c + 1], w[c:c + 1], 1)[:, 0] for c in range(8)], 1)
    r = close(y.numpy(), ref, 1e-4)
    gx, gw = jt.grad(y.sum(), [jx, conv.weight])
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    ref_gw = np.array([[[xp[:, c, i:i + 12, j:j + 12].sum() for j in range(3)] for i in range(3)] for c in range(8)])
    rw = close(gw.numpy().reshape(8, 3, 3), ref_gw, 1e-4)
    return f"forward {r}, weight grad {rw}"
check("depthwise conv + grad (depthwise_conv.py)", depthwise)

def project():
    from suppresseot.backends.jittor.env import import_jittor, jittor_info
    import_jittor("cpu" if os.environ.get("PROBE_CPU") == "1" else "cuda")
    return f"device {jittor_info()['device']}"
check("suppresseot import_jittor('cuda')", project)

print("\n".join(results))
sys.exit(0 if all(r.startswith("PASS") for r in results) else 1)
EOF

run_check() {  # label, timeout, extra env...
  local label=$1 limit=$2; shift 2
  say "== checks: $label"
  local t=$SECONDS
  env "$@" timeout "$limit" python3 "$T/check.py" "$label" > "$OUT/check-$label.out" 2> "$OUT/check-$label.log"
  local rc=$?
  grep -E "^(PASS|FAIL) " "$OUT/check-$label.log" >> "$LOG"
  grep -E "^(PASS|FAIL) " "$OUT/check-$label.log"
  [ $rc = 124 ] && say "FAIL [$label] timed out after ${limit}s"
  if [ $rc != 0 ]; then
    say "-- [$label] first compiler/Python errors:"
    grep -v -E "^(PASS|FAIL) " "$OUT/check-$label.log" | grep -m 8 -E "error|Error|Check failed" | cut -c1-400 | tee -a "$LOG"
  fi
  say "   ($label: rc $rc, $((SECONDS - t)) s)"
}

# 1. without cuDNN (jittor's own conv kernels): the core compile happens here (about 90 s on 16 cores)
run_check convopt1 270 conv_opt=1
# 2. with cuDNN 9 through the cudnn9 patch (the jittor core is cached by now; cuDNN ops compile once)
run_check cudnn9 150
# 3. the machine's numpy 2 instead of 1.26 (jittor pins numpy<2; for the record)
say "== numpy 2 (informational)"
PYTHONPATH="$T/pkgs:$REPO/src" conv_opt=1 timeout 60 python3 - > "$OUT/numpy2.log" 2>&1 <<'EOF'
import numpy as np, jittor as jt
jt.flags.use_cuda = 1
a = np.arange(24, dtype="float32").reshape(2, 3, 4)
b = jt.array(a).numpy()
print("NUMPY2", np.__version__, "round trip", "PASS" if np.array_equal(a, b) else f"FAIL {b.ravel()[:6]}")
m = (jt.array(a[0]) @ jt.array(a[0].T)).numpy()
print("NUMPY2 matmul", "PASS" if np.allclose(m, a[0] @ a[0].T) else "FAIL")
EOF
if grep -q NUMPY2 "$OUT/numpy2.log"; then grep NUMPY2 "$OUT/numpy2.log" | tee -a "$LOG"
else say "NUMPY2 FAIL: jittor did not run with numpy 2 ($OUT/numpy2.log: $(grep -m1 -E 'Error|error' "$OUT/numpy2.log" | cut -c1-200))"; fi

say "== doctor --revert-jittor (round trip)"
python3 -m suppresseot.cli doctor --revert-jittor >> "$LOG" 2>&1
python3 -m suppresseot.cli doctor 2>&1 | grep -E "^  " | tee -a "$LOG"
say "== summary"
grep -E "^(PASS|FAIL)|NUMPY2" "$LOG"
say "logs: $OUT"
