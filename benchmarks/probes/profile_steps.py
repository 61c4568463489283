"""Where the GPU time of SuppressEOT's repeated steps goes, kernel by kernel (GPU).

The three steps that make up nearly all of a run: a null-text iteration (UNet forward + backward to the
unconditional embedding, batch 1), an ITO iteration (the same through the recorded 16x16 maps) and a
denoising step (two batch-2 forwards, one recorded). For each: median wall milliseconds eager and as a
CUDA-graph replay, the sum of its kernels' GPU time, and the UNet output's difference from the default,
for the faithful backend's defaults and without fused attention and/or NHWC convolutions (the official
code's arithmetic and layout), with --cudnn-benchmark cuDNN's autotuner on, and with --compile a
torch.compile'd UNet (--compile-options: more variants, with inductor options); then one torch.profiler
pass per step with the defaults, its kernels summed by kind (convolution, matmul, softmax, normalization,
elementwise, copies) and the top kernels. Usage:

    python benchmarks/probes/profile_steps.py --model-dir .bench/random-sd-v1 [--fast] [--cudnn-benchmark] [--out DIR]
        [--compile [--compile-mode M]] [--compile-options conv_1x1_as_mm=1,coordinate_descent_tuning=1 ...]
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from suppresseot.algorithm.attention import ALL_PLACES, AttentionRecorder  # noqa: E402
from suppresseot.backends.cuda_graphs import GraphedStep  # noqa: E402
from suppresseot.backends.torch_backend import TorchBackend  # noqa: E402
from suppresseot.random_model import save_random_model  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from profile_unet import timed  # noqa: E402

KINDS = [  # first match wins; kernel names of cuDNN, cuBLAS/CUTLASS and PyTorch
    ("convolution", r"conv|cudnn|implicit_gemm|dgrad|wgrad|fprop|xmma_fprop|sm\d+_xmma_(fprop|dgrad)"),
    ("softmax", r"softmax"),
    ("normalization", r"norm|welford|group_norm|layer_norm"),
    ("matmul", r"gemm|cutlass|xmma|sm\d+_|matmul|ampere|hopper|nvjet"),
    ("copy/layout", r"copy|transpose|permute|cat|index|memcpy|memset|fill"),
    ("reduction", r"reduce"),
    ("elementwise", r"elementwise|vectorized|unrolled|pointwise"),
]


def kind_of(name: str) -> str:
    low = name.lower()
    for kind, pattern in KINDS:
        if re.search(pattern, low):
            return kind
    return "other"


def step_inputs(backend):
    """A prompt embedding and two seeded latents (the input and a target) on the GPU."""
    torch.manual_seed(0)
    latent = torch.randn(1, 4, 64, 64, device="cuda")
    target = torch.randn(1, 4, 64, 64, device="cuda")
    return backend.encode_text([49406] + [320] * 8 + [49407] * 68), latent, target


def null_text_iteration(backend):
    """A null-text iteration's work: UNet forward + backward to the embedding (batch 1) and an update.

    The timestep comes in as an argument, as in the pipeline: a graphed step turns it into a device scalar
    (a Python int inside would make diffusers copy it to the GPU, which a capture refuses)."""
    def step(e, latent, target, t):
        def loss(x):
            return ((backend.unet(latent, t, x) - target) ** 2).mean(), None
        value, _, grad = backend.value_and_grad(loss, e)
        return e - 1e-3 * grad, value
    return step


def denoising_step(backend):
    """A sampling step's UNet work for one image: both branches (batch 2), the unconditional pass and the
    conditional one, whose maps are recorded."""
    def step(latent, text, edited, t):
        with torch.no_grad():
            latents = torch.cat([latent, latent])
            eps_u = backend.unet(latents, t, torch.cat([text, text]))
            eps_c = backend.unet(latents, t, torch.cat([text, edited]), recorder=AttentionRecorder())
            return latents + 0.1 * (eps_c - eps_u)
    return step


def kernel_table(fn, label: str, quiet: bool = False) -> dict:
    """One profiled call: GPU milliseconds per kernel kind and the 15 costliest kernels."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    kernels = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]  # kernels, not the ops launching them
    by_kind: dict[str, float] = {}
    rows = []
    for e in kernels:
        ms = getattr(e, "device_time_total", None)
        ms = (ms if ms is not None else e.cuda_time_total) / 1e3
        if ms <= 0:
            continue
        by_kind[kind_of(e.key)] = by_kind.get(kind_of(e.key), 0.0) + ms
        rows.append((ms, e.count, e.key[:110]))
    rows.sort(reverse=True)
    total = sum(by_kind.values())
    if quiet:
        return {"label": label, "total_ms": total, "by_kind_ms": by_kind}
    print(f"\n## {label}: {total:.1f} ms of kernels, {sum(r[1] for r in rows)} launches")
    for kind, ms in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:14s} {ms:8.2f} ms  {100 * ms / total:5.1f}%")
    for ms, count, name in rows[:15]:
        print(f"  {ms:8.2f} ms  x{count:<5d} {name}")
    return {"label": label, "total_ms": total, "by_kind_ms": by_kind,
            "top": [{"ms": ms, "count": c, "kernel": n} for ms, c, n in rows[:25]]}


