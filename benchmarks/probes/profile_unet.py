"""Where the time and memory of one UNet call go, per attention path and convolution precision (GPU).

The faithful mode ran strict fp32 with explicit attention (on a GPU it now fuses unrecorded layers); this measures what each of those choices
costs for the two calls SuppressEOT makes most: a no-grad forward (sampling, inversion) and an ITO
forward+backward to the text embedding through the recorded 16x16 maps. Usage:

    python benchmarks/probes/profile_unet.py --model-dir .bench/random-sd-v1 [--size sd-v1] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from suppresseot.algorithm.attention import ALL_PLACES, AttentionRecorder  # noqa: E402
from suppresseot.backends.torch_backend import TorchBackend  # noqa: E402
from suppresseot.random_model import save_random_model  # noqa: E402

GIB = 2 ** 30


def timed(fn, repeats: int) -> tuple[float, float]:
    """Median milliseconds of ``fn`` and the peak allocated GiB while it ran (after one warm-up)."""
    fn()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[len(times) // 2], torch.cuda.max_memory_allocated() / GIB


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path, default=ROOT / ".bench" / "random-sd-v1")
    p.add_argument("--size", default="sd-v1")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    if not (args.model_dir / "model_index.json").exists():
        save_random_model(args.model_dir, ROOT / "src/suppresseot/data/clip-tokenizer", size=args.size)
    backend = TorchBackend(args.model_dir, device="cuda", dtype="float32")
    torch.manual_seed(0)
    latent = torch.randn(1, 4, 64, 64, device="cuda")
    embedding = backend.encode_text(list(range(49406, 49406 + 1)) + [320] * 8 + [49407] * 68)

    def forward(batch):
        with torch.no_grad():
            backend.unet(latent.expand(batch, -1, -1, -1), 500, embedding.expand(batch, -1, -1))

    def ito_iteration():
        def loss(e):
            recorder = AttentionRecorder()
            backend.unet(latent, 500, e, recorder=recorder)
            cross = recorder.aggregate(True, ALL_PLACES).double()
            self_ = recorder.aggregate(False, ALL_PLACES).double()
            return (cross ** 2).sum() + (self_ ** 2).sum(), None

        backend.value_and_grad(loss, embedding)

    rows = []
    configs = [(False, False, False), (False, True, False), (False, True, True), (True, False, False),
               (True, True, True)]  # (conv TF32, cudnn.benchmark, fused attention)
    for conv_tf32, autotune, fused in configs:
        if True:
            torch.backends.cudnn.allow_tf32 = conv_tf32
            torch.backends.cudnn.benchmark = autotune
            backend.fused_attention = fused
            row = {"conv_tf32": conv_tf32, "cudnn_benchmark": autotune,
                   "attention": "fused (SDPA) where unrecorded" if fused else "explicit"}
            for name, fn in (("forward_b1", lambda: forward(1)), ("forward_b2", lambda: forward(2)),
                             ("ito_fwd_bwd_b1", ito_iteration)):
                row[f"{name}_ms"], row[f"{name}_peak_gib"] = timed(fn, args.repeats)
            rows.append(row)
            print(json.dumps(row), flush=True)
    head = ["conv TF32", "cudnn.benchmark", "attention", "fwd b1 ms", "fwd b2 ms", "ITO fwd+bwd ms", "fwd b2 GiB", "ITO GiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        lines.append(f"| {r['conv_tf32']} | {r['cudnn_benchmark']} | {r['attention']} | {r['forward_b1_ms']:.1f} | {r['forward_b2_ms']:.1f} | "
                     f"{r['ito_fwd_bwd_b1_ms']:.1f} | {r['forward_b2_peak_gib']:.2f} | {r['ito_fwd_bwd_b1_peak_gib']:.2f} |")
    table = "\n".join(lines)
    print(f"\n{torch.cuda.get_device_name()}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}\n"
          f"{table}")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "profile_unet.json").write_text(json.dumps(rows, indent=1))
        (args.out / "profile_unet.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
