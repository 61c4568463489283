"""Cost of the fast mode's most repeated step on the GPU: one null-text iteration (UNet forward +
backward to the unconditional embedding, batch 1), eager vs CUDA-graph replay, NCHW vs channels-last,
bfloat16 vs float16. Median milliseconds of 20 calls. Usage:

    python benchmarks/probes/profile_fast.py --model-dir .bench/random-sd-v1
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from suppresseot.backends.cuda_graphs import GraphedStep  # noqa: E402
from suppresseot.backends.torch_backend import TorchBackend  # noqa: E402
from suppresseot.random_model import save_random_model  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from profile_steps import null_text_iteration, step_inputs  # noqa: E402
from profile_unet import timed  # noqa: E402


def median_ms(fn, repeats: int = 20) -> float:
    return timed(fn, repeats)[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path, default=ROOT / ".bench" / "random-sd-v1")
    p.add_argument("--size", default="sd-v1")
    args = p.parse_args()
    if not (args.model_dir / "model_index.json").exists():
        save_random_model(args.model_dir, ROOT / "src/suppresseot/data/clip-tokenizer", size=args.size)
    rows = []
    for dtype in ("bfloat16", "float16"):
        for channels_last in (False, True):
            backend = TorchBackend(args.model_dir, device="cuda", dtype=dtype, fast=True, cuda_graphs=True,
                                   channels_last=channels_last)
            embedding, latent, target = step_inputs(backend)
            iteration = null_text_iteration(backend)
            graphed = GraphedStep(iteration, "cuda")
            row = {"dtype": dtype, "channels_last": channels_last,
                   "eager_ms": median_ms(lambda: iteration(embedding, latent, target, 500)),
                   "graph_ms": median_ms(lambda: graphed(embedding, latent, target, 500))}
            rows.append(row)
            print(json.dumps(row), flush=True)
            del backend, graphed
            torch.cuda.empty_cache()
    print("\n| dtype | channels last | eager ms | CUDA graph ms |\n| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['dtype']} | {r['channels_last']} | {r['eager_ms']:.1f} | {r['graph_ms']:.1f} |")


if __name__ == "__main__":
    main()
