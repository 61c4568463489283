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

from . import approaches
from .algorithm import pipeline
from .algorithm.attention import CROSS_REFERENCE_PLACES
from .approaches import Approach, Request
from .config import (GENERATED_STEP_SCALE, REAL_STEP_SCALE, InversionSettings, SamplingSettings,
                     SuppressionSettings)
from .errors import SuppressEOTError
from .families import Family
from .images import center_crop, load_square
from .tokens import TokenTable, Tokenizer, resolve_groups, split_prompt, token_table
from .weights import DEFAULT_MODEL, LoRA, resolve_model

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
    method: str  # nt | npi (this project's inversion), or a baseline's own (ledits++)
    image: np.ndarray  # the centre crop at the model's image size, 512x512 for SD v1 (uint8 RGB)
    reconstruction: np.ndarray  # its VAE round trip
    x_T: object  # backend tensor (1, 4, 64, 64) for SD v1 (None where a baseline inverted the photo itself)
    uncond_per_step: list  # backend tensors (1, 77, D)
    null_text_log: list = field(default_factory=list)
    seconds: dict = field(default_factory=dict)
    memory: dict = field(default_factory=dict)
    settings: InversionSettings | dict = field(default_factory=InversionSettings)  # a baseline's: a dict
    source: str | None = None
    group_size: int = 1  # photos inverted together (their seconds and memory are the group's)


@dataclass
class SuppressionResult:
    """Everything one edit produced, by any approach (SuppressEOT or a baseline, ``approaches``); ``save(dir)``
    writes it as a run directory."""

    kind: str  # "generated" or "real"
    prompt: str
    token_indices: list[int]
    tokens: TokenTable
    original: Image.Image | None  # None where the edit ran with decode=False (latents only)
    suppressed: Image.Image | None  # the edited image, whatever the approach
    final_latents: np.ndarray  # (2, 4, 64, 64) float32: original, edited
    settings: SuppressionSettings | None  # SuppressEOT's (None for a baseline: see approach_settings)
    sampling: SamplingSettings
    step_scale: float | None  # SuppressEOT's ITO step size
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
    loras: list = field(default_factory=list)  # {"file", "sha256", "scale"} of each LoRA fused into the model
    group_size: int = 1  # tasks run together (their seconds and memory are the group's)
    family: dict = field(default_factory=dict)  # ``Family.describe()``: family, prediction type, sizes
    approach: str = approaches.DEFAULT  # which approach made the edit (``suppress-eot approaches``)
    approach_settings: dict = field(default_factory=dict)  # its settings and what ran it (``approaches.describe``)

    def save(self, out_dir: str | os.PathLike, name: str | None = None, extra: dict | None = None) -> Path:
        """Write the run directory (see README); ``extra`` adds keys to its run.json."""
        from .runs import save_run

        if self.original is None or self.suppressed is None:
            raise SuppressEOTError("this result holds latents only (decode=False): a run directory needs the "
                                   "images; run again with decode=True (the default)")

        return save_run(self, out_dir, name, extra)


TORCH_OPTIONS = ("cuda_graphs", "offload_models", "fused_attention", "compile_unet")
JITTOR_OPTIONS = ("static_graphs",)


def load_backend(name: str, model_dir: Path, device: str, dtype: str | None = None, fast: bool = False,
                 **torch_options):
    """``dtype`` None: float32, or bfloat16 for the PyTorch backend's fast mode. The PyTorch backend's own
    options (None: its default):

    - ``cuda_graphs``: replay the repeated steps as CUDA graphs on a GPU (same results, less host overhead;
      default on wherever there is a GPU);
    - ``offload_models``: keep the text encoder and the VAE in CPU memory between uses on a GPU (same
      results, lower peak; default on wherever there is a GPU);
    - ``fused_attention``: run layers whose maps are not read through fused SDPA (rounds differently from
      the official explicit attention by ~1e-6 a call; default on a GPU or in fast mode);
    - ``compile_unet``: run the UNet's ResNet blocks and feed-forward layers through ``torch.compile`` in
      every call (fewer, fused kernels; minutes of compilation per batch shape on first use; default off).

    The Jittor backend's: ``static_graphs``: record each repeated step once with ``jittor.vcompiler`` and
    replay it (CUDA only; default on with CUDA).
    """
    unknown = sorted(set(torch_options) - set(TORCH_OPTIONS) - set(JITTOR_OPTIONS))
    if unknown:
        raise TypeError(f"unknown backend option(s) {', '.join(unknown)}; known: "
                        f"{', '.join(TORCH_OPTIONS + JITTOR_OPTIONS)}")
    static_graphs = torch_options.pop("static_graphs", None)
    if name == "torch":
        if static_graphs:
            raise SuppressEOTError("--static-graphs (jittor.vcompiler) is an option of the Jittor backend; the "
                                   "PyTorch backend replays CUDA graphs instead (--cuda-graphs)")
        from .backends.torch_backend import TorchBackend

        return TorchBackend(model_dir, device=device, dtype=dtype or ("bfloat16" if fast else "float32"),
                            fast=fast, **{k: v for k, v in torch_options.items() if v is not None})
    if name == "jittor":
        if torch_options.get("compile_unet"):
            raise SuppressEOTError("--compile (torch.compile) is an option of the PyTorch backend; the Jittor "
                                   "backend compiles its kernels itself: drop --compile or use --backend torch")
        from .backends.jittor.backend import JittorBackend

        return JittorBackend(model_dir, device=device, dtype=dtype or "float32", fast=fast,
                             static_graphs=static_graphs)
    raise SuppressEOTError(f"unknown backend {name!r}: choose {' or '.join(BACKENDS)}")


