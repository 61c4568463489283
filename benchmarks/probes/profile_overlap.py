"""Would null-text and sampling gain from running side by side on two CUDA streams? (GPU, fast mode)

A photo's null-text step i+1 and its sampling step i are independent (sampling step i needs only null-text
step i's embedding), so the two chains could run concurrently. Batch-1 UNet kernels leave most of an H200's
SMs idle, so a second stream may fill them. This measures that before any pipeline change: the replay of
N null-text iterations alone, M denoising steps alone, and both queued on two streams at once (graphs in
separate memory pools); overlap = (alone sum - together) / the shorter of the two.

    python benchmarks/probes/profile_overlap.py --model-dir .bench/random-sd-v1 [--no-fast] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from profile_steps import ROOT, denoising_step, null_text_iteration, step_inputs  # noqa: E402

from suppresseot.backends.cuda_graphs import GraphedStep  # noqa: E402
from suppresseot.backends.torch_backend import TorchBackend  # noqa: E402
from suppresseot.random_model import save_random_model  # noqa: E402


def seconds(run) -> float:
    torch.cuda.synchronize()
    started = time.perf_counter()
    run()
    torch.cuda.synchronize()
    return time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path, default=ROOT / ".bench" / "random-sd-v1")
    p.add_argument("--no-fast", action="store_true", help="faithful fp32 instead of fast bf16")
    p.add_argument("--null-text", type=int, default=100, help="null-text iterations (N)")
    p.add_argument("--denoising", type=int, default=50, help="denoising steps (M)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    if not (args.model_dir / "model_index.json").exists():
        save_random_model(args.model_dir, ROOT / "src/suppresseot/data/clip-tokenizer", size="sd-v1")
    fast = not args.no_fast
    backend = TorchBackend(args.model_dir, device="cuda", fast=fast, dtype="bfloat16" if fast else "float32",
                           cuda_graphs=False)
    text, latent, target = step_inputs(backend)
    null_step = GraphedStep(null_text_iteration(backend), "cuda")  # each its own family: its own memory pool
    denoise_step = GraphedStep(denoising_step(backend), "cuda")
    null_inputs, denoise_inputs = (text, latent, target, 500), (latent, text, text * 0.9, 480)
    null_step(*null_inputs)
    denoise_step(*denoise_inputs)

    def run_null():
        for _ in range(args.null_text):
            null_step(*null_inputs)

    def run_denoise():
        for _ in range(args.denoising):
            denoise_step(*denoise_inputs)

    streams = torch.cuda.Stream(), torch.cuda.Stream()

    def together():
        for s in streams:
            s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(streams[0]):  # the host queues both faster than the GPU runs them
            run_null()
        with torch.cuda.stream(streams[1]):
            run_denoise()
        for s in streams:
            torch.cuda.current_stream().wait_stream(s)

    rows = []
    for repeat in range(3):
        alone_null, alone_denoise, both = seconds(run_null), seconds(run_denoise), seconds(together)
        shorter = min(alone_null, alone_denoise)
        rows.append({"repeat": repeat, "null_text_alone_s": alone_null, "denoising_alone_s": alone_denoise,
                     "together_s": both, "sequential_s": alone_null + alone_denoise,
                     "overlap": (alone_null + alone_denoise - both) / shorter})
        print(json.dumps(rows[-1]), flush=True)
    # the outputs of a concurrent run equal a sequential one's (same graphs, independent chains)
    out_null, out_denoise = null_step(*null_inputs), denoise_step(*denoise_inputs)
    for s in streams:  # a graph's static inputs are rewritten on the calling stream: after the last replay
        s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(streams[0]):
        both_null = null_step(*null_inputs)
    with torch.cuda.stream(streams[1]):
        both_denoise = denoise_step(*denoise_inputs)
    torch.cuda.synchronize()
    same = all(torch.equal(a, b) for a, b in zip(torch.utils._pytree.tree_leaves((out_null, out_denoise)),
                                                 torch.utils._pytree.tree_leaves((both_null, both_denoise))))
    best = min(rows, key=lambda r: r["together_s"])
    summary = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "fast": fast,
               "null_text_iterations": args.null_text, "denoising_steps": args.denoising,
               "null_text_ms": 1e3 * best["null_text_alone_s"] / args.null_text,
               "denoising_ms": 1e3 * best["denoising_alone_s"] / args.denoising,
               "overlap": best["overlap"], "same_outputs": same, "rows": rows}
    print(json.dumps({k: v for k, v in summary.items() if k != "rows"}))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"profile_overlap{'_fast' if fast else ''}.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