def inductor_options(spec: str) -> dict:
    """"a=1,b=false,c=x" as torch.compile options: integers and booleans parsed, the rest kept as strings."""
    options = {}
    for item in filter(None, spec.split(",")):
        key, _, value = item.partition("=")
        low = value.strip().lower()
        options[key.strip()] = (True if low in ("1", "true", "") else False if low in ("0", "false")
                                else int(low) if low.isdigit() else value.strip())
    return options


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path, default=ROOT / ".bench" / "random-sd-v1")
    p.add_argument("--size", default="sd-v1")
    p.add_argument("--fast", action="store_true", help="profile fast mode (bf16) instead of faithful")
    p.add_argument("--compile", action="store_true",
                   help="also time the steps with the UNet under torch.compile (inductor), eager and graphed")
    p.add_argument("--compile-mode", default=None,
                   help="torch.compile mode for --compile, e.g. max-autotune-no-cudagraphs (inductor tunes GEMM and "
                        "convolution kernels: much longer compilation; the backend's --compile uses the default)")
    p.add_argument("--compile-options", action="append", default=[], metavar="K=V,K=V",
                   help="also time a torch.compile variant with these inductor options (torch.compile's options=, "
                        "e.g. conv_1x1_as_mm=1,coordinate_descent_tuning=1); repeatable, one variant each")
    p.add_argument("--cudnn-benchmark", action="store_true",
                   help="also time the steps with cuDNN's autotuner (torch.backends.cudnn.benchmark) on: it may "
                        "pick other convolution kernels than the heuristics (other rounding too)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    if not (args.model_dir / "model_index.json").exists():
        save_random_model(args.model_dir, ROOT / "src/suppresseot/data/clip-tokenizer", size=args.size)
    backend = TorchBackend(args.model_dir, device="cuda", fast=args.fast, dtype="bfloat16" if args.fast else "float32",
                           cuda_graphs=False)
    text, latent, target = step_inputs(backend)
    null_text = null_text_iteration(backend)

    def ito(e, latent, t):
        def loss(x):
            recorder = AttentionRecorder()
            backend.record_attention(latent, t, x, recorder)  # as the pipeline's ITO: up to the 16x16 maps
            cross = recorder.aggregate(True, ALL_PLACES).double()
            self_ = recorder.aggregate(False, ALL_PLACES).double()
            return (cross ** 2).sum() + (self_ ** 2).sum(), None
        value, _, grad = backend.value_and_grad(loss, e)
        return e - grad, value

    steps = {"null_text_iteration": (null_text, (text, latent, target, 500)),
             "ito_iteration": (ito, (text, latent, 500)),
             "denoising_step": (denoising_step(backend), (latent, text, text, 500))}
    variants = [("default", {}), ("explicit attention", {"fused_attention": False}),
                ("NCHW", {"_channels_last": False}),
                ("explicit + NCHW (official layout)", {"fused_attention": False, "_channels_last": False})]
    if args.fast:
        variants = variants[:1]
    if args.cudnn_benchmark:
        variants.append(("cudnn.benchmark", {"_cudnn_benchmark": True}))
    if args.compile:
        variants.append((f"torch.compile{f' ({args.compile_mode})' if args.compile_mode else ''}",
                         {"_compile": {"mode": args.compile_mode}}))
    for spec in args.compile_options:
        variants.append((f"torch.compile ({spec})", {"_compile": {"options": inductor_options(spec)}}))
    defaults = {"fused_attention": backend.fused_attention, "_channels_last": backend.channels_last}
    rows = []
    reference_eps = None  # the first variant's UNet output: what the others' rounding is measured against
    for label, settings in variants:
        merged = {**defaults, **settings}
        backend.fused_attention = merged["fused_attention"]
        if backend.channels_last != merged["_channels_last"]:
            backend.use_channels_last(merged["_channels_last"])
        row = {"variant": label}
        torch.backends.cudnn.benchmark = bool(settings.get("_cudnn_benchmark"))
        if settings.get("_compile"):  # the backend's --compile: unrecorded UNet calls only
            started = time.perf_counter()
            torch._dynamo.reset()  # dynamo caches per code object: another variant would reuse the last one's code
            backend._compiled_unet = torch.compile(backend.unet_model, dynamic=False, **settings["_compile"])
            for fn, inputs in steps.values():
                fn(*inputs)
            torch.cuda.synchronize()
            row["compile_s"] = time.perf_counter() - started
        with torch.no_grad():
            eps = backend.unet(latent, 500, text)
        reference_eps = eps if reference_eps is None else reference_eps
        row["eps_rel_diff_vs_default"] = float((eps - reference_eps).norm() / reference_eps.norm())
        for name, (fn, inputs) in steps.items():
            row[f"{name}_eager_ms"], row[f"{name}_peak_gib"] = timed(lambda: fn(*inputs), args.repeats)
            graphed = GraphedStep(fn, "cuda")
            row[f"{name}_graph_ms"] = timed(lambda: graphed(*inputs), args.repeats)[0]
            del graphed
            torch.cuda.empty_cache()
            table = kernel_table(lambda: fn(*inputs), f"{label}: {name}", quiet=True)
            row[f"{name}_kernel_ms"] = table["total_ms"]
            row[f"{name}_kernels_by_kind_ms"] = {k: round(v, 3) for k, v in table["by_kind_ms"].items()}
        rows.append(row)
        print(json.dumps(row), flush=True)
    backend.fused_attention = defaults["fused_attention"]
    backend.use_channels_last(defaults["_channels_last"])
    backend._compiled_unet = None
    torch.backends.cudnn.benchmark = False
    tables = [kernel_table(lambda: fn(*inputs), name) for name, (fn, inputs) in steps.items()]

    what = ("eager_ms", "graph_ms", "kernel_ms", "peak_gib")
    head = ["variant", "UNet output Δ default"] + [f"{n} {w.replace('_', ' ')}" for n in steps for w in what]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        cells = [r["variant"], f"{r['eps_rel_diff_vs_default']:.1e}"] + [
            f"{r.get(f'{n}_{w}', float('nan')):.{1 if w != 'peak_gib' else 2}f}" for n in steps for w in what]
        lines.append("| " + " | ".join(cells) + " |")
    header = (f"{torch.cuda.get_device_name()}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, "
              f"{'fast (bf16)' if args.fast else 'faithful (fp32)'}")
    print(f"\n{header}\n" + "\n".join(lines))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = "profile_steps_fast" if args.fast else "profile_steps"
        (args.out / f"{stem}.json").write_text(json.dumps({"device": header, "timings": rows, "kernels": tables},
                                                          indent=1))


if __name__ == "__main__":
    main()
