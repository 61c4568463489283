"""SuppressEOT itself, written once for every backend: inversion, null-text optimization, SWR + ITO sampling.

Reads top to bottom like the method: each function takes a backend (models + a few tensor ops, see
``suppresseot.backends.base``), the DDIM schedule and plain settings, and returns tensors plus logs.
The defaults reproduce the official implementation step for step (batch layout included), so results
match it within float32 rounding.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from ..config import InversionSettings, SamplingSettings, SuppressionSettings
from .attention import ALL_PLACES, CROSS_REFERENCE_PLACES, AttentionRecorder
from .ddim import DDIMSchedule
from .losses import LossWeights, attention_loss, loss_weights
from .swr import soft_weight_regularize

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


# ----------------------------------------------------------------------------------------------
# Real photos: DDIM inversion and null-text optimization
# ----------------------------------------------------------------------------------------------

def ddim_inversion(backend, schedule: DDIMSchedule, latent, text, progress: bool = True) -> list:
    """Run DDIM backwards (conditional prediction only); returns the latents z_0 .. z_T."""
    latents = [latent]
    with backend.no_grad():
        for t in tqdm(schedule.timesteps[::-1], desc="DDIM inversion", disable=not progress, leave=False):
            eps = backend.unet(latent, t, text)
            latent = schedule.inverse_step(eps, t, latent)
            latents.append(latent)
    return latents


def adam_step(param, grad, state: dict, lr: float):
    """One Adam update with torch.optim.Adam's exact formula, so every backend optimizes identically."""
    beta1, beta2 = ADAM_BETAS
    state["step"] += 1
    step = state["step"]
    state["m"] = state["m"] * beta1 + grad * (1.0 - beta1)
    state["v"] = state["v"] * beta2 + grad * grad * (1.0 - beta2)
    bias_correction1 = 1.0 - beta1 ** step
    bias_correction2_sqrt = (1.0 - beta2 ** step) ** 0.5
    denom = state["v"].sqrt() / bias_correction2_sqrt + ADAM_EPS
    return param - (lr / bias_correction1) * state["m"] / denom


def null_text_optimization(backend, schedule: DDIMSchedule, latents: list, text, uncond,
                           settings: InversionSettings, guidance_scale: float, log: list,
                           progress: bool = True) -> list:
    """Optimize one unconditional embedding per step so guided DDIM retraces the inversion path.

    The embedding carries over from step to step; Adam restarts each step. ``log`` gets one row per
    evaluated loss (step, iteration, loss, seconds).
    """
    n = schedule.num_steps
    current = latents[-1]
    per_step = []
    bar = tqdm(total=n * settings.inner_steps, desc="Null-text optimization", disable=not progress, leave=False)
    for i, t in enumerate(schedule.timesteps):
        target = latents[n - 1 - i]
        with backend.no_grad():
            eps_cond = backend.unet(current, t, text)
        state = {"step": 0, "m": uncond * 0.0, "v": uncond * 0.0}
        lr = settings.learning_rate * (1.0 - i / 100.0)

        def reconstruction_loss(embedding):
            eps_uncond = backend.unet(current, t, embedding)
            eps = eps_uncond + guidance_scale * (eps_cond - eps_uncond)
            return ((schedule.step(eps, t, current) - target) ** 2).mean(), None

        for j in range(settings.inner_steps):
            started = time.perf_counter()
            loss, _, grad = backend.value_and_grad(reconstruction_loss, uncond)
            uncond = adam_step(uncond, grad, state, lr)
            value = backend.item(loss)
            log.append({"step": i, "timestep": t, "iteration": j, "loss": value,
                        "seconds": time.perf_counter() - started})
            bar.update()
            if value < settings.early_stop_epsilon + i * 2e-5:
                bar.update(settings.inner_steps - j - 1)
                break
        bar.set_postfix(loss=f"{value:.3g}")
        per_step.append(uncond)
        with backend.no_grad():
            eps = backend.unet(backend.cat([current, current]), t, backend.cat([uncond, text]))
            eps_uncond, eps_cond = eps[0:1], eps[1:2]
            current = schedule.step(eps_uncond + guidance_scale * (eps_cond - eps_uncond), t, current)
    bar.close()
    return per_step


# ----------------------------------------------------------------------------------------------
# SWR + ITO sampling of the two branches
# ----------------------------------------------------------------------------------------------

@dataclass
class SuppressionOutput:
    final_latents: object  # backend tensor (2, 4, 64, 64): original branch, suppressed branch
    first_swr_embedding: np.ndarray | None  # the edited embedding at the first regularized step (before ITO)
    ito_log: list = field(default_factory=list)  # rows: step, timestep, iteration, losses, seconds
    cross_attention: np.ndarray | None = None  # (2, 16, 16, 77) mean over steps, per branch
    self_attention: np.ndarray | None = None  # (2, 16, 16, 256)


