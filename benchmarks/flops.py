"""The compute floor: FLOPs of SuppressEOT's steps and whole runs against diffusers' plain generation (no GPU).

Counts the FLOPs of every matmul, convolution and attention (PyTorch's own per-op formulas, torch.utils.flop_counter;
backward passes included) of each repeated step on a model's real shapes, with nothing computed (FakeTensorMode: a
GPU is not needed, and SDXL counts in seconds), then multiplies by how often each step runs in bench.py's modes
(official defaults: 50 DDIM steps, SWR from step 10, 10 ITO iterations on steps 10-19, 10 null-text iterations a
step) and in diffusers' plain generation of one image. With ``--bench`` (bench.py's bench.json, any number),
divides by the measured seconds: achieved TFLOP/s per implementation and mode and its share of the card's peak.

    python benchmarks/flops.py --model-dir .bench/random-sd-v1 [--bench DIR/bench.json ...] [--out DIR]

The step definitions are shared with benchmarks/probes/profile_steps.py, which times them on a GPU.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from suppresseot.algorithm.attention import ALL_PLACES, AttentionRecorder  # noqa: E402
from suppresseot.config import SuppressionSettings  # noqa: E402

# dense tensor-core peaks (TFLOP/s) of the SXM cards this project is measured on: bf16/fp16, and TF32 for fp32
PEAKS = {"H100": {"bf16": 989.0, "fp32": 494.0}, "H200": {"bf16": 989.0, "fp32": 494.0}}
# what each bench.py implementation computes in; faithful and Jittor mix TF32 convolutions with full-fp32 matmuls
# (the official arithmetic), which have no single peak: no share is given for them
IMPL_PRECISION = {"fast": "bf16", "compiled": "bf16", "diffusers": "bf16"}
# the prompt every counted step is conditioned on: start token, 8 words, end token and padding (77 ids)
PROMPT_IDS = [49406] + [320] * 8 + [49407] * 68
# bench.py's approach entries that are one of its modes ("generated" / "real" kind)
APPROACH_MODES = {("suppresseot", "generated"): "gen10", ("suppresseot", "real"): "real_nt",
                  ("swr-only", "generated"): "gen0"}


def make_steps(backend, places=ALL_PLACES) -> dict:
    """The repeated steps as functions of tensors and numbers (as the pipeline hands them to CUDA graphs), with
    their inputs: seeded latents, a target and a prompt's embedding of the model's family.

    - ``null_text_iteration``: UNet forward + backward to the unconditional embedding, batch 1;
    - ``ito_iteration``: the same through the recorded maps, ending after the last block that holds them;
    - ``denoising_step_two_passes``: both branches as faithful runs them (two batch-2 passes, the conditional
      one recorded); ``denoising_step_one_pass``: the same as one batch-4 pass, its conditional half recorded;
    - ``diffusers_guided_step``: one batch-2 pass, nothing recorded (what a plain generation pays a step).
    ``places``: the blocks whose maps ITO reads (``--ito-blocks``)."""
    torch.manual_seed(0)
    side = backend.latent_size
    latent = torch.randn(1, 4, side, side, device=backend.device)
    target = torch.randn(1, 4, side, side, device=backend.device)
    text = backend.encode_text([PROMPT_IDS] * len(backend.text_encoders))
    resolution = backend.family.maps_resolution

    def null_text(e, latent, target, t):
        def loss(x):
            return ((backend.unet(latent, t, x) - target) ** 2).mean(), None
        value, _, grad = backend.value_and_grad(loss, e)
        return e - 1e-3 * grad, value

    def ito(e, latent, t):
        def loss(x):
            recorder = AttentionRecorder(resolution, places=places)
            backend.record_attention(latent, t, x, recorder)  # as the pipeline's ITO: up to the maps
            cross = recorder.aggregate(True, places).double()
            self_ = recorder.aggregate(False, places).double()
            return (cross ** 2).sum() + (self_ ** 2).sum(), None
        value, _, grad = backend.value_and_grad(loss, e)
        return e - grad, value

    def two_passes(latent, text, edited, t):
        with torch.no_grad():
            latents = torch.cat([latent, latent])
            eps_u = backend.unet(latents, t, torch.cat([text, text]))
            eps_c = backend.unet(latents, t, torch.cat([text, edited]), recorder=AttentionRecorder(resolution, batch=2))
            return latents + 0.1 * (eps_c - eps_u)

    def one_pass(latent, text, edited, t):
        with torch.no_grad():
            latents = torch.cat([latent] * 4)
            recorder = AttentionRecorder(resolution, batch=2, skip=2)
            eps = backend.unet(latents, t, torch.cat([text, text, text, edited]), recorder=recorder)
            return latents[:2] + 0.1 * (eps[2:] - eps[:2])

    def diffusers_step(latent, text, t):
        with torch.no_grad():
            eps = backend.unet(torch.cat([latent, latent]), t, torch.cat([text, text]))
            return latent + 0.1 * (eps[1:] - eps[:1])

    return {"null_text_iteration": (null_text, (text, latent, target, 500)),
            "ito_iteration": (ito, (text, latent, 500)),
            "denoising_step_two_passes": (two_passes, (latent, text, text, 500)),
            "denoising_step_one_pass": (one_pass, (latent, text, text, 500)),
            "diffusers_guided_step": (diffusers_step, (latent, text, 500))}


def flops_of(fn, inputs, fake: bool = False) -> int:
    """FLOPs of one call, by PyTorch's per-op formulas (torch.utils.flop_counter), in a dispatch mode that adds them
    up (FlopCounterMode's module tracking refuses ``autograd.grad`` to a leaf, the embedding). ``fake``: tensors
    carry shapes only (FakeTensorMode), so nothing is computed."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class Counting(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:  # registered with shapes taken from the tensors (flop_counter's shape_wrapper)
                Counting.total += formula(*args, **kwargs, out_val=out)
            return out

    with FakeTensorMode(allow_non_fake_inputs=True) if fake else contextlib.nullcontext() as mode:
        if fake:
            inputs = [mode.from_tensor(x) if isinstance(x, torch.Tensor) else x for x in inputs]
        with Counting():
            fn(*inputs)
    return Counting.total


@dataclass
class StepFlops:
    """FLOPs of each unit a run is made of (batch 1 unless named)."""
    text_encoding: int
    vae_encode: int
    vae_decode: int
    conditional_pass: int  # an inversion step, null-text's conditional pass: batch 1, no grad
    reference_maps: int  # ITO's reference: batch 1 to the maps, no grad
    ito_iteration: int
    null_text_iteration: int
    guided_step: int  # batch 2, nothing recorded: diffusers' step, null-text's denoising step, the unconditional pass
    denoising_step_two_passes: int
    denoising_step_one_pass: int


def count_steps(backend, fake: bool = True, places=ALL_PLACES) -> StepFlops:
    steps = make_steps(backend, places)
    counted = {name: flops_of(fn, inputs, fake) for name, (fn, inputs) in steps.items()}
    text, latent = steps["ito_iteration"][1][:2]
    resolution = backend.family.maps_resolution
    image = torch.zeros(1, 3, backend.image_size, backend.image_size, dtype=backend.vae_dtype)

    def conditional(latent, text):
        with torch.no_grad():
            return backend.unet(latent, 500, text)

    def reference(latent, text):
        with torch.no_grad():
            backend.record_attention(latent, 500, text, AttentionRecorder(resolution, places=places))

    def vae(method, x):
        with torch.no_grad():
            return getattr(backend.vae, method)(x)

    return StepFlops(
        text_encoding=flops_of(lambda: backend.encode_text([PROMPT_IDS] * len(backend.text_encoders)), (), False),
        vae_encode=flops_of(vae, ("encode", image), fake),
        vae_decode=flops_of(vae, ("decode", latent.to(backend.vae_dtype)), fake),
        conditional_pass=flops_of(conditional, (latent, text), fake),
        reference_maps=flops_of(reference, (latent, text), fake),
        ito_iteration=counted["ito_iteration"],
        null_text_iteration=counted["null_text_iteration"],
        guided_step=counted["diffusers_guided_step"],
        denoising_step_two_passes=counted["denoising_step_two_passes"],
        denoising_step_one_pass=counted["denoising_step_one_pass"])


def run_flops(f: StepFlops, steps: int = 50, first: int = 10, ito_steps: int = 10, iterations: int = 10,
              inner: int = 10, repeated_once: bool = False) -> dict:
    """FLOPs of diffusers' plain generation of one image and of bench.py's four modes (both images), by counts:
    faithful's batches, or with ``repeated_once`` a backend that computes once what those compute twice
    (``repeated_samples_once``: the ``first`` steps before SWR for one branch, null-text's closing pass for the
    unconditional half)."""
    both = steps - first if repeated_once else steps  # steps that denoise both branches; the rest one branch

    def sampling(ito: bool) -> int:
        return f.text_encoding + both * f.denoising_step_two_passes + (steps - both) * (
            f.denoising_step_two_passes // 2) + 2 * f.vae_decode + (
            ito_steps * (f.reference_maps + iterations * f.ito_iteration) if ito else 0)

    inversion = 2 * f.text_encoding + f.vae_encode + f.vae_decode + steps * f.conditional_pass
    closing = f.conditional_pass if repeated_once else f.guided_step
    null_text = steps * (f.conditional_pass + inner * f.null_text_iteration + closing)
    return {"diffusers": 2 * f.text_encoding + steps * f.guided_step + f.vae_decode,
            "gen0": f.text_encoding + sampling(False), "gen10": f.text_encoding + sampling(True),
            "real_npi": inversion + sampling(True), "real_nt": inversion + null_text + sampling(True)}


def measured(bench: dict) -> list[tuple[str, str, float]]:
    """(implementation, mode, seconds) of a bench.json: its implementations' modes (not the official code's, whose
    passes differ) and its approaches that are one of the modes; diffusers' fastest plain generation as
    ("diffusers", "diffusers")."""
    rows, plain = [], []
    for impl, modes in bench.get("results", {}).items():
        if impl == "official":  # it computes more: whole UNet passes for ITO, no early end at the maps
            continue
        for mode, r in modes.items():
            if "total_s" not in r:
                continue
            if impl == "diffusers":
                plain.append(r["total_s"])
            else:
                rows.append((impl, mode, r["total_s"]))
    for name, kinds in bench.get("approaches", {}).items():
        for kind, r in kinds.items():
            mode = APPROACH_MODES.get((name, kind))
            if mode and "total_s" in r:
                rows.append((f"{bench['settings'].get('approach_impl', 'fast')} ({name})", mode, r["total_s"]))
    if plain:
        rows.insert(0, ("diffusers", "diffusers", min(plain)))
    return rows


def card_peak(device: str, precision: str | None) -> float | None:
    """The dense peak TFLOP/s of the card named ``device`` in ``precision`` ("bf16", "fp32"), if known."""
    return next((peaks[precision] for card, peaks in PEAKS.items() if card in device and precision), None)


def peak_of(device: str, impl: str) -> float | None:
    return card_peak(device, next((p for key, p in IMPL_PRECISION.items() if impl.startswith(key)), None))


def main(argv=None) -> dict:
    from suppresseot.backends.torch_backend import TorchBackend

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path, required=True, help="a diffusers folder (SD 1/2, SDXL; any weights)")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--bench", type=Path, nargs="*", default=[], help="bench.py's bench.json files to divide by")
    p.add_argument("--ito-blocks", default="up,down,mid",
                   help="the UNet blocks whose maps ITO reads, as suppress-eot's --ito-blocks (default: all)")
    p.add_argument("--compute", action="store_true", help="compute for real instead of with fake tensors (slow)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    for path in args.bench:
        if not path.is_file():
            p.error(f"--bench {path}: no such file (give bench.py's bench.json)")
    if not (args.model_dir / "model_index.json").is_file():
        p.error(f"--model-dir {args.model_dir}: not a diffusers folder (no model_index.json)")
    # bf16 weights: half the memory, the same FLOPs (nothing is computed unless --compute)
    backend = TorchBackend(args.model_dir, device="cpu", dtype="float32" if args.compute else "bfloat16",
                           fused_attention=True)
    places = tuple(p.strip() for p in args.ito_blocks.split(","))
    f = count_steps(backend, fake=not args.compute, places=places)
    defaults = SuppressionSettings()  # the official tau and ITO steps, as a run computes them
    counts = (args.steps, defaults.first_step(args.steps), len(defaults.ito_steps(args.steps)), defaults.iterations)
    runs = run_flops(f, *counts)
    runs_once = run_flops(f, *counts, repeated_once=True)
    base = runs["diffusers"]
    lines = [f"{args.model_dir} ({backend.family.name}, {backend.latent_size}x{backend.latent_size} latents), "
             f"{args.steps} steps, ITO reads the {','.join(places)} blocks", "", "| step | GFLOP |", "| --- | --- |"]
    lines += [f"| {name} | {value / 1e9:.1f} |" for name, value in asdict(f).items()]
    lines += ["", "| run | TFLOP | x diffusers' generation | computing repeated samples once |", "| --- | --- | --- | --- |"]
    lines += [f"| {name} | {value / 1e12:.2f} | {value / base:.2f}x | {runs_once[name] / base:.2f}x |"
              for name, value in runs.items()]
    report = {"model_dir": str(args.model_dir), "family": backend.family.name, "steps": args.steps, "ito_blocks": places,
              "step_flops": asdict(f), "run_flops": runs, "run_flops_repeated_once": runs_once, "measured": []}
    for path in args.bench:
        bench = json.loads(path.read_text())
        device = bench.get("device", "")
        lines += ["", f"{path} ({device}, commit {bench.get('git_commit', '?')[:7]})", "",
                  "| implementation | mode | s | TFLOP/s | share of peak | x diffusers' time | x diffusers' FLOPs |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        rows = measured(bench)
        plain = next((s for impl, _, s in rows if impl == "diffusers"), None)
        backends = bench.get("backends", {})
        for impl, mode, seconds in rows:
            # a backend that computes repeated samples once does less (bench.json says so since 2026-12-07)
            compact = backends.get(impl.split(" ")[0], {}).get("repeated_samples_once", False)
            work = (runs_once if compact else runs)[mode]
            tflops = work / seconds / 1e12
            peak = peak_of(device, impl)
            lines.append(f"| {impl} | {mode} | {seconds:.2f} | {tflops:.0f} | "
                         f"{'–' if peak is None else f'{100 * tflops / peak:.0f}%'} | "
                         f"{'–' if plain is None else f'{seconds / plain:.2f}x'} | {work / base:.2f}x |")
            report["measured"].append({"bench": str(path), "device": device, "impl": impl, "mode": mode,
                                       "seconds": seconds, "tflops": tflops, "peak": peak, "flops": work})
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "flops.json").write_text(json.dumps(report, indent=1))
        (args.out / "flops.md").write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
