"""One framework's cuDNN convolutions on SD v1 UNet shapes: time and error, to compare Jittor with PyTorch.

A Jittor SD v1 forward spent ~54 of 112 ms in convolutions on an H200 (profile_jittor.py), where PyTorch's
fp32 convolutions with its default TF32 took a fraction of that. This times the UNet's 3x3 and 1x1
convolutions alone (forward and backward to the input, batch 1 and 2, fp32; ten calls queued, one sync)
and measures each output's relative error against a float64 numpy reference, which tells TF32
(~3e-4 here) from exact fp32 (~1e-6). One framework and one setting per process:

    python benchmarks/probes/probe_conv.py --framework torch --tf32 1 [--layout nhwc]
    python benchmarks/probes/probe_conv.py --framework jittor
    python benchmarks/probes/probe_conv.py --framework cudnn-setup     # cuDNN's legacy API through ctypes (torch's
    python benchmarks/probes/probe_conv.py --framework cudnn-cached    # libcudnn and memory; forward only)

On an H200 (docs/jittor.md) jittor's convolutions already ran in TF32, at 0.15-0.35 ms a call whatever
the shape or batch: host time per call, not GPU time. The last row times one elementwise op (x * c) the same
way: the framework's floor per op, which any convolution op, a custom one with cached cuDNN set-up too, pays.

``cudnn-setup`` and ``cudnn-cached`` call the legacy convolution API jittor's cuDNN op calls
(``cudnnConvolutionForward``, TF32 default math, the fastest algorithm found once per shape) directly: the
first creates, sets and destroys the descriptors and asks for the workspace at every call, as jittor's op
does, the second keeps them per shape. Their difference is what a jittor op caching its set-up could save; what
``cudnn-cached`` still costs is the legacy API's own price in cuDNN 9 (which PyTorch avoids with cached
execution plans of the graph API).

Prints one JSON object per shape, and the list with --out.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

# (in channels, out channels, side, kernel): the UNet's convolutions at 64x64 latents
SHAPES = [(320, 320, 64, 3), (640, 640, 32, 3), (1280, 1280, 16, 3), (1280, 1280, 8, 3),
          (960, 320, 64, 3), (960, 320, 64, 1)]


def reference(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Float64 'same' convolution of one image (C, H, W) by im2col."""
    c, h, wd = x.shape
    k = w.shape[-1]
    pad = k // 2
    xp = np.pad(x.astype(np.float64), ((0, 0), (pad, pad), (pad, pad)))
    cols = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(1, 2))  # (C, H, W, k, k)
    cols = cols.transpose(1, 2, 0, 3, 4).reshape(h * wd, c * k * k)
    return (cols @ w.reshape(w.shape[0], -1).T.astype(np.float64)).T.reshape(w.shape[0], h, wd)


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