def _maps(recorder: AttentionRecorder, backend, all_heads: bool, cross_places):
    cross = backend.to_float64(recorder.aggregate(True, cross_places, halves=not all_heads))
    self_ = backend.to_float64(recorder.aggregate(False, ALL_PLACES, halves=not all_heads))
    return cross, self_


def inference_time_optimization(backend, schedule: DDIMSchedule, step: int, t: int, latent_original,
                                latent_edited, text, edited, n_tokens: int, token_indices: list[int],
                                settings: SuppressionSettings, step_scale: float, log: list):
    """ITO at one step: gradient steps on the edited embedding that keep the other tokens' attention
    and push the negative tokens' attention away from the original branch's."""
    lambdas = settings.lambdas
    with backend.no_grad():
        recorder = AttentionRecorder()
        backend.unet(latent_original, t, text, recorder=recorder)
        cross_ref, self_ref = _maps(recorder, backend, settings.all_heads, CROSS_REFERENCE_PLACES)
        del recorder
    weights = loss_weights(backend.to_numpy(cross_ref), n_tokens, token_indices,
                           need_masks=bool(lambdas.self_retain or lambdas.self_erase))
    weights = {k: backend.from_numpy(v) for k, v in vars(weights).items()}
    factor = step_scale * float(schedule.guidance_weights()[step])

    def loss_of(embedding):
        recorder = AttentionRecorder()
        backend.unet(latent_edited, t, embedding, recorder=recorder)
        cross, self_ = _maps(recorder, backend, settings.all_heads, ALL_PLACES)
        return attention_loss(cross_ref, cross, self_ref, self_, weights, lambdas)

    rows = []
    for iteration in range(settings.iterations):
        started = time.perf_counter()
        loss, parts, grad = backend.value_and_grad(loss_of, edited)
        edited = edited - factor * grad
        rows.append((iteration, loss, parts, time.perf_counter() - started))
    for iteration, loss, parts, seconds in rows:  # read values once the step's work is queued
        log.append({"step": step, "timestep": t, "iteration": iteration,
                    **{k: backend.item(v) for k, v in parts.items()}, "total": backend.item(loss),
                    "seconds": seconds})
    return edited


def suppress(backend, schedule: DDIMSchedule, start_latent, text, text_np: np.ndarray, uncond_per_step: list,
             n_tokens: int, token_indices: list[int], settings: SuppressionSettings,
             sampling: SamplingSettings, step_scale: float, capture_maps: bool = True,
             progress: bool = True) -> SuppressionOutput:
    """Denoise the original and the suppressed branch side by side (the result is the second)."""
    guidance = sampling.guidance_scale
    first = settings.first_step(schedule.num_steps)
    ito_steps = settings.ito_steps(schedule.num_steps)
    latents = backend.cat([start_latent, start_latent])
    edited, regularized, first_swr = text, False, None
    out = SuppressionOutput(final_latents=None, first_swr_embedding=None)
    map_sums = None
    bar = tqdm(schedule.timesteps, desc="SuppressEOT", disable=not progress, leave=False)
    for i, t in enumerate(bar):
        if i >= first:  # SWR from the prompt's embedding at every step: ITO edits do not carry over
            edited_np = soft_weight_regularize(text_np, token_indices, n_tokens, settings.alpha, settings.method)
            regularized = not np.array_equal(edited_np, text_np)
            edited = backend.from_numpy(edited_np)
            if first_swr is None:
                first_swr = edited_np
        if i in ito_steps and regularized:
            edited = inference_time_optimization(backend, schedule, i, t, latents[0:1], latents[1:2], text, edited,
                                                 n_tokens, token_indices, settings, step_scale, out.ito_log)
            bar.set_postfix(loss=f"{out.ito_log[-1]['total']:.4g}")
        uncond = uncond_per_step[i]
        with backend.no_grad():
            recorder = AttentionRecorder() if capture_maps else None
            eps_uncond = backend.unet(latents, t, backend.cat([uncond, uncond]))
            eps_cond = backend.unet(latents, t, backend.cat([text, edited]), recorder=recorder)
            latents = schedule.step(eps_uncond + guidance * (eps_cond - eps_uncond), t, latents)
            if recorder is not None:
                step_maps = [recorder.aggregate(is_cross, CROSS_REFERENCE_PLACES, select=b)
                             for is_cross in (True, False) for b in (0, 1)]
                map_sums = step_maps if map_sums is None else [s + m for s, m in zip(map_sums, step_maps)]
                del recorder
    bar.close()
    out.final_latents = latents
    out.first_swr_embedding = first_swr
    if map_sums is not None:
        maps = [backend.to_numpy(m) / schedule.num_steps for m in map_sums]
        out.cross_attention = np.stack(maps[0:2])
        out.self_attention = np.stack(maps[2:4])
    return out


__all__ = ["ddim_inversion", "null_text_optimization", "adam_step", "inference_time_optimization", "suppress",
           "SuppressionOutput", "LossWeights"]
