"""Python API: ``SuppressEOT.from_pretrained(model).generate(...)`` / ``.edit(...)``.

The CLI is a thin layer over this. One ``SuppressEOT`` holds a loaded backend; each call runs one
edit (one token group, one alpha, one tau) and returns a ``SuppressionResult`` that can be saved as a
run directory. A photo's inversion can be computed once with ``invert`` and reused across edits.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from .algorithm import pipeline
from .algorithm.ddim import DDIMSchedule
from .config import (GENERATED_STEP_SCALE, REAL_STEP_SCALE, InversionSettings, SamplingSettings,
                     SuppressionSettings)
from .errors import SuppressEOTError
from .images import load_512
from .tokens import TokenTable, Tokenizer, resolve_groups, token_table
from .weights import DEFAULT_MODEL, resolve_model

BACKENDS = ("torch", "jittor")


class StageTimer:
    """Seconds and peak memory per stage (the backend synchronizes so times are the device's)."""

    def __init__(self, backend):
        self.backend = backend
        self.seconds: dict[str, float] = {}
        self.memory: dict[str, dict] = {}

    def __call__(self, stage: str):
        return _Stage(self, stage)


class _Stage:
    def __init__(self, timer: StageTimer, stage: str):
        self.timer, self.stage = timer, stage

    def __enter__(self):
        self.timer.backend.synchronize()
        self.timer.backend.reset_peak_memory()
        self.started = time.perf_counter()

    def __exit__(self, *exc):
        self.timer.backend.synchronize()
        self.timer.seconds[self.stage] = time.perf_counter() - self.started
        self.timer.memory[self.stage] = self.timer.backend.peak_memory()
        return False


@dataclass
class Inversion:
    """A photo inverted for editing: the start latent and the unconditional embedding of every step."""

    prompt: str
    method: str
    image: np.ndarray  # the 512x512 centre crop (uint8 RGB)
    reconstruction: np.ndarray  # its VAE round trip
    x_T: object  # backend tensor (1, 4, 64, 64)
    uncond_per_step: list  # backend tensors (1, 77, D)
    null_text_log: list = field(default_factory=list)
    seconds: dict = field(default_factory=dict)
    memory: dict = field(default_factory=dict)
    settings: InversionSettings = field(default_factory=InversionSettings)
    source: str | None = None


@dataclass
class SuppressionResult:
    """Everything one edit produced; ``save(dir)`` writes it as a run directory."""

    kind: str  # "generated" or "real"
    prompt: str
    token_indices: list[int]
    tokens: TokenTable
    original: Image.Image
    suppressed: Image.Image
    final_latents: np.ndarray  # (2, 4, 64, 64) float32
    settings: SuppressionSettings
    sampling: SamplingSettings
    step_scale: float
    seed: int | None = None
    cross_attention: np.ndarray | None = None
    self_attention: np.ndarray | None = None
    ito_log: list = field(default_factory=list)
    inversion: Inversion | None = None
    swr_embedding: np.ndarray | None = None
    seconds: dict = field(default_factory=dict)
    memory: dict = field(default_factory=dict)
    backend_info: dict = field(default_factory=dict)
    model: str = ""

    def save(self, out_dir: str | os.PathLike, name: str | None = None, extra: dict | None = None) -> Path:
        """Write the run directory (see README); ``extra`` adds keys to its run.json."""
        from .runs import save_run

        return save_run(self, out_dir, name, extra)


def load_backend(name: str, model_dir: Path, device: str, dtype: str | None = None, fast: bool = False,
                 cuda_graphs: bool | None = None):
    """``dtype`` None: float32, or bfloat16 for the PyTorch backend's fast mode. ``cuda_graphs``: the PyTorch
    backend replays the repeated steps as CUDA graphs on a GPU (same results, less host overhead; None: in
    fast mode only)."""
    if name == "torch":
        from .backends.torch_backend import TorchBackend

        return TorchBackend(model_dir, device=device, dtype=dtype or ("bfloat16" if fast else "float32"),
                            fast=fast, cuda_graphs=cuda_graphs)
    if name == "jittor":
        from .backends.jittor.backend import JittorBackend

        return JittorBackend(model_dir, device=device, dtype=dtype or "float32", fast=fast)
    raise SuppressEOTError(f"unknown backend {name!r}: choose {' or '.join(BACKENDS)}")


class SuppressEOT:
    """A loaded Stable Diffusion v1 model on one backend, ready to suppress content."""

    def __init__(self, backend, tokenizer: Tokenizer, model: str = "", progress: bool = True):
        self.backend = backend
        self.tokenizer = tokenizer
        self.model = model
        self.progress = progress

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike = DEFAULT_MODEL, backend: str = "torch", device: str = "auto",
                        dtype: str | None = None, fast: bool = False, cuda_graphs: bool | None = None,
                        progress: bool = True) -> "SuppressEOT":
        """Load a model; ``fast`` trades exactness for speed (bf16 weights, TF32, fused attention, CUDA
        graphs). ``cuda_graphs`` (PyTorch on a GPU): replay the repeated steps as CUDA graphs (same results;
        default None = in fast mode only, where they pay off)."""
        if backend not in BACKENDS:
            raise SuppressEOTError(f"unknown backend {backend!r}: choose {' or '.join(BACKENDS)}")
        model_dir = resolve_model(model)
        tokenizer = Tokenizer.from_pretrained(model_dir)
        return cls(load_backend(backend, model_dir, device, dtype, fast, cuda_graphs), tokenizer, str(model),
                   progress)

    # --- helpers ------------------------------------------------------------------------------
    def tokens(self, prompt: str) -> TokenTable:
        return token_table(self.tokenizer, prompt)

    def resolve(self, prompt: str, suppress) -> list[list[int]]:
        """Token groups for ``suppress``: an index, a list of indices, a word/phrase, or a list of those groups."""
        return resolve_groups(self.tokenizer, self.tokens(prompt), suppress)

    def _embed(self, prompt: str):
        ids = self.tokenizer.padded_ids(prompt)
        return self.backend.encode_text(ids)

    def _group(self, prompt: str, suppress) -> tuple[TokenTable, list[int]]:
        """One edit's token group: an index, a word/phrase, or a list of those."""
        if suppress is None or (isinstance(suppress, (list, tuple)) and not suppress):
            raise SuppressEOTError("name what to suppress: token indices or words of the prompt")
        table = self.tokens(prompt)
        group = list(suppress) if isinstance(suppress, (list, tuple)) else [suppress]
        return table, resolve_groups(self.tokenizer, table, [group])[0]

    # --- real photos --------------------------------------------------------------------------
    def invert(self, image, prompt: str, inversion: InversionSettings | str = "nt", steps: int = 50,
               guidance_scale: float = 7.5) -> Inversion:
        """DDIM-invert a photo (path, PIL image or uint8 array) and optimize null-text (or use NPI)."""
        settings = (InversionSettings(method=inversion) if isinstance(inversion, str) else inversion).validate()
        sampling = SamplingSettings(num_steps=steps, guidance_scale=guidance_scale).validate()
        self.tokens(prompt)  # validates the prompt
        source = str(image) if isinstance(image, (str, os.PathLike)) else None
        if isinstance(image, (str, os.PathLike)):
            crop = load_512(image)
        else:
            from .images import center_crop_512

            crop = center_crop_512(image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image)))
        backend = self.backend
        schedule = DDIMSchedule.create(sampling.num_steps)
        timer = StageTimer(backend)
        with timer("inversion_text_encoding"):  # its own name: edit() merges these stages with the edit's
            text = self._embed(prompt)
            uncond = self._embed("")
        with timer("vae_encode"):
            latent = backend.vae_encode(crop)
            reconstruction = backend.vae_decode(latent)[0]
        with timer("ddim_inversion"):
            latents = pipeline.ddim_inversion(backend, schedule, latent, text, progress=self.progress)
        log: list = []
        if settings.method == "nt":
            with timer("null_text"):
                uncond_per_step = pipeline.null_text_optimization(
                    backend, schedule, latents, text, uncond, settings, sampling.guidance_scale, log,
                    progress=self.progress)
        else:  # negative-prompt inversion: the prompt's own embedding stands in for the null text
            uncond_per_step = [text] * schedule.num_steps
        return Inversion(prompt=prompt, method=settings.method, image=crop, reconstruction=reconstruction,
                         x_T=latents[-1], uncond_per_step=uncond_per_step, null_text_log=log,
                         seconds=timer.seconds, memory=timer.memory, settings=settings, source=source)

    def edit(self, image, prompt: str | None = None, suppress=None, settings: SuppressionSettings | None = None,
             inversion: InversionSettings | str = "nt", steps: int = 50, guidance_scale: float = 7.5,
             **overrides) -> SuppressionResult:
        """Suppress ``suppress`` in a photo; ``image`` may also be an ``Inversion`` from ``invert``."""
        if isinstance(image, Inversion):
            inv = image
            if prompt is not None and prompt != inv.prompt:
                raise SuppressEOTError("the prompt differs from the one the photo was inverted with")
            steps = len(inv.uncond_per_step)
        else:
            if prompt is None:
                raise SuppressEOTError("edit needs the prompt that describes the photo")
            inv = self.invert(image, prompt, inversion, steps=steps, guidance_scale=guidance_scale)
        settings = replace(settings or SuppressionSettings(), **overrides).validate()
        step_scale = settings.step_scale if settings.step_scale is not None else REAL_STEP_SCALE
        result = self._suppress("real", inv.prompt, suppress, settings, SamplingSettings(steps, guidance_scale),
                                step_scale, inv.x_T, inv.uncond_per_step)
        result.inversion = inv
        result.seconds = {**inv.seconds, **result.seconds}
        result.memory = {**inv.memory, **result.memory}
        return result

    # --- generated images ---------------------------------------------------------------------
    def generate(self, prompt: str, suppress, seed: int = 2, settings: SuppressionSettings | None = None,
                 steps: int = 50, guidance_scale: float = 7.5, **overrides) -> SuppressionResult:
        """Generate from ``prompt`` with seed ``seed`` and suppress ``suppress`` (the official initial noise)."""
        settings = replace(settings or SuppressionSettings(), **overrides).validate()
        sampling = SamplingSettings(steps, guidance_scale).validate()
        step_scale = settings.step_scale if settings.step_scale is not None else GENERATED_STEP_SCALE
        self.tokens(prompt)
        start = self.backend.initial_latent(int(seed))
        with self.backend.no_grad():
            uncond = self._embed("")
        result = self._suppress("generated", prompt, suppress, settings, sampling, step_scale, start,
                                [uncond] * sampling.num_steps)
        result.seed = int(seed)
        return result

    # --- shared -------------------------------------------------------------------------------
    def _suppress(self, kind, prompt, suppress, settings, sampling, step_scale, start, uncond_per_step):
        sampling.validate()
        table, group = self._group(prompt, suppress)
        backend = self.backend
        schedule = DDIMSchedule.create(sampling.num_steps)
        timer = StageTimer(backend)
        with timer("text_encoding"):
            text = self._embed(prompt)
            text_np = backend.to_numpy(text)
        with timer("swr_ito_sampling"):
            out = pipeline.suppress(backend, schedule, start, text, text_np, uncond_per_step, table.n, group,
                                    settings, sampling, step_scale, progress=self.progress)
        with timer("vae_decode"):
            images = backend.vae_decode(out.final_latents)
        return SuppressionResult(
            kind=kind, prompt=prompt, token_indices=group, tokens=table,
            original=Image.fromarray(images[0]), suppressed=Image.fromarray(images[1]),
            final_latents=backend.to_numpy(out.final_latents).astype(np.float32), settings=settings,
            sampling=sampling, step_scale=step_scale, cross_attention=out.cross_attention,
            self_attention=out.self_attention, ito_log=out.ito_log, swr_embedding=out.first_swr_embedding,
            seconds=timer.seconds, memory=timer.memory, backend_info=backend.info(), model=self.model)
