"""Where the GPU time of SuppressEOT's repeated steps goes, kernel by kernel, and at what share of the card (GPU).

The steps that make up nearly all of a run, on any family's model (SD 1/2, SDXL):

- a null-text iteration: UNet forward + backward to the unconditional embedding, batch 1;
- an ITO iteration: the same through the recorded maps, ending after the last block that holds them;
- a denoising step of both branches as the backend runs it (two batch-2 passes, the conditional one recorded),
  and the same as one batch-4 pass, its conditional half recorded (a lever: larger GEMMs, half the kernels);
- diffusers' guided step (one batch-2 pass, nothing recorded): what a plain generation pays per step.

For each step and variant (the backend's default; with --compile the backend's --compile): the median wall
milliseconds eager and as a CUDA-graph replay, the sum of its kernels' GPU time, its FLOPs (benchmarks/flops.py:
matmuls, convolutions, attention, backward included) and what the replay achieves against the card's dense
peak; then one torch.profiler pass per step, its kernels summed by kind (convolution, matmul, attention,
normalization, elementwise, copies) with the top kernels. Usage:

    python benchmarks/probes/profile_steps.py --model-dir .bench/random-sd-v1 [--size sd-v1|sdxl] [--fast] [--compile]
        [--out DIR]
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

from suppresseot.backends.cuda_graphs import GraphedStep  # noqa: E402
from suppresseot.backends.torch_backend import TorchBackend  # noqa: E402
from suppresseot.random_model import save_random_model  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "benchmarks"))
from flops import card_peak, flops_of, make_steps  # noqa: E402
from profile_unet import timed  # noqa: E402

KINDS = [  # first match wins; kernel names of cuDNN, cuBLAS/CUTLASS, PyTorch and inductor (triton_*)
    ("attention", r"flash|fmha|attention|efficient_attention|cutlass.*mem_eff"),
    ("convolution", r"conv|cudnn|implicit_gemm|dgrad|wgrad|fprop|xmma_fprop|sm\d+_xmma_(fprop|dgrad)"),
    ("softmax", r"softmax"),
    ("normalization", r"norm|welford|group_norm|layer_norm|triton_red|triton_per"),
    ("matmul", r"gemm|cutlass|xmma|sm\d+_|matmul|ampere|hopper|nvjet"),
    ("copy/layout", r"copy|transpose|permute|cat|index|memcpy|memset|fill"),
    ("reduction", r"reduce"),
    ("elementwise", r"elementwise|vectorized|unrolled|pointwise|triton_poi"),
]


def kind_of(name: str) -> str:
    low = name.lower()
    for kind, pattern in KINDS:
        if re.search(pattern, low):
            return kind
    return "other"


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
    launches = sum(r[1] for r in rows)
    if quiet:
        return {"label": label, "total_ms": total, "launches": launches, "by_kind_ms": by_kind}
    print(f"\n## {label}: {total:.1f} ms of kernels, {launches} launches")
    for kind, ms in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:14s} {ms:8.2f} ms  {100 * ms / total:5.1f}%")
    for ms, count, name in rows[:15]:
        print(f"  {ms:8.2f} ms  x{count:<5d} {name}")
    return {"label": label, "total_ms": total, "launches": launches, "by_kind_ms": by_kind,
            "top": [{"ms": ms, "count": c, "kernel": n} for ms, c, n in rows[:25]]}


def profile_variant(label: str, backend, args, peak) -> tuple[dict, list]:
    steps = make_steps(backend)
    row = {"variant": label}
    started = time.perf_counter()
    for fn, inputs in steps.values():  # compilation (where compiled), cuDNN and cuBLAS set-up
        fn(*inputs)
    torch.cuda.synchronize()
    row["first_calls_s"] = round(time.perf_counter() - started, 2)
    tables = []
    for name, (fn, inputs) in steps.items():
        row[f"{name}_eager_ms"], row[f"{name}_peak_gib"] = timed(lambda: fn(*inputs), args.repeats)
        graphed = GraphedStep(fn, "cuda")
        row[f"{name}_graph_ms"] = timed(lambda: graphed(*inputs), args.repeats)[0]
        graphed.graph = graphed.static_inputs = graphed.static_outputs = None  # its pool goes back
        torch.cuda.empty_cache()
        table = kernel_table(lambda: fn(*inputs), f"{label}: {name}")
        tables.append(table)
        row[f"{name}_kernel_ms"] = table["total_ms"]
        row[f"{name}_launches"] = table["launches"]
        row[f"{name}_gflop"] = flops_of(fn, inputs, fake=True) / 1e9
        row[f"{name}_tflops"] = row[f"{name}_gflop"] / row[f"{name}_graph_ms"]  # GFLOP / ms = TFLOP/s
        if peak:
            row[f"{name}_share_of_peak"] = row[f"{name}_tflops"] / peak
    print(json.dumps(row), flush=True)
    return row, tables


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path, default=ROOT / ".bench" / "random-sd-v1")
    p.add_argument("--size", default="sd-v1", help="a label for the model (sd-v1 builds the random SD v1.4 shape if missing)")
    p.add_argument("--fast", action="store_true", help="fast mode (bf16) instead of faithful (fp32)")
    p.add_argument("--compile", action="store_true", help="also with the backend's --compile")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    if not (args.model_dir / "model_index.json").exists():
        if args.size != "sd-v1":
            sys.exit(f"no model in {args.model_dir}: build it with benchmarks/bench.py --size {args.size} "
                     f"--model-dir {args.model_dir} (or point --model-dir at a diffusers folder)")
        save_random_model(args.model_dir, ROOT / "src/suppresseot/data/clip-tokenizer", size=args.size)
    options = dict(device="cuda", fast=args.fast, dtype="bfloat16" if args.fast else "float32", cuda_graphs=False)
    peak = card_peak(torch.cuda.get_device_name(), "bf16" if args.fast else "fp32")
    rows, tables = [], []
    variants = [("default", {})] + ([("compiled", {"compile_unet": True})] if args.compile else [])
    for label, extra in variants:
        backend = TorchBackend(args.model_dir, **options, **extra)
        row, kernels = profile_variant(label, backend, args, peak)
        rows.append(row)
        tables += kernels
        del backend
        torch.cuda.empty_cache()

    names = ["null_text_iteration", "ito_iteration", "denoising_step_two_passes", "denoising_step_one_pass",
             "diffusers_guided_step"]
    head = ["variant", "step", "eager ms", "graph ms", "kernels ms", "launches", "GFLOP", "TFLOP/s (graph)",
            "share of peak", "peak GiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        for n in names:
            share = r.get(f"{n}_share_of_peak")
            lines.append("| " + " | ".join([
                r["variant"], n, f"{r[f'{n}_eager_ms']:.1f}", f"{r[f'{n}_graph_ms']:.2f}", f"{r[f'{n}_kernel_ms']:.2f}",
                str(r[f"{n}_launches"]), f"{r[f'{n}_gflop']:.0f}", f"{r[f'{n}_tflops']:.0f}",
                "–" if share is None else f"{100 * share:.0f}%", f"{r[f'{n}_peak_gib']:.2f}"]) + " |")
    header = (f"{torch.cuda.get_device_name()}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, "
              f"{args.size}, {'fast (bf16)' if args.fast else 'faithful (fp32)'}, peak {peak} TFLOP/s dense")
    print(f"\n{header}\n" + "\n".join(lines))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = f"profile_steps_{args.size}" + ("_fast" if args.fast else "")
        (args.out / f"{stem}.json").write_text(json.dumps({"device": header, "timings": rows, "kernels": tables},
                                                          indent=1))
        (args.out / f"{stem}.md").write_text(f"{header}\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
