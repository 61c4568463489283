"""The baselines as users run them: diffusers' own pipelines, each behind a thin adapter.

Each pipeline is built on the loaded model's modules (``TorchBackend.diffusers_pipeline``: no second copy of
the weights; one load serves SuppressEOT and every baseline) and run as diffusers runs it, with its
documented defaults (``approaches.APPROACHES``). An adapter only makes the pair every approach gives: the
**original** with the edit switched off (no negative prompt, no editing prompt, safety guidance 0, weight 1;
LEDITS++: its reconstruction) and the **edited** image, from the same initial noise (``initial_latent``,
what diffusers draws for a CPU ``torch.Generator().manual_seed(seed)``) or the same photo. Both come back
as latents and are decoded by ``SuppressEOT.pair_results`` alike for every approach.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from .api import Inversion, StageTimer
from .approaches import Approach, Request


def _pipeline(model, approach: Approach, scheduler: str = "ddim"):
    return model.backend.diffusers_pipeline(dict(approach.pipelines)[model.family.name], scheduler)


def _on_step(model, stage: str):
    """The app's Cancel (``SuppressEOT.on_step``) as diffusers' step callback (``callback_on_step_end``)."""
    def callback(pipe, i, t, kwargs):
        if model.on_step is not None:
            model.on_step(stage, i)
        return kwargs

    return callback


def _progress(model, pipe, stage: str) -> None:
    pipe.set_progress_bar_config(disable=not model.progress, leave=False, desc=stage)


def _generated(model, request: Request, approach: Approach, call, attention: str = "diffusers") -> list:
    """Original and edited image of each task: ``call(pipe, prompt, group, words, latents, edit, stage)``
    runs the baseline's pipeline once, the edit on or off, and returns its final latents."""
    backend = model.backend
    pipe = _pipeline(model, approach)
    results = []
    for prompt, group, words, seed in zip(request.prompts, request.groups, request.words(model), request.seeds):
        timer = StageTimer(backend)
        start = backend.initial_latent(int(seed))
        pair = []
        for stage, edit in (("sampling_original", False), ("sampling_edited", True)):
            _progress(model, pipe, f"{approach.name} ({stage.split('_')[1]})")
            with backend.pipeline_session(attention), timer(stage):
                pair.append(call(pipe, prompt, group, words, start.to(pipe.unet.dtype), edit, stage).float())
        final = backend.cat(pair)
        results += model.pair_results(approach, _record(approach, request), request.kind, [prompt], [group],
                                      request.sampling, [final], timer, request.decode, seeds=[int(seed)])
    return results


def _record(approach: Approach, request: Request) -> dict:
    from .approaches import describe

    return describe(approach, request.options)


def _sampling(request: Request, latents) -> dict:
    return dict(num_inference_steps=request.sampling.num_steps, guidance_scale=request.sampling.guidance_scale,
                latents=latents, output_type="latent")


def negative_prompt(model, request: Request, approach: Approach) -> list:
    """diffusers' StableDiffusionPipeline (SDXL: StableDiffusionXLPipeline) with the words as negative prompt."""
    def call(pipe, prompt, group, words, latents, edit, stage):
        return pipe(prompt, negative_prompt=words if edit else None, callback_on_step_end=_on_step(model, stage),
                    **_sampling(request, latents)).images

    return _generated(model, request, approach, call)


def attention_reweight(model, request: Request, approach: Approach) -> list:
    """Prompt-to-Prompt's attention reweighting in diffusers' plain pipeline: under guidance the UNet sees
    [negative, prompt]; the prompt's row scales the words' cross-attention by ``scale`` in every layer and step
    (this project's attention processors, ``TorchBackend.reweighted_cross_attention``)."""
    import contextlib

    scale = float(request.options["scale"])
    rows = 2 if request.sampling.guidance_scale > 1 else 1  # diffusers' pipelines guide only above 1

    def call(pipe, prompt, group, words, latents, edit, stage):
        weights = np.ones((rows, 77), np.float32)
        weights[rows - 1, group] = scale
        with model.backend.reweighted_cross_attention(weights) if edit else contextlib.nullcontext():
            return pipe(prompt, callback_on_step_end=_on_step(model, stage), **_sampling(request, latents)).images

    return _generated(model, request, approach, call, attention="recording")


