"""Benchmark this project against the official SuppressEOT code: time, peak memory and final latents.

One process builds (or reuses) a random-weight Stable Diffusion v1 folder, so every implementation
loads the same weights with no download, then runs each implementation on each mode:

- ``official``: the unmodified official code (``--reference DIR``, a snapshot of github
  sen-mao/SuppressEOT kept in an ignored folder), driven in-process as shared/bench/ref_bench.py does;
- ``faithful``: this project, torch backend, default settings (fp32; on a GPU: fused SDPA on the layers
  whose maps are not read, NHWC convolutions, CUDA graphs, offloaded text encoder and VAE);
- ``explicit``: ``faithful`` with every layer's attention explicit and NCHW convolutions, as the official
  code computes (the faithful default before 2026-12-01), to show what fused attention and NHWC change;
- ``eager``: ``faithful`` with CUDA graphs off (on by default on a GPU), to show what they save and that
  they change no result;
- ``fast``: this project, torch backend, ``fast=True`` in bf16 (or fp16, ``--fast-dtype``), CUDA graphs on;
- ``compiled``: ``fast`` with ``compile_unet=True`` (``--compile``: the UNet's ResNet blocks and feed-forward
  layers run through torch.compile in every call; compilation happens in the untimed warm-up and is reported under
  ``setup_s``);
- ``jittor``: this project, jittor backend, fp32 (``--backends torch,jittor``; on CUDA its steps are recorded
  with jittor.vcompiler, the backend's default: ``--no-jittor-static-graphs`` runs them eagerly); skipped with its
  reason when jittor cannot run here;
- ``diffusers``: diffusers' own plain pipeline (``StableDiffusionXLPipeline`` / ``StableDiffusionPipeline`` as
  the folder says) generating one image, bf16, SDPA, the folder's DDIM scheduler: the baseline the other
  families are held to (generated modes only; ``x diffusers`` = ours s / its fastest generation s, same run).

``--approaches LIST`` (or ``all``: those that run on the model's family) also times each approach of
``suppress-eot approaches`` -- SuppressEOT, its ablations and the baselines (diffusers' pipelines on the same loaded
model) -- on one generated image (the gen prompt) and one photo (null-text inversion where the approach edits this
project's inversion), in the implementation ``--approach-impl`` (default ``fast``), each after an untimed 2-step
warm-up; "edited s" leaves out a baseline's separate original (SuppressEOT makes both in one pass).

``--size`` picks the random model's shape: ``sd-v1`` (SD v1.4), ``sdxl`` (SDXL base, 1024 px), ``sd2.1``
(SD 2.1, 768 px, v-prediction), or the tiny CPU versions ``tiny``, ``tiny-sdxl``, ``tiny-sd2``.

Modes: ``gen0`` (generated, ITO off), ``gen10`` (generated, 10 ITO iterations per step), ``real_npi``
and ``real_nt`` (a real photo, negative-prompt / null-text inversion, then SWR + ITO).

Before each timed image an implementation runs an untimed 2-step image of the same mode, so every timed
image is the second of its kind in its process: with CUDA graphs it replays the graphs the warm-up captured
(the captures' time, the first image's extra cost, is ``setup_s[impl]["graph_capture"]``; a timed run that
captured anyway says so under ``graph_capture_s``), and its peak memory holds the graphs its kind needs.

Implementations run one after another, each loaded on its own and freed before the next, so the
peak-memory numbers hold only that implementation's weights and activations. Results are written
after every (implementation, mode), so a killed run keeps what finished. See docs/benchmarks.md.

    python benchmarks/bench.py --reference .reference                      # GPU, SD-v1 shape, 50 steps
    python benchmarks/bench.py --size tiny --steps 4 --null-text-steps 2 \\
        --reference .reference --out /tmp/bench-tiny                        # CPU smoke benchmark
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import importlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
import traceback
import types
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the benchmark machine has no network; never try the hub

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if (REPO / "src" / "suppresseot").is_dir():  # measure this checkout, installed or not
    sys.path.insert(0, str(REPO / "src"))

from suppresseot import approaches as approach_table  # noqa: E402
from suppresseot.api import SuppressEOT  # noqa: E402
from suppresseot.config import InversionSettings, SuppressionSettings  # noqa: E402
from suppresseot.errors import BackendUnavailable  # noqa: E402
from suppresseot.random_model import save_random_family, save_random_model  # noqa: E402
from suppresseot.study.memory import MemorySampler  # noqa: E402

DATA = REPO / "src" / "suppresseot" / "data"
MODES = {  # name: (kind, inversion, ITO iterations per step)
    "gen0": ("generated", None, 0),
    "gen10": ("generated", None, 10),
    "real_npi": ("real", "npi", 10),
    "real_nt": ("real", "nt", 10),
}
IMPLS = ("diffusers", "official", "faithful", "explicit", "eager", "fast", "compiled", "jittor")  # run order
# --size: (family, random_model size, latent side, extra); sd-v1/tiny go through save_random_model
FAMILY_SIZES = {"sdxl": ("sdxl", "sdxl", 128, {}), "sd2.1": ("sd2", "sd2.1", 96, {"prediction_type": "v_prediction"}),
                "tiny-sdxl": ("sdxl", "tiny", 16, {}), "tiny-sd2": ("sd2", "tiny", 16, {"prediction_type": "v_prediction"})}
# Stages grouped so the official code's timers (which wrap whole functions) line up with ours.
STAGE_GROUPS = {"inversion_text_encoding": "inversion", "vae_encode": "inversion", "ddim_inversion": "inversion",
                "null_text": "null_text", "text_encoding": "sampling", "swr_ito_sampling": "sampling",
                "vae_decode": "sampling", "sampling": "sampling"}
GIB = 2 ** 30


@dataclass
class Settings:
    """The run-time settings every implementation gets (the official defaults unless shortened)."""

    steps: int = 50
    null_text_steps: int = 10
    tau: float = 0.8  # official cross_retain_steps = 1 - tau
    max_step_to_erase: int = 20
    alpha: float = 1.0
    guidance_scale: float = 7.5
    seed: int = 2
    gen_prompt: str = "A dog in Van Gogh Style"
    gen_tokens: tuple = (4, 5, 6)
    photo: str = str(DATA / "study" / "examples" / "A man with a beard wearing glasses and a hat in blue shirt.jpg")
    photo_tokens: tuple = (7,)
    ito_blocks: tuple = ("up", "down", "mid")  # ours only (--ito-blocks); the official code reads all

    @property
    def photo_prompt(self) -> str:  # the shipped photos are named after their prompts
        return Path(self.photo).stem


# --- device helpers: no-ops on the CPU ----------------------------------------------------------
def on_cuda(device: str) -> bool:
    return device.startswith("cuda")


def sync(device: str) -> None:
    if on_cuda(device):
        torch.cuda.synchronize()


def free(device: str) -> None:
    gc.collect()
    if on_cuda(device):
        torch.cuda.empty_cache()


# --- the official code --------------------------------------------------------------------------
def stub_if_missing(module: str, *names: str) -> list[str]:
    """Stand in for a module the official code imports but the default method never uses.

    ptp_utils imports cv2 for figure captions and wo_utils scipy's cdist for a non-default SWR
    method; neither is installed on the benchmark machine. A stub raises if it is ever called.
    """
    try:
        importlib.import_module(module)
        return []
    except ImportError:
        pass

    def missing(*_a, **_k):
        raise ImportError(f"{module} is not installed (stubbed by the benchmark)")

    parts = module.split(".")
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        sys.modules[name] = types.ModuleType(name)
        if i > 1:
            setattr(sys.modules[".".join(parts[:i - 1])], parts[i - 1], sys.modules[name])
    for name in names:
        setattr(sys.modules[module], name, missing)
    return [module]


class Official:
    """The unmodified official code, run in-process on our random weights.

    Its settings are module constants and arguments of functions it calls itself, so they are set by
    assignment (NUM_DDIM_STEPS) and by wrapping (null-text inner steps); the wrappers also time the
    stages and keep the final latents. Figures are not drawn: that is I/O, not the method.
    """

    name, measures_torch_memory = "official", True

    def __init__(self, ref_dir: Path, model_dir: Path, device: str, settings: Settings):
        sys.path.insert(0, str(ref_dir))
        self.stubbed = stub_if_missing("cv2") + stub_if_missing("scipy.spatial.distance", "cdist")
        import suppress_eot_w_nulltext as S
        from diffusers import StableDiffusionPipeline
        from utils import null_text_inversion as NTI
        from utils import ptp_utils

        self.S, self.NTI, self.settings, self.device = S, NTI, settings, device
        self.pipe = StableDiffusionPipeline.from_pretrained(
            model_dir, scheduler=S.scheduler, safety_checker=None,  # the folder is fp32, as the official ran
            feature_extractor=None, requires_safety_checker=False).to(device)
        self.stages, self.latents, self.null_text_steps = {}, None, settings.null_text_steps
        self.workdir = tempfile.mkdtemp(prefix="suppresseot-official-")  # it writes result folders into cwd

        def timed(stage, fn):
            def wrapper(*args, **kwargs):
                sync(device)
                start = time.perf_counter()
                out = fn(*args, **kwargs)
                sync(device)
                self.stages[stage] = self.stages.get(stage, 0.0) + time.perf_counter() - start
                return out
            return wrapper

        null_optimization, latent2image = NTI.NullInversion.null_optimization, ptp_utils.latent2image

        def null_text(inv, latents, _num_inner_steps, epsilon):  # official invert() hard-codes 10 steps
            return null_optimization(inv, latents, self.null_text_steps, epsilon)

        def keep_latents(vae, latents):
            self.latents = latents.detach().float().cpu().numpy()
            return latent2image(vae, latents)

        self.restore = [(S, "text2image_ldm_stable", S.text2image_ldm_stable),
                        (NTI.NullInversion, "ddim_inversion", NTI.NullInversion.ddim_inversion),
                        (NTI.NullInversion, "null_optimization", null_optimization),
                        (ptp_utils, "latent2image", latent2image)]
        S.text2image_ldm_stable = timed("sampling", S.text2image_ldm_stable)
        NTI.NullInversion.ddim_inversion = timed("ddim_inversion", NTI.NullInversion.ddim_inversion)
        NTI.NullInversion.null_optimization = timed("null_text", null_text)
        ptp_utils.latent2image = keep_latents
        S.show_cross_attention = S.show_self_attention = ptp_utils.view_images = lambda *a, **k: None

    def close(self):
        """Undo the wrappers (they hold this object, and with it the pipeline) and drop the pipeline."""
        for owner, name, fn in self.restore:
            setattr(owner, name, fn)
        self.pipe = None

    def run(self, mode: str, steps: int, null_text_steps: int):
        kind, inversion, iterations = MODES[mode]
        s = self.settings
        self.S.NUM_DDIM_STEPS = self.NTI.NUM_DDIM_STEPS = steps
        self.null_text_steps, self.stages, self.latents = null_text_steps, {}, None
        # null-text backward leaves .grad on the UNet weights; a fresh process would not have them
        self.pipe.unet.zero_grad(set_to_none=True)
        real = kind == "real"
        args = argparse.Namespace(
            type="Real-Image" if real else "Generated-Image", inversion=(inversion or "nt").upper(),
            sd_version="sd_1_4", seed=s.seed, prompt=s.photo_prompt if real else s.gen_prompt,
            image_path=s.photo, token_indices=[list(s.photo_tokens if real else s.gen_tokens)],
            cross_retain_steps=[round(1 - s.tau, 6)], alpha=[s.alpha], max_step_to_erase=s.max_step_to_erase,
            iter_each_step=iterations, lambda_retain=1.0, lambda_erase=-0.5, lambda_self_retain=1.0,
            lambda_self_erase=-0.5, method="soft-weight")
        with contextlib.chdir(self.workdir), contextlib.redirect_stdout(sys.stderr):
            (self.S.main if real else self.S.main_gen)(args, self.pipe)
        return dict(self.stages), self.latents, {}


# --- this project -------------------------------------------------------------------------------
class Ours:
    """This project through its public API (the same calls a user makes)."""

    def __init__(self, name: str, model_dir: Path, backend: str, device: str, dtype: str, fast: bool,
                 settings: Settings, cuda_graphs: bool | None = None, explicit: bool = False,
                 compile_unet: bool = False, static_graphs: bool | None = None):
        self.name, self.settings = name, settings
        self.measures_torch_memory = backend == "torch"  # jittor has its own allocator
        self.model = SuppressEOT.from_pretrained(model_dir, backend=backend, device=device, dtype=dtype, fast=fast,
                                                 cuda_graphs=cuda_graphs, progress=False,
                                                 fused_attention=False if explicit else None,
                                                 compile_unet=compile_unet or None,
                                                 static_graphs=static_graphs)
        if explicit:
            self.model.backend.use_channels_last(False)

    def run(self, mode: str, steps: int, null_text_steps: int):
        kind, inversion, iterations = MODES[mode]
        s = self.settings
        edit = SuppressionSettings(alpha=s.alpha, tau=s.tau, iterations=iterations,
                                   max_step_to_erase=s.max_step_to_erase, ito_blocks=s.ito_blocks)
        if kind == "generated":
            r = self.model.generate(s.gen_prompt, list(s.gen_tokens), seed=s.seed, settings=edit, steps=steps,
                                    guidance_scale=s.guidance_scale)
        else:
            r = self.model.edit(s.photo, s.photo_prompt, list(s.photo_tokens), settings=edit, steps=steps,
                                inversion=InversionSettings(method=inversion, inner_steps=null_text_steps),
                                guidance_scale=s.guidance_scale)
        return dict(r.seconds), r.final_latents, dict(r.memory)


class ApproachRun:
    """One approach (``suppress-eot approaches``) on a loaded implementation of ours: its kinds are the modes."""

    measures_torch_memory = True

    def __init__(self, ours: Ours, approach: str):
        self.ours, self.name = ours, approach

    def run(self, kind: str, steps: int, null_text_steps: int):
        s, model = self.ours.settings, self.ours.model
        edit = SuppressionSettings(alpha=s.alpha, tau=s.tau, max_step_to_erase=s.max_step_to_erase,
                                   ito_blocks=s.ito_blocks)  # SuppressEOT's defaults; baselines take their own
        if kind == "generated":
            r = model.generate(s.gen_prompt, list(s.gen_tokens), seed=s.seed, settings=edit, steps=steps,
                               guidance_scale=s.guidance_scale, approach=self.name)
        else:
            r = model.edit(s.photo, s.photo_prompt, list(s.photo_tokens), settings=edit, steps=steps,
                           inversion=InversionSettings(method="nt", inner_steps=null_text_steps),
                           guidance_scale=s.guidance_scale, approach=self.name)
        return dict(r.seconds), r.final_latents, dict(r.memory)


def time_approaches(args, settings: Settings, report: dict, out: Path, write) -> None:
    """Each approach of ``--approaches`` on one generated image and one photo, on one load of ``--approach-impl``."""
    results = report["approaches"] = {}
    runner = load(args.approach_impl, args, settings)
    family = runner.model.family.name
    names = [a for a in args.approaches if family in approach_table.get(a).families]
    report["approaches_left_out"] = [a for a in args.approaches if a not in names]
    for name in names:
        run = ApproachRun(runner, name)
        for kind in approach_table.get(name).kinds:
            print(f"[bench] approach {name} {kind} ...", file=sys.stderr, flush=True)
            try:
                if not args.no_warmup:
                    run.run(kind, 2, 1)
                r, latents = measure(run, kind, settings, args.device)
                sampled_apart = r["stages_s"].get("sampling_original", 0.0)  # a baseline's original, made alone
                r["edited_s"] = r["total_s"] - sampled_apart
                results.setdefault(name, {})[kind] = r
                np.save(out / "latents" / f"approach-{name}-{kind}.npy", latents)
            except Exception as exc:  # noqa: BLE001 - one failing approach must not stop the others
                traceback.print_exc()
                results.setdefault(name, {})[kind] = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
            write()
    runner.model.backend.release_cache(graphs=True)
    del runner
    free(args.device)


def approaches_markdown(report: dict) -> list[str]:
    """The approaches' table: seconds for both images and for the edited one alone, peak memory, x diffusers."""
    rows = report.get("approaches")
    if not rows:
        return []
    base = min((r["total_s"] for r in report["results"].get("diffusers", {}).values() if "total_s" in r), default=None)
    lines = ["", f"Approaches in the {report['settings'].get('approach_impl')} implementation (generated: the gen prompt; "
             "photo: the photo, null-text inversion where the approach edits this project's inversion). *both*: the "
             "original and the edited image; *edited*: without a baseline's separately sampled original; "
             "x diffusers: edited s / diffusers' plain generation s (same run).", "",
             "| approach | generated both s | generated edited s | x diffusers | generated peak GiB | photo both s | "
             "photo edited s | photo peak GiB |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    errors = []
    for name, kinds in rows.items():
        cells = [name]
        for kind in ("generated", "real"):
            r = kinds.get(kind, {})
            if "error" in r:
                errors.append(f"- {name} {kind}: {r['error']}")
            ratio = [fmt(r["edited_s"] / base, suffix="x") if base and "edited_s" in r else "–"] if kind == "generated" else []
            cells += [fmt(r.get("total_s")), fmt(r.get("edited_s"))] + ratio + [fmt(peak_bytes(r), scale=GIB)]
        lines.append("| " + " | ".join(cells) + " |")
    if report.get("approaches_left_out"):
        lines.append(f"\nNo pipeline for this family: {', '.join(report['approaches_left_out'])}.")
    return lines + (["", "Not measured:"] + errors if errors else [])


class Diffusers:
    """diffusers' own pipeline for the folder, plain: bf16 weights, its default (SDPA) attention, one image
    generated and decoded per run. Real-photo modes have no such baseline."""

    name, measures_torch_memory = "diffusers", True

    def __init__(self, model_dir: Path, device: str, dtype: str, settings: Settings):
        from diffusers import DiffusionPipeline

        self.settings, self.latents = settings, None
        self.pipe = DiffusionPipeline.from_pretrained(model_dir, torch_dtype=getattr(torch, dtype)).to(device)
        self.pipe.set_progress_bar_config(disable=True)

    def run(self, mode: str, steps: int, null_text_steps: int):
        if MODES[mode][0] != "generated":
            raise ValueError("diffusers' plain pipeline is the baseline for generated images only")
        s = self.settings

        def keep(pipe, i, t, kwargs):
            self.latents = kwargs["latents"].float().cpu().numpy()
            return kwargs

        start = time.perf_counter()
        self.pipe(s.gen_prompt, num_inference_steps=steps, guidance_scale=s.guidance_scale, output_type="np",
                  generator=torch.Generator().manual_seed(s.seed), callback_on_step_end=keep)
        return {"sampling": time.perf_counter() - start}, self.latents, {}

    def close(self):
        self.pipe = None


def load(impl: str, args, settings: Settings):
    if impl == "diffusers":
        return Diffusers(args.model_dir, args.device, args.fast_dtype, settings)
    if impl == "official":
        return Official(args.reference, args.model_dir, args.device, settings)
    backend = "jittor" if impl == "jittor" else "torch"
    fast = impl in ("fast", "compiled")
    return Ours(impl, args.model_dir, backend, args.device, args.fast_dtype if fast else "float32", fast, settings,
                cuda_graphs=False if impl == "eager" else None, explicit=impl == "explicit",
                compile_unet=impl == "compiled", static_graphs=args.jittor_static_graphs if impl == "jittor" else None)


def measure(runner, mode: str, settings: Settings, device: str) -> tuple[dict, np.ndarray]:
    """One timed run: wall-clock total, per-stage seconds, whole-run peak memory, final latents."""
    free(device)
    if on_cuda(device):
        torch.cuda.reset_peak_memory_stats()
    sync(device)
    sampler = MemorySampler(device).start()  # device-level: the one memory figure Jittor has too
    start = time.perf_counter()
    try:
        stages, latents, stage_memory = runner.run(mode, settings.steps, settings.null_text_steps)
        sync(device)
    finally:
        trace = sampler.stop()
    total = time.perf_counter() - start
    peak = {"allocated": None, "reserved": None}
    if on_cuda(device) and runner.measures_torch_memory:
        # our StageTimer resets the peak counters at each stage, so the whole-run peak is the largest
        # of the per-stage peaks and what the counters hold now
        for key, read in (("allocated", torch.cuda.max_memory_allocated), ("reserved", torch.cuda.max_memory_reserved)):
            peak[key] = max([read()] + [m[key] for m in stage_memory.values() if m and m.get(key) is not None])
    # per stage too, so a run's table says where its peak is (e.g. which stage to look at for the 0.6x target)
    stage_peaks = {stage: {k: m.get(k) for k in ("allocated", "reserved")}
                   for stage, m in stage_memory.items() if m and m.get("allocated") is not None}
    groups: dict = {}
    for stage, seconds in stages.items():
        group = STAGE_GROUPS.get(stage, stage)
        groups[group] = groups.get(group, 0.0) + seconds
    return {"total_s": total, "stages_s": stages, "stage_groups_s": groups, "peak_allocated_bytes": peak["allocated"],
            "peak_reserved_bytes": peak["reserved"], "nvml_peak_used_bytes": trace.peak,
            "nvml_baseline_used_bytes": trace.baseline, "nvml": trace.status,
            "stage_peak_bytes": stage_peaks, "latents_shape": list(np.shape(latents))}, latents


def warm_up(runner, mode: str) -> float:
    """An untimed 2-step image of ``mode`` just before its timed one, so compiles, autotuning and graph
    captures stay out, and the timed image is the second of its kind in the process: it holds (and its peak
    memory counts) the graphs that its kind and the modes timed before it need, not those of later modes."""
    start = time.perf_counter()
    runner.run(mode, 2, 1)
    return time.perf_counter() - start


def graph_capture_seconds(runner) -> float | None:
    """Seconds the process has spent capturing CUDA graphs so far (ours on a GPU), else None."""
    info = runner.model.backend.info() if hasattr(runner, "model") else {}
    return info["graph_capture_s"] if info.get("graph_steps") else None


# --- summary and output -------------------------------------------------------------------------
def relative(a, b) -> float | None:
    if a is None or b is None:
        return None
    b = np.asarray(b, np.float64)
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


def peak_bytes(r: dict):
    """torch's allocator peak, or for jittor the live bytes at its allocators' peak (--jittor-memory)."""
    return r.get("peak_allocated_bytes") or r.get("memory_probe_peak_bytes")


def summarize(results: dict, latents: dict, modes: list[str]) -> dict:
    """Per mode: official/ours time (speedup), ours/official peak memory, and final-latent differences."""
    summary = {}
    for mode in modes:
        row = {}
        ref = results.get("official", {}).get(mode, {})
        for impl in IMPLS:
            r = results.get(impl, {}).get(mode)
            if not r or "total_s" not in r:
                continue
            row[impl] = {"total_s": r["total_s"], "peak_allocated_bytes": peak_bytes(r)}
            if impl != "official" and "total_s" in ref:
                row[impl]["speedup"] = ref["total_s"] / r["total_s"]
                if peak_bytes(r) and ref.get("peak_allocated_bytes"):
                    row[impl]["memory_ratio"] = peak_bytes(r) / ref["peak_allocated_bytes"]
                if r.get("peak_reserved_bytes") and ref.get("peak_reserved_bytes"):
                    row[impl]["reserved_ratio"] = r["peak_reserved_bytes"] / ref["peak_reserved_bytes"]
                row[impl]["latent_rel_diff_vs_official"] = relative(latents.get((impl, mode)),
                                                                    latents.get(("official", mode)))
            if impl not in ("official", "faithful"):
                row[impl]["latent_rel_diff_vs_faithful"] = relative(latents.get((impl, mode)),
                                                                    latents.get(("faithful", mode)))
        # same run, one plain generated image: the fastest of diffusers' runs (each generated mode repeats the same
        # generation; their times moved by 8% within a run on an H200)
        base = min((r["total_s"] for r in results.get("diffusers", {}).values() if "total_s" in r), default=None)
        for impl, cells in row.items():
            if base is not None and impl != "diffusers":
                cells["x_diffusers"] = cells["total_s"] / base
        summary[mode] = row
    return summary


def fmt(value, spec=".2f", scale=1.0, suffix=""):
    return "–" if value is None else f"{value / scale:{spec}}{suffix}"


def markdown(report: dict) -> str:
    """The headline table (one row per mode), a per-stage table, and any errors."""
    impls = [i for i in IMPLS if i in report["results"]]
    ours = [i for i in impls if i != "official"]
    head = (["mode"] + [f"{i} s" for i in impls] + [f"{i} speedup" for i in ours] + [f"{i} peak GiB" for i in impls]
            + [f"{i} mem ratio" for i in ours] + [f"{i} Δ official" for i in ours]
            + [f"{i} Δ faithful" for i in ours if i != "faithful"])
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for mode, row in report["summary"].items():
        get = lambda impl, key: row.get(impl, {}).get(key)  # noqa: E731
        cells = ([mode] + [fmt(get(i, "total_s")) for i in impls] + [fmt(get(i, "speedup"), suffix="x") for i in ours]
                 + [fmt(get(i, "peak_allocated_bytes"), scale=GIB) for i in impls]
                 + [fmt(get(i, "memory_ratio")) for i in ours]
                 + [fmt(get(i, "latent_rel_diff_vs_official"), ".1e") for i in ours]
                 + [fmt(get(i, "latent_rel_diff_vs_faithful"), ".1e") for i in ours if i != "faithful"])
        lines.append("| " + " | ".join(cells) + " |")
    s = report["settings"]
    lines += [f"\nx diffusers (ours s / diffusers' fastest plain generation s, same run), {mode}: "
              + ", ".join(f"{i} {fmt(c.get('x_diffusers'), suffix='x')}" for i, c in row.items() if "x_diffusers" in c)
              for mode, row in report["summary"].items() if any("x_diffusers" in c for c in row.values())]
    blocks = tuple(s.get("ito_blocks", Settings.ito_blocks))
    lines += ["", f"{s['steps']} DDIM steps, {s['null_text_steps']} null-text steps per step, {report['device']}; "
              + ("" if set(blocks) == set(Settings.ito_blocks) else f"ours: ITO reads the {','.join(blocks)} blocks; ")
              + "speedup = official s / ours s, mem ratio = ours / official peak allocated (jittor: live "
              "variables at its allocators' peak, from an untimed run, where --jittor-memory measured it), "
              "Δ = ‖ours − other‖ / ‖other‖ on the final latents (both branches).", "",
              "| implementation | mode | inversion s | null-text s | sampling s | total s | peak reserved GiB "
              "| NVML peak used GiB (at start) | largest stage peak allocated GiB |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    errors = []
    for impl in impls:
        for mode, r in report["results"][impl].items():
            if "total_s" not in r:
                errors.append(f"- {impl} {mode}: {r.get('error') or r.get('unavailable')}")
                continue
            g = r["stage_groups_s"]
            lines.append(f"| {impl} | {mode} | {fmt(g.get('inversion'))} | {fmt(g.get('null_text'))} | "
                         f"{fmt(g.get('sampling'))} | {fmt(r['total_s'])} | {fmt(r['peak_reserved_bytes'], scale=GIB)} | "
                         f"{fmt(r.get('nvml_peak_used_bytes'), scale=GIB)} ({fmt(r.get('nvml_baseline_used_bytes'), scale=GIB)}) | "
                         f"{largest_stage(r.get('stage_peak_bytes'))} |")
    return "\n".join(lines + (["", "Not measured:"] + errors if errors else []) + approaches_markdown(report)) + "\n"


def largest_stage(peaks: dict | None) -> str:
    """'stage GiB' of the stage whose peak allocated memory is the run's largest, else '–'."""
    if not peaks:
        return "–"
    stage = max(peaks, key=lambda k: peaks[k]["allocated"])
    return f"{stage} {fmt(peaks[stage]['allocated'], scale=GIB)}"


def environment(args) -> dict:
    import importlib.metadata as md

    def version(pkg):
        with contextlib.suppress(md.PackageNotFoundError):
            return md.version(pkg)

    def git(*cmd):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(["git", *cmd], cwd=REPO, capture_output=True, text=True, timeout=30)
            return out.stdout.strip() if out.returncode == 0 else None

    ref = args.reference / "suppress_eot_w_nulltext.py" if args.reference else None
    return {
        "device": torch.cuda.get_device_name() if on_cuda(args.device) else f"cpu ({os.cpu_count()} cores)",
        "python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
        "diffusers": version("diffusers"), "transformers": version("transformers"), "numpy": np.__version__,
        "jittor": version("jittor"), "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "reference": str(args.reference) if args.reference else None,
        "reference_sha256": hashlib.sha256(ref.read_bytes()).hexdigest() if ref and ref.exists() else None,
        "command": shlex.join([sys.executable, *sys.argv]), "model_dir": str(args.model_dir), "size": args.size,
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=("sd-v1", "tiny", *FAMILY_SIZES), default="sd-v1",
                   help="random model shape: sd-v1 (real SD v1.4 cost, for the GPU), sdxl (SDXL base, 1024 px), "
                        "sd2.1 (768 px, v-prediction), or tiny, tiny-sdxl, tiny-sd2 (CPU)")
    p.add_argument("--model-dir", type=Path, help="diffusers folder to build/reuse (default .bench/random-<size>)")
    p.add_argument("--reference", type=Path, help="snapshot of github sen-mao/SuppressEOT; without it, no official runs")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma list of {', '.join(MODES)}")
    p.add_argument("--only-impl", default="official,faithful,fast", help=f"comma list of {', '.join(IMPLS)}")
    p.add_argument("--backends", default="torch", help="torch or torch,jittor (adds the jittor implementation)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (official default 50)")
    p.add_argument("--null-text-steps", type=int, default=10, help="null-text inner steps per DDIM step (official 10)")
    p.add_argument("--fast-dtype", choices=("bfloat16", "float16"), default="bfloat16")
    p.add_argument("--ito-blocks", default="up,down,mid",
                   help="UNet blocks whose maps ITO reads in this project's implementations (suppress-eot "
                        "--ito-blocks; e.g. down,mid on SDXL)")
    p.add_argument("--jittor-python", metavar="CMD",
                   help="run the jittor implementation in a child process started with this command, e.g. "
                        "'env PYTHONPATH=/opt/numpy1 python' where jittor needs numpy<2 and torch's side numpy 2 "
                        "(its results join this run's report)")
    p.add_argument("--jittor-static-graphs", action=argparse.BooleanOptionalAction, default=None,
                   help="the jittor implementation's --static-graphs (default: the backend's, on with CUDA)")
    p.add_argument("--jittor-memory", action="store_true",
                   help="after the timed jittor runs, measure jittor's peak memory per mode in one more, untimed "
                        "process per mode (jittor's memory profiler slows a run and cannot be reset)")
    p.add_argument("--memory-probe", action="store_true", help=argparse.SUPPRESS)  # such a process
    p.add_argument("--approaches", default="",
                   help="also time these approaches (comma list, or all; see `suppress-eot approaches`) on one "
                        "generated image and one photo")
    p.add_argument("--approach-impl", choices=("faithful", "fast", "compiled"), default="fast",
                   help="the implementation the approaches run in (default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--no-warmup", action="store_true", help="skip the untimed 2-step image before each timed one")
    p.add_argument("--out", type=Path, default=Path("bench-results"), help="writes bench.json, bench.md, latents/")
    args = p.parse_args(argv)
    args.device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    args.model_dir = (args.model_dir or REPO / ".bench" / f"random-{args.size}").resolve()
    args.reference = args.reference.resolve() if args.reference else None
    args.modes = [m for m in args.modes.split(",") if m]
    impls = [i for i in args.only_impl.split(",") if i]
    if "jittor" in args.backends.split(",") and "jittor" not in impls:
        impls.append("jittor")
    for bad in [m for m in args.modes if m not in MODES] + [i for i in impls if i not in IMPLS]:
        p.error(f"unknown mode or implementation {bad!r}")
    if "official" in impls and not args.reference:
        print("no --reference given: the official code is not run", file=sys.stderr)
        impls.remove("official")
    args.impls = [i for i in IMPLS if i in impls]
    args.approaches = approach_table.parse_list(args.approaches) if args.approaches else []
    return args


def jittor_command(args, modes: list[str], out: Path, *extra: str) -> list[str]:
    """This script, run for the jittor implementation alone on the same model and settings."""
    python = shlex.split(args.jittor_python) if args.jittor_python else [sys.executable]
    return [*python, str(Path(__file__).resolve()), "--only-impl", "jittor", "--backends", "torch,jittor",
            "--size", args.size, "--model-dir", str(args.model_dir), "--modes", ",".join(modes),
            "--steps", str(args.steps), "--null-text-steps", str(args.null_text_steps), "--device", args.device,
            "--ito-blocks", args.ito_blocks, "--out", str(out),
            *({True: ["--jittor-static-graphs"], False: ["--no-jittor-static-graphs"]}.get(args.jittor_static_graphs, [])),
            *extra]


def run_child(args, out: Path, latents: dict) -> tuple[dict, dict, dict]:
    """The jittor implementation in its own process (its own numpy), on the same model and settings."""
    child_out = out / "jittor-child"
    cmd = jittor_command(args, args.modes, child_out, *(["--no-warmup"] if args.no_warmup else []))
    print(f"[bench] jittor in a child process: {shlex.join(cmd)}", file=sys.stderr, flush=True)
    done = subprocess.run(cmd)
    try:
        child = json.loads((child_out / "bench.json").read_text())
    except (OSError, ValueError) as exc:
        why = f"child process exited {done.returncode} without results ({type(exc).__name__})"
        return {m: {"error": why} for m in args.modes}, {}, {"command": shlex.join(cmd), "returncode": done.returncode}
    for mode in args.modes:
        path = child_out / "latents" / f"jittor-{mode}.npy"
        if path.exists():
            latents[("jittor", mode)] = np.load(path)
    keys = ("python", "numpy", "jittor", "torch", "command")
    info = {"returncode": done.returncode, **{k: child.get(k) for k in keys}}
    return child["results"].get("jittor", {}), child["setup_s"].get("jittor", {}), info


def probe_jittor_memory(args, out: Path, results: dict) -> None:
    """One untimed process per mode with jittor's memory profiler on; its peak joins ``results[mode]``."""
    for mode in args.modes:
        probe_out = out / "jittor-memory" / mode
        cmd = jittor_command(args, [mode], probe_out, "--memory-probe")
        print(f"[bench] jittor memory, {mode}: {shlex.join(cmd)}", file=sys.stderr, flush=True)
        done = subprocess.run(cmd)
        try:
            probe = json.loads((probe_out / "bench.json").read_text())["results"]["jittor"][mode]
            peak = probe["memory_probe_peak_bytes"]
        except (OSError, ValueError, KeyError) as exc:
            peak, probe = None, {"error": f"probe exited {done.returncode} without a result ({type(exc).__name__})"}
        results.setdefault(mode, {})
        results[mode]["memory_probe_peak_bytes"] = peak
        results[mode]["memory_probe"] = {"command": shlex.join(cmd), "untimed_total_s": probe.get("total_s"),
                                         "error": probe.get("error")}


def main(argv=None) -> dict:
    args = parse_args(argv)
    settings = Settings(steps=args.steps, null_text_steps=args.null_text_steps,
                        ito_blocks=tuple(args.ito_blocks.split(",")))
    out = args.out.resolve()
    (out / "latents").mkdir(parents=True, exist_ok=True)
    if not (args.model_dir / "model_index.json").exists():
        print(f"building the random {args.size} model in {args.model_dir}", file=sys.stderr)
        if args.size in FAMILY_SIZES:
            family, size, latent, extra = FAMILY_SIZES[args.size]
            save_random_family(args.model_dir, DATA / "clip-tokenizer", family, size=size, seed=0, latent_size=latent,
                               device=args.device, **extra)
        else:
            save_random_model(args.model_dir, DATA / "clip-tokenizer", size=args.size, seed=0)
    report = {**environment(args), "settings": {**asdict(settings), "photo_prompt": settings.photo_prompt,
                                                "fast_dtype": args.fast_dtype, "impls": args.impls, "modes": args.modes},
              "setup_s": {}, "results": {}, "summary": {}}
    latents: dict = {}
    # Every implementation starts from PyTorch's defaults (fp32 matmuls without TF32, cuDNN convolutions
    # with TF32), which is how the official code runs; ours set their own mode on load.

    def write():
        report["summary"] = summarize(report["results"], latents, args.modes)
        (out / "bench.json").write_text(json.dumps(report, indent=1, default=str))
        (out / "bench.md").write_text(markdown(report))

    for impl in args.impls:
        if impl == "jittor" and args.jittor_python:
            free(args.device)
            report["results"][impl], report["setup_s"][impl], report["jittor_child"] = run_child(args, out, latents)
            write()
            continue
        results = report["results"][impl] = {}
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, True
        runner = None
        try:
            start = time.perf_counter()
            runner = load(impl, args, settings)
            report["setup_s"][impl] = {"load": time.perf_counter() - start}
            if impl == "official":
                report["reference_stubbed_modules"] = runner.stubbed
            if hasattr(runner, "model"):  # what the backend runs with (batches, attention, graphs): flops.py reads it
                report.setdefault("backends", {})[impl] = runner.model.backend.info()
            if args.memory_probe:
                runner.model.backend.jt.flags.profile_memory_enable = 1
        except BackendUnavailable as exc:
            runner = None
            results.update({m: {"unavailable": str(exc).splitlines()[0]} for m in args.modes})
        except Exception as exc:  # noqa: BLE001 - one broken implementation must not stop the others
            traceback.print_exc()
            runner = None
            results.update({m: {"error": f"loading: {type(exc).__name__}: {exc}".splitlines()[0]}
                            for m in args.modes})
        setup = report["setup_s"].get(impl, {})
        for mode in args.modes if runner is not None else []:
            if impl == "diffusers" and mode.startswith("real"):  # the baseline generates; it edits no photos
                continue
            print(f"[bench] {impl} {mode} ...", file=sys.stderr, flush=True)
            try:
                if not (args.no_warmup or args.memory_probe):
                    setup["warmup"] = setup.get("warmup", 0.0) + warm_up(runner, mode)
                captured = graph_capture_seconds(runner)
                if captured is not None:  # what the warm-ups captured: the first image's extra cost
                    setup["graph_capture"] = captured
                results[mode], latents[(impl, mode)] = measure(runner, mode, settings, args.device)
                after = graph_capture_seconds(runner)
                if captured is not None and after > captured:  # the cache missed
                    results[mode]["graph_capture_s"] = after - captured
                if args.memory_probe:
                    from suppresseot.backends.jittor.env import peak_live_bytes

                    results[mode]["memory_probe_peak_bytes"] = peak_live_bytes(runner.model.backend.jt)
                np.save(out / "latents" / f"{impl}-{mode}.npy", latents[(impl, mode)])
                print(f"[bench] {impl} {mode}: {results[mode]['total_s']:.2f} s", file=sys.stderr, flush=True)
            except Exception as exc:  # noqa: BLE001
                traceback.print_exc()
                results[mode] = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0],
                                 "traceback": traceback.format_exc()[-4000:]}
            write()
        if runner is not None and hasattr(runner, "close"):
            runner.close()
        del runner
        free(args.device)
        write()
    if args.approaches:
        report["settings"]["approach_impl"] = args.approach_impl
        time_approaches(args, settings, report, out, write)
        write()
    if "jittor" in args.impls and args.jittor_memory and not args.memory_probe:  # jittor runs last (IMPLS)
        probe_jittor_memory(args, out, report["results"].setdefault("jittor", {}))
        write()
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