class SuppressEOT:
    """A loaded Stable Diffusion model (SD 1.x, 2.x or SDXL, see ``families``) on one backend, ready to
    suppress content."""

    def __init__(self, backend, tokenizer: Tokenizer, model: str = "", progress: bool = True,
                 loras: list | None = None, on_step=None):
        self.backend = backend
        self.tokenizer = tokenizer  # the first encoder's: token indices are the same for every encoder
        self.model = model
        self.progress = progress
        self.loras = list(loras or [])  # records of the LoRAs fused into the weights (run.json keeps them)
        # on_step(stage, step): called before every denoising, inversion and null-text step; an exception
        # raised there stops the run there (the web app's Cancel), like diffusers' callback_on_step_end
        self.on_step = on_step
        self.family: Family = backend.family
        # one tokenizer per text encoder (SDXL's second pads with "!" where the first repeats the end token)
        self.tokenizers = [tokenizer] + [Tokenizer.from_pretrained(backend.model_dir, subfolder=e.tokenizer)
                                         for e in self.family.text_encoders[1:]]

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike = DEFAULT_MODEL, backend: str = "torch", device: str = "auto",
                        dtype: str | None = None, fast: bool = False, cuda_graphs: bool | None = None,
                        offload_models: bool | None = None, fused_attention: bool | None = None,
                        compile_unet: bool | None = None, progress: bool = True, lora=None,
                        variant: str | None = None, config: str | os.PathLike | None = None,
                        static_graphs: bool | None = None) -> "SuppressEOT":
        """Load a model: a diffusers folder, a hub id or a single-file checkpoint (``.safetensors``/``.ckpt``;
        ``config``: its diffusers config folder or a shipped name, default chosen from its keys); ``lora``: LoRA
        files or ``(file, scale)`` pairs fused into the weights; ``variant``: e.g. ``"fp16"`` weights, upcast
        (see ``weights.resolve_model``). ``fast`` trades exactness for speed (bf16 weights, TF32, fused attention, CUDA
        graphs). ``cuda_graphs`` (PyTorch on a GPU): replay the repeated steps as CUDA graphs (same results;
        default None = on wherever there is a GPU; False for plain eager runs). ``offload_models`` (PyTorch on a
        GPU): keep the text encoder and VAE in CPU memory between uses (default None = on; False keeps them on
        the GPU, ~0.1 s faster an image, 0.75 GiB more peak in fp32). ``fused_attention`` (PyTorch): SDPA on the
        layers whose maps are not read (default None = on a GPU or with ``fast``; False computes every layer
        explicitly, the official arithmetic). ``compile_unet`` (PyTorch): ``torch.compile`` the UNet's ResNet blocks
        and feed-forward layers (default off: minutes of compilation per batch shape, then fewer kernels).
        ``static_graphs`` (Jittor on CUDA): record each repeated step once with ``jittor.vcompiler`` and replay it
        (default None = on with CUDA; False for eager steps)."""
        if backend not in BACKENDS:
            raise SuppressEOTError(f"unknown backend {backend!r}: choose {' or '.join(BACKENDS)}")
        loras = [LoRA.of(item) for item in lora or ()]
        model_dir = resolve_model(model, loras, variant, config)
        tokenizer = Tokenizer.from_pretrained(model_dir)
        return cls(load_backend(backend, model_dir, device, dtype, fast, cuda_graphs=cuda_graphs,
                                offload_models=offload_models, fused_attention=fused_attention,
                                compile_unet=compile_unet, static_graphs=static_graphs), tokenizer, str(model), progress,
                   [item.record() for item in loras])

    # --- helpers ------------------------------------------------------------------------------
    def tokens(self, prompt: str) -> TokenTable:
        return token_table(self.tokenizers[-1], prompt)  # the last encoder's padding (SDXL: "!") is shown

    def resolve(self, prompt: str, suppress) -> list[list[int]]:
        """Token groups for ``suppress``: an index, a list of indices, a word/phrase, or a list of those groups."""
        return resolve_groups(self.tokenizer, self.tokens(prompt), suppress)

    def _embed(self, prompt: str):
        if len(self.tokenizers) == 1:
            return self.backend.encode_text(self.tokenizer.padded_ids(prompt))
        return self.backend.encode_text([tokenizer.padded_ids(prompt) for tokenizer in self.tokenizers])

    def _uncond(self):
        """The unconditional embedding: "" encoded, or zeros where the model's pipeline zeroes it (SDXL's
        force_zeros_for_empty_prompt, pooled embedding included)."""
        uncond = self._embed("")
        return uncond * 0.0 if self.family.zero_uncond else uncond

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
        return self.invert_many([image], [prompt], inversion, steps, guidance_scale)[0]

    def invert_many(self, images: list, prompts: list[str], inversion: InversionSettings | str = "nt",
                    steps: int = 50, guidance_scale: float = 7.5) -> list[Inversion]:
        """``invert`` for several photos at once: their UNet passes run as one batch, each photo with its
        own null-text loss, Adam state and early stop. Each result equals ``invert``'s within the rounding
        of batched kernels; seconds and memory are the group's (``group_size`` photos)."""
        if len(images) != len(prompts) or not images:
            raise SuppressEOTError("invert_many needs one prompt per photo (and at least one photo)")
        settings = (InversionSettings(method=inversion) if isinstance(inversion, str) else inversion).validate()
        sampling = SamplingSettings(num_steps=steps, guidance_scale=guidance_scale).validate()
        for prompt in prompts:
            self.tokens(prompt)  # validates the prompt
        crops = [self._crop(image) for image in images]
        backend = self.backend
        schedule = self.family.schedule(sampling.num_steps)
        timer = StageTimer(backend)
        with timer("inversion_text_encoding"):  # its own name: edit() merges these stages with the edit's
            text = backend.cat([self._embed(prompt) for prompt in prompts])
            uncond = backend.cat([self._uncond()] * len(prompts))
        with timer("vae_encode"):
            encoded = [backend.vae_encode(crop) for crop in crops]
            reconstructions = [backend.vae_decode(latent)[0] for latent in encoded]
            latent = backend.cat(encoded)
        with timer("ddim_inversion"):
            latents = pipeline.ddim_inversion(backend, schedule, latent, text, progress=self.progress,
                                               on_step=self.on_step)
        logs: list[list] = [[] for _ in prompts]
        if settings.method == "nt":
            with timer("null_text"):
                uncond_per_step = pipeline.null_text_optimization(
                    backend, schedule, latents, text, uncond, settings, sampling.guidance_scale, logs,
                    progress=self.progress, on_step=self.on_step)
        else:  # negative-prompt inversion: the prompt's own embedding stands in for the null text
            uncond_per_step = [text] * schedule.num_steps
        return [Inversion(prompt=prompt, method=settings.method, image=crop, reconstruction=reconstruction,
                          x_T=latents[-1][b:b + 1], uncond_per_step=[u[b:b + 1] for u in uncond_per_step],
                          null_text_log=log, seconds=dict(timer.seconds), memory=dict(timer.memory),
                          settings=settings, group_size=len(prompts),
                          source=str(image) if isinstance(image, (str, os.PathLike)) else None)
                for b, (prompt, image, crop, reconstruction, log)
                in enumerate(zip(prompts, images, crops, reconstructions, logs))]

    def _crop(self, image) -> np.ndarray:
        size = self.backend.image_size  # 512 for SD v1
        if isinstance(image, (str, os.PathLike)):
            return load_square(image, size)
        return center_crop(image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image)), size)

    def edit(self, image, prompt: str | None = None, suppress=None, settings: SuppressionSettings | None = None,
             inversion: InversionSettings | str = "nt", steps: int = 50, guidance_scale: float = 7.5,
             decode: bool = True, approach: str = approaches.DEFAULT, approach_options: dict | None = None,
             seed: int = 2, **overrides) -> SuppressionResult:
        """Suppress ``suppress`` in a photo; ``image`` may also be an ``Inversion`` from ``invert``.
        ``decode=False`` skips the VAE decode of the result (``original``/``suppressed`` stay None): for
        work on the final latents alone, like diffusers' ``output_type="latent"``. ``approach``: SuppressEOT
        (default), an ablation or a baseline by name (``approaches.APPROACHES``; ``approach_options`` overrides a
        baseline's settings, ``seed`` seeds a baseline's own noise, LEDITS++'s inversion)."""
        return self.edit_many([image], None if prompt is None else [prompt], [suppress], settings, inversion,
                              steps, guidance_scale, decode, approach, approach_options, seed, **overrides)[0]

    def edit_many(self, images: list, prompts: list[str] | None, suppress: list,
                  settings: SuppressionSettings | None = None, inversion: InversionSettings | str = "nt",
                  steps: int = 50, guidance_scale: float = 7.5, decode: bool = True,
                  approach: str = approaches.DEFAULT, approach_options: dict | None = None, seed: int = 2,
                  **overrides) -> list[SuppressionResult]:
        """``edit`` for several photos (or ``Inversion``s) with shared settings, their UNet passes batched."""
        spec = self.approach(approach, "real")
        if any(isinstance(image, Inversion) for image in images):
            steps = len(next(image for image in images if isinstance(image, Inversion)).uncond_per_step) or steps
        inversion = InversionSettings(method=inversion) if isinstance(inversion, str) else inversion
        if not spec.is_suppresseot:
            if prompts is None:
                prompts = [image.prompt if isinstance(image, Inversion) else None for image in images]
            request = self._request(spec, "real", prompts, suppress, steps, guidance_scale, decode, approach_options,
                                    seeds=[seed] * len(images), images=list(images), inversion=inversion)
            return spec.runner("real")(self, request, spec)
        settings = self._settings(settings, {**overrides, **dict(spec.overrides)})  # before the inversion's minutes
        inverted = self.inverted(images, prompts, inversion, SamplingSettings(steps, guidance_scale))
        step_scale = settings.step_scale if settings.step_scale is not None else REAL_STEP_SCALE
        results = self._suppress_many("real", [inv.prompt for inv in inverted], suppress, settings,
                                      SamplingSettings(len(inverted[0].uncond_per_step), guidance_scale), step_scale,
                                      [inv.x_T for inv in inverted], [inv.uncond_per_step for inv in inverted],
                                      decode, spec)
        for result, inv in zip(results, inverted):
            result.inversion = inv
            result.seconds = {**inv.seconds, **result.seconds}
            result.memory = {**inv.memory, **result.memory}
        return results

    def inverted(self, images: list, prompts: list[str] | None, inversion: InversionSettings,
                 sampling: SamplingSettings) -> list[Inversion]:
        """The photos as ``Inversion``s: inverted now (``invert_many``), or as given where they already are."""
        if all(isinstance(image, Inversion) for image in images):
            inverted = list(images)
            for b, inv in enumerate(inverted):
                if prompts is not None and prompts[b] is not None and prompts[b] != inv.prompt:
                    raise SuppressEOTError("the prompt differs from the one the photo was inverted with")
            if any(len(inv.uncond_per_step) != len(inverted[0].uncond_per_step) for inv in inverted):
                raise SuppressEOTError("photos edited together must have been inverted with the same number "
                                       "of steps")
            if any(inv.x_T is None for inv in inverted):
                raise SuppressEOTError(f"this photo was inverted by {inverted[0].method}, not by `invert`: edit the "
                                       "photo itself")
            return inverted
        if any(isinstance(image, Inversion) for image in images):
            raise SuppressEOTError("edit_many takes photos or Inversions, not a mix of both")
        if prompts is None or any(p is None for p in prompts):
            raise SuppressEOTError("edit needs the prompt that describes the photo")
        return self.invert_many(images, prompts, inversion, steps=sampling.num_steps,
                                guidance_scale=sampling.guidance_scale)

    # --- generated images ---------------------------------------------------------------------
    def generate(self, prompt: str, suppress, seed: int = 2, settings: SuppressionSettings | None = None,
                 steps: int = 50, guidance_scale: float = 7.5, decode: bool = True,
                 approach: str = approaches.DEFAULT, approach_options: dict | None = None,
                 **overrides) -> SuppressionResult:
        """Generate from ``prompt`` with seed ``seed`` and suppress ``suppress`` (the official initial noise);
        ``decode=False``: latents only, as in ``edit``. ``approach``: SuppressEOT (default), an ablation or a
        baseline by name, e.g. ``model.generate(prompt, "glasses", approach="sega")`` (``approaches.APPROACHES``;
        ``approach_options`` overrides a baseline's settings)."""
        return self.generate_many([prompt], [suppress], [seed], settings, steps, guidance_scale, decode, approach,
                                  approach_options, **overrides)[0]

    def generate_many(self, prompts: list[str], suppress: list, seeds: list[int],
                      settings: SuppressionSettings | None = None, steps: int = 50, guidance_scale: float = 7.5,
                      decode: bool = True, approach: str = approaches.DEFAULT, approach_options: dict | None = None,
                      **overrides) -> list[SuppressionResult]:
        """``generate`` for several prompts (each with its own tokens and seed, shared settings), their UNet
        passes batched; each result equals ``generate``'s within the rounding of batched kernels."""
        if not (len(prompts) == len(suppress) == len(seeds)) or not prompts:
            raise SuppressEOTError("generate_many needs one token group and one seed per prompt")
        spec = self.approach(approach, "generated")
        if not spec.is_suppresseot:
            request = self._request(spec, "generated", prompts, suppress, steps, guidance_scale, decode,
                                    approach_options, seeds=[int(seed) for seed in seeds])
            return spec.runner("generated")(self, request, spec)
        settings = self._settings(settings, {**overrides, **dict(spec.overrides)})
        sampling = SamplingSettings(steps, guidance_scale).validate()
        step_scale = settings.step_scale if settings.step_scale is not None else GENERATED_STEP_SCALE
        for prompt in prompts:
            self.tokens(prompt)
        starts = [self.backend.initial_latent(int(seed)) for seed in seeds]
        with self.backend.no_grad():
            uncond = self._uncond()
        results = self._suppress_many("generated", prompts, suppress, settings, sampling, step_scale, starts,
                                      [[uncond] * sampling.num_steps] * len(prompts), decode, spec)
        for result, seed in zip(results, seeds):
            result.seed = int(seed)
        return results

    # --- shared -------------------------------------------------------------------------------
    def approach(self, name: str, kind: str) -> Approach:
        """The approach ``name``, checked against this kind of image, this model's family and this backend."""
        return approaches.get(name).check(kind=kind, family=self.family.name, backend=self.backend.name)

    def _request(self, spec: Approach, kind: str, prompts, suppress, steps, guidance_scale, decode, options,
                 **fields) -> Request:
        """A baseline's call, checked: prompts, token groups, sampling, the baseline's settings."""
        if len(suppress) != len(prompts) or not prompts:
            raise SuppressEOTError("give one prompt and one token group per task")
        if any(p is None for p in prompts):
            raise SuppressEOTError("edit needs the prompt that describes the photo")
        groups = [self._group(prompt, what)[1] for prompt, what in zip(prompts, suppress)]
        return Request(kind, list(prompts), groups, SamplingSettings(steps, guidance_scale).validate(),
                       options=spec.options(options), decode=decode, **fields)

    def _settings(self, settings: SuppressionSettings | None, overrides: dict) -> SuppressionSettings:
        """The settings with ``overrides``, checked, also against this model (where its maps are)."""
        settings = replace(settings or SuppressionSettings(), **overrides).validate()
        family = self.family
        read = [p for p in settings.ito_blocks if p in family.map_places and p in CROSS_REFERENCE_PLACES]
        if not read:
            side = family.maps_resolution
            raise SuppressEOTError(
                f"this {family.name} model has no {side}x{side} attention maps in the {','.join(settings.ito_blocks)} "
                f"block(s) where the reference cross-attention maps are read; its maps are in "
                f"{','.join(family.map_places) or 'no block'}: choose ITO blocks among those")
        return settings

    def _suppress_many(self, kind, prompts, suppress, settings, sampling, step_scale, starts,
                       uncond_per_step, decode: bool = True, spec: Approach | None = None) -> list[SuppressionResult]:
        """SWR + ITO sampling of K tasks together; ``starts`` and ``uncond_per_step`` hold one entry per task."""
        sampling.validate()
        if len(suppress) != len(prompts):
            raise SuppressEOTError("give one token group per prompt")
        groups = [self._group(prompt, what) for prompt, what in zip(prompts, suppress)]
        backend = self.backend
        schedule = self.family.schedule(sampling.num_steps)
        k = len(prompts)
        timer = StageTimer(backend)
        with timer("text_encoding"):
            text = backend.cat([self._embed(prompt) for prompt in prompts])
            text_np = backend.to_numpy(text)
        start = backend.cat(starts)
        uncond = [backend.cat([u[i] for u in uncond_per_step]) for i in range(schedule.num_steps)]
        with timer("swr_ito_sampling"):
            outs = pipeline.suppress_many(backend, schedule, start, text, text_np, uncond,
                                          [table.n for table, _ in groups], [group for _, group in groups],
                                          settings, sampling, step_scale, progress=self.progress,
                                          resolution=self.family.maps_resolution, layout=self.family.layout,
                                          on_step=self.on_step)
        spec = spec or approaches.get(approaches.DEFAULT)
        return [replace(result, settings=settings, step_scale=step_scale, cross_attention=out.cross_attention,
                        self_attention=out.self_attention, ito_log=out.ito_log,
                        swr_embedding=out.first_swr_embedding)
                for result, out in zip(self.pair_results(spec, approaches.describe(spec), kind, prompts,
                                                         [group for _, group in groups], sampling,
                                                         [out.final_latents for out in outs], timer, decode), outs)]

    def pair_results(self, spec: Approach, record: dict, kind: str, prompts: list[str], groups: list[list[int]],
                     sampling: SamplingSettings, finals: list, timer: StageTimer, decode: bool, seeds=None,
                     inverted=None) -> list[SuppressionResult]:
        """One result per task from its final latents (a backend tensor of (original, edited)), decoded here
        alike for every approach (the official conversion: clamp, x255, truncate)."""
        backend = self.backend
        images = [(None, None)] * len(prompts)
        if decode:
            with timer("vae_decode"):
                images = [[Image.fromarray(image) for image in backend.vae_decode(final)] for final in finals]
        info = backend.info()
        results = []
        for b, (prompt, group, final, pair) in enumerate(zip(prompts, groups, finals, images)):
            if not spec.is_suppresseot:  # the text the baseline was given
                record = {**record, "words": split_prompt(prompt, self.tokens(prompt).as_rows(), group)[1]}
            results.append(SuppressionResult(
                kind=kind, prompt=prompt, token_indices=group, tokens=self.tokens(prompt), original=pair[0],
                suppressed=pair[1], final_latents=backend.to_numpy(final).astype(np.float32), settings=None,
                sampling=sampling, step_scale=None, seed=None if seeds is None else seeds[b],
                inversion=None if inverted is None else inverted[b], seconds=dict(timer.seconds),
                memory=dict(timer.memory), backend_info=info, model=self.model, loras=self.loras,
                group_size=len(prompts), family=self.family.describe(), approach=spec.name, approach_settings=record))
        return results

    def guided_pairs(self, spec: Approach, request: Request, starts: list, original_uncond: list, edited_uncond: list,
                     inverted: list | None = None, options: dict | None = None) -> list[SuppressionResult]:
        """Original and edited branch of K tasks denoised side by side by plain guided DDIM
        (``pipeline.guided_sampling``), from the same start latents and conditional embeddings; they differ in
        their unconditional embedding per step (``*_uncond``: per task, a list over steps)."""
        backend, k = self.backend, len(request.prompts)
        schedule = self.family.schedule(request.sampling.num_steps)
        timer = StageTimer(backend)
        with timer("text_encoding"):
            text = backend.cat([self._embed(prompt) for prompt in request.prompts])
        start = backend.cat(starts)
        uncond = [backend.cat([u[i] for u in original_uncond] + [u[i] for u in edited_uncond])
                  for i in range(schedule.num_steps)]
        with timer("sampling"):
            latents = pipeline.guided_sampling(backend, schedule, backend.cat([start, start]), backend.cat([text, text]),
                                               uncond, request.sampling.guidance_scale, progress=self.progress,
                                               on_step=self.on_step, desc=spec.name)
        finals = [backend.cat([latents[b:b + 1], latents[k + b:k + b + 1]]) for b in range(k)]
        results = self.pair_results(spec, approaches.describe(spec, options or request.options), request.kind,
                                    request.prompts, request.groups, request.sampling, finals, timer, request.decode,
                                    inverted=inverted)
        for result in results:
            if result.inversion is not None:
                result.seconds = {**result.inversion.seconds, **result.seconds}
                result.memory = {**result.inversion.memory, **result.memory}
        return results
