"""The Jittor GroupNorm kernels alone (``layers.normalize_groups``) against jittor's own ops, at SD v1's UNet norm
shapes: milliseconds a call (forward without gradients; forward + backward to the input), and the error of each
against float64 numpy. Usage (on the GPU, in the jittor environment; see benchmarks/gpu_bench.sh):

    python benchmarks/probes/probe_groupnorm.py [--batch 1] [--repeats 20]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from profile_jittor import wall_ms  # noqa: E402  (it puts the checkout's src on the path)

from suppresseot.backends.jittor.env import import_jittor  # noqa: E402

# (channels, side) of SD v1's UNet GroupNorms at 64x64 latents (down, mid and up blocks' inputs)
SHAPES = [(320, 64), (640, 64), (960, 64), (640, 32), (1280, 32), (1920, 32), (1280, 16), (2560, 16), (1280, 8),
          (2560, 8)]
EPS = 1e-5


def plain(jt, g):
    """jittor's ops: the two-pass statistics by reductions over the group's inner axes."""
    centred = g - g.mean(dims=(2, 3), keepdims=True)
    return centred / jt.sqrt((centred * centred).mean(dims=(2, 3), keepdims=True) + EPS)


def reference(x, dy):
    """float64 numpy: the normalisation and d(sum(y * dy))/dx."""
    x, dy = x.astype(np.float64), dy.astype(np.float64)
    mean = x.mean(axis=(2, 3), keepdims=True)
    rstd = 1 / np.sqrt(((x - mean) ** 2).mean(axis=(2, 3), keepdims=True) + EPS)
    y = (x - mean) * rstd
    dx = rstd * (dy - dy.mean(axis=(2, 3), keepdims=True) - y * (dy * y).mean(axis=(2, 3), keepdims=True))
    return y, dx


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--device", default="cuda")
    args = p.parse_args()
    jt = import_jittor(args.device)
    from suppresseot.backends.jittor.models.layers import normalize_groups

    rng = np.random.default_rng(0)
    print(f"batch {args.batch}; ms a call (median of {args.repeats}), max abs error against float64 numpy")
    print("| channels x side | fwd kernel | fwd jittor ops | fwd+bwd kernel | fwd+bwd jittor ops | error y / dx "
          "kernel | jittor ops |")
    print("|---|---:|---:|---:|---:|---|---|")
    for channels, side in SHAPES:
        shape = (args.batch, 32, channels // 32, side * side)
        x_np = (rng.standard_normal(shape) * 2 + 3).astype(np.float32)
        dy_np = rng.standard_normal(shape).astype(np.float32)
        x, dy = jt.array(x_np), jt.array(dy_np)
        y_ref, dx_ref = reference(x_np, dy_np)
        row, errors = [], []
        for fn in (normalize_groups, lambda g, eps: plain(jt, g)):
            def forward(fn=fn):
                with jt.no_grad():
                    fn(x, EPS).sync()

            def forward_backward(fn=fn):
                v = x.detach()
                v.start_grad()
                out = fn(v, EPS)
                return out, jt.grad((out * dy).sum(), v)

            def run(fn=forward_backward):
                jt.sync(list(fn()))

            row += [wall_ms(jt, forward, args.repeats), wall_ms(jt, run, args.repeats)]
            y, dx = forward_backward()
            errors.append(f"{np.abs(y.numpy() - y_ref).max():.1e} / {np.abs(dx.numpy() - dx_ref).max():.1e}")
        print(f"| {channels} x {side}^2 | {row[0]:.3f} | {row[2]:.3f} | {row[1]:.3f} | {row[3]:.3f} | {errors[0]} "
              f"| {errors[1]} |", flush=True)


if __name__ == "__main__":
    main()