def sega(model, request: Request, approach: Approach) -> list:
    """diffusers' SemanticStableDiffusionPipeline: the words as an editing prompt, guidance reversed."""
    o = request.options

    def call(pipe, prompt, group, words, latents, edit, stage):
        edit_kwargs = dict(editing_prompt=[words], reverse_editing_direction=[True],
                           edit_guidance_scale=[o["edit_guidance_scale"]], edit_warmup_steps=[o["edit_warmup_steps"]],
                           edit_threshold=[o["edit_threshold"]], edit_momentum_scale=o["edit_momentum_scale"],
                           edit_mom_beta=o["edit_mom_beta"]) if edit else {}
        return pipe(prompt, callback=lambda i, t, _: model.on_step and model.on_step(stage, i),
                    **_sampling(request, latents), **edit_kwargs).images

    return _generated(model, request, approach, call)


def safe_latent_diffusion(model, request: Request, approach: Approach) -> list:
    """diffusers' StableDiffusionPipelineSafe with the words as its safety concept; safety guidance scale 0 (off)
    for the original. The pipeline always decodes its image: its final latents are taken at its last step."""
    o = request.options

    def call(pipe, prompt, group, words, latents, edit, stage):
        final = []

        def keep(i, t, step_latents):
            if model.on_step is not None:
                model.on_step(stage, i)
            final[:] = [step_latents]

        pipe.safety_concept = words
        settings = {k: o[k] for k in ("sld_warmup_steps", "sld_threshold", "sld_momentum_scale", "sld_mom_beta")}
        pipe(prompt, sld_guidance_scale=o["sld_guidance_scale"] if edit else 0.0, callback=keep, callback_steps=1,
             **{**_sampling(request, latents), "output_type": "np"}, **settings)
        return final[0]

    return _generated(model, request, approach, call)


def ledits_pp(model, request: Request, approach: Approach) -> list:
    """diffusers' LEDITS++ pipeline: its own inversion (DDPM noise maps, DPM-Solver++ SDE as it defaults to) of
    the photo's centre crop, its reconstruction as the original, the words removed by reversed guidance."""
    import torch

    backend, o = model.backend, request.options
    pipe = _pipeline(model, approach, scheduler="dpm-sde")
    results = []
    for image, prompt, group, words, seed in zip(request.images, request.prompts, request.groups,
                                                 request.words(model), request.seeds):
        timer = StageTimer(backend)
        crop = image.image if isinstance(image, Inversion) else model._crop(image)
        pair = []
        # one session: the attention processors its inversion sets are the ones its edits run with, as in diffusers
        with backend.pipeline_session():
            with timer("inversion"):
                _progress(model, pipe, "LEDITS++ inversion")
                inverted = pipe.invert(image=Image.fromarray(crop), source_prompt=prompt,
                                       source_guidance_scale=o["source_guidance_scale"],
                                       num_inversion_steps=request.sampling.num_steps, skip=o["skip"],
                                       generator=torch.Generator().manual_seed(int(seed)))
            for stage, edit in (("sampling_original", False), ("sampling_edited", True)):
                edit_kwargs = dict(editing_prompt=[words], reverse_editing_direction=[True],
                                   edit_guidance_scale=[o["edit_guidance_scale"]],
                                   edit_warmup_steps=[o["edit_warmup_steps"]],
                                   edit_threshold=[o["edit_threshold"]]) if edit else {}
                _progress(model, pipe, f"{approach.name} ({stage.split('_')[1]})")
                with timer(stage):
                    pair.append(pipe(output_type="latent", callback_on_step_end=_on_step(model, stage),
                                     **edit_kwargs).images.float())
        reconstruction = np.asarray(inverted.vae_reconstruction_images[0].convert("RGB"))
        record = Inversion(prompt=prompt, method=approach.name, image=crop, reconstruction=reconstruction, x_T=None,
                           uncond_per_step=[], settings={"method": approach.name, "seed": int(seed),
                                                         "num_inversion_steps": request.sampling.num_steps,
                                                         "source_guidance_scale": o["source_guidance_scale"],
                                                         "skip": o["skip"], "scheduler": type(pipe.scheduler).__name__},
                           source=None if isinstance(image, (Inversion, np.ndarray, Image.Image)) else str(image))
        results += model.pair_results(approach, _record(approach, request), "real", [prompt], [group],
                                      request.sampling, [backend.cat(pair)], timer, request.decode, inverted=[record])
    return results