class TorchConv:
    def __init__(self, tf32: bool, layout: str):
        import torch

        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = True
        self.torch, self.layout = torch, layout
        self.setting = f"torch cudnn.allow_tf32={tf32} {layout}"

    def put(self, a):
        t = self.torch.from_numpy(a).cuda()
        return t.contiguous(memory_format=self.torch.channels_last) if self.layout == "nhwc" else t

    def conv(self, x, w):
        return self.torch.nn.functional.conv2d(x, w, padding=w.shape[-1] // 2)

    def grad_x(self, x, w, g):
        x = x.detach().requires_grad_(True)
        return self.torch.autograd.grad(self.conv(x, w), x, g)[0]

    def get(self, t):
        return t.float().cpu().numpy()

    def sync(self, _outputs):
        self.torch.cuda.synchronize()


class JittorConv:
    def __init__(self, layout: str):
        from suppresseot.backends.jittor.env import import_jittor

        if layout != "nchw":  # jittor 1.3.11's NHWC ("acdb") backward finds no cuDNN algorithm (H200, cuDNN 9)
            raise SystemExit("jittor: only --layout nchw")
        self.jt = import_jittor("cuda")
        self.setting = "jittor (cuDNN's default math) nchw"

    def put(self, a):
        return self.jt.array(a)

    def conv(self, x, w):
        return self.jt.nn.conv2d(x, w, padding=w.shape[-1] // 2)

    def grad_x(self, x, w, g):
        return self.jt.grad((self.conv(x, w) * g).sum(), x)  # lazy: the forward output is never computed

    def get(self, t):
        return t.numpy()

    def sync(self, outputs):
        self.jt.sync(outputs)  # lazy: what is not synced (or used) never runs
        self.jt.sync_all(True)


class CudnnLegacy:
    """cuDNN's legacy forward convolution through ctypes, on torch's memory and stream: per call with its
    set-up (jittor's way) or with descriptors, algorithm and workspace kept per shape. Forward only."""

    def __init__(self, cached: bool):
        import ctypes

        import torch

        torch.backends.cudnn.benchmark = False
        torch.nn.functional.conv2d(torch.ones(1, 1, 3, 3, device="cuda"), torch.ones(1, 1, 1, 1, device="cuda"))
        path = next(line.split()[-1] for line in open("/proc/self/maps") if "libcudnn.so" in line)
        self.lib, self.ctypes, self.torch, self.cached = ctypes.CDLL(path), ctypes, torch, cached
        self.setting = f"cudnn legacy API ({'set-up kept per shape' if cached else 'set-up at every call'}) nchw"
        self.handle = ctypes.c_void_p()
        self.check(self.lib.cudnnCreate(ctypes.byref(self.handle)))
        self.check(self.lib.cudnnSetStream(self.handle, ctypes.c_void_p(torch.cuda.current_stream().cuda_stream)))
        self.algos, self.kept = {}, {}

        class Perf(ctypes.Structure):  # cudnnConvolutionFwdAlgoPerf_t
            _fields_ = [("algo", ctypes.c_int), ("status", ctypes.c_int), ("time", ctypes.c_float),
                        ("memory", ctypes.c_size_t), ("determinism", ctypes.c_int), ("mathType", ctypes.c_int),
                        ("reserved", ctypes.c_int * 3)]
        self.Perf = Perf
        self.one, self.zero = ctypes.c_float(1.0), ctypes.c_float(0.0)

    def check(self, status):
        if status != 0:
            self.lib.cudnnGetErrorString.restype = self.ctypes.c_char_p
            raise RuntimeError(f"cuDNN: {self.lib.cudnnGetErrorString(status).decode()}")

    def descriptors(self, x, w):
        c, lib = self.ctypes, self.lib
        xd, yd, wd, cd = c.c_void_p(), c.c_void_p(), c.c_void_p(), c.c_void_p()
        for make, d in ((lib.cudnnCreateTensorDescriptor, xd), (lib.cudnnCreateTensorDescriptor, yd),
                        (lib.cudnnCreateFilterDescriptor, wd), (lib.cudnnCreateConvolutionDescriptor, cd)):
            self.check(make(c.byref(d)))
        n, ci, h, wi = x.shape
        co, _, k, _ = w.shape
        self.check(lib.cudnnSetTensor4dDescriptor(xd, 0, 0, n, ci, h, wi))  # NCHW, float
        self.check(lib.cudnnSetTensor4dDescriptor(yd, 0, 0, n, co, h, wi))
        self.check(lib.cudnnSetFilter4dDescriptor(wd, 0, 0, co, ci, k, k))
        self.check(lib.cudnnSetConvolution2dDescriptor(cd, k // 2, k // 2, 1, 1, 1, 1, 1, 0))  # cross-correlation
        self.check(lib.cudnnSetConvolutionMathType(cd, 0))  # default math: TF32 on tensor cores, as jittor's
        return xd, yd, wd, cd

    def destroy(self, xd, yd, wd, cd):
        lib = self.lib
        lib.cudnnDestroyTensorDescriptor(xd), lib.cudnnDestroyTensorDescriptor(yd)
        lib.cudnnDestroyFilterDescriptor(wd), lib.cudnnDestroyConvolutionDescriptor(cd)

    def put(self, a):
        return self.torch.from_numpy(a).cuda()

    def conv(self, x, w):
        c, lib = self.ctypes, self.lib
        key = (tuple(x.shape), tuple(w.shape))
        if key not in self.algos:  # benchmark the algorithms once per shape, as jittor's cache does
            xd, yd, wd, cd = self.descriptors(x, w)
            perf, count = (self.Perf * 8)(), c.c_int()
            self.check(lib.cudnnFindConvolutionForwardAlgorithm(self.handle, xd, wd, cd, yd, 8, c.byref(count), perf))
            self.algos[key] = perf[0].algo
            self.destroy(xd, yd, wd, cd)
        algo = self.algos[key]
        y = self.torch.empty((x.shape[0], w.shape[0], *x.shape[2:]), device="cuda")
        if self.cached and key in self.kept:
            xd, yd, wd, cd, space, size = self.kept[key]
        else:
            xd, yd, wd, cd = self.descriptors(x, w)
            size = c.c_size_t()
            self.check(lib.cudnnGetConvolutionForwardWorkspaceSize(self.handle, xd, wd, cd, yd, algo, c.byref(size)))
            space = self.torch.empty(max(size.value, 1), dtype=self.torch.uint8, device="cuda")
            if self.cached:
                self.kept[key] = (xd, yd, wd, cd, space, size)
        self.check(lib.cudnnConvolutionForward(
            self.handle, c.byref(self.one), xd, c.c_void_p(x.data_ptr()), wd, c.c_void_p(w.data_ptr()), cd, algo,
            c.c_void_p(space.data_ptr()), size, c.byref(self.zero), yd, c.c_void_p(y.data_ptr())))
        if not self.cached:
            self.destroy(xd, yd, wd, cd)
        return y

    def grad_x(self, x, w, g):
        return None

    def get(self, t):
        return t.float().cpu().numpy()

    def sync(self, _outputs):
        self.torch.cuda.synchronize()


def timed_ms(fw, fn, repeats: int) -> float:
    """Best of three: ``repeats`` calls queued, then one sync over all their outputs."""
    fw.sync([fn()])
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        fw.sync([fn() for _ in range(repeats)])
        best = min(best, (time.perf_counter() - start) * 1e3 / repeats)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--framework", choices=("torch", "jittor", "cudnn-setup", "cudnn-cached"), required=True)
    p.add_argument("--tf32", type=int, default=1, help="torch: cudnn.allow_tf32")
    p.add_argument("--layout", choices=("nchw", "nhwc"), default="nchw")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    if args.framework.startswith("cudnn"):
        fw = CudnnLegacy(cached=args.framework == "cudnn-cached")
    else:
        fw = TorchConv(bool(args.tf32), args.layout) if args.framework == "torch" else JittorConv(args.layout)
    rng = np.random.default_rng(0)
    rows = []
    for cin, cout, side, k in SHAPES:
        w_np = (rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)).astype(np.float32)
        row = {"setting": fw.setting, "shape": f"{cin}->{cout} {k}x{k} @{side}"}
        for batch in (1, 2):
            x_np = rng.standard_normal((batch, cin, side, side)).astype(np.float32)
            x, w = fw.put(x_np), fw.put(w_np)
            g = fw.put(rng.standard_normal((batch, cout, side, side)).astype(np.float32))
            row[f"fwd_ms_b{batch}"] = round(timed_ms(fw, lambda: fw.conv(x, w), args.repeats), 3)
            if fw.grad_x(x, w, g) is not None:  # the ctypes probe times the forward only
                row[f"bwd_x_ms_b{batch}"] = round(timed_ms(fw, lambda: fw.grad_x(x, w, g), args.repeats), 3)
            if batch == 1:
                row["rel_err_fwd"] = float(f"{rel(fw.get(fw.conv(x, w))[0], reference(x_np[0], w_np)):.2e}")
                grad = fw.grad_x(x, w, g)
                if grad is not None:  # the input's gradient: the transposed convolution of g (stride 1, 'same')
                    flipped = np.ascontiguousarray(w_np.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])
                    g_np = fw.get(g)[0]
                    row["rel_err_bwd_x"] = float(f"{rel(fw.get(grad)[0], reference(g_np, flipped)):.2e}")
        print(json.dumps(row), flush=True)
        rows.append(row)
    row = {"setting": fw.setting, "shape": "elementwise x*c @64 (320 channels)"}
    for batch in (1, 2):
        x = fw.put(rng.standard_normal((batch, 320, 64, 64)).astype(np.float32))
        row[f"fwd_ms_b{batch}"] = round(timed_ms(fw, lambda: x * 1.0001, args.repeats), 3)
    print(json.dumps(row), flush=True)
    rows.append(row)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"setting": fw.setting, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
