"""SuppressEOT itself, written once for every backend: inversion, null-text optimization, SWR + ITO sampling.

Reads top to bottom like the method: each function takes a backend (models + a few tensor ops, see
``suppresseot.backends.base``), the DDIM schedule and plain settings, and returns tensors plus logs.
The defaults reproduce the official implementation step for step (batch layout included), so results
match it within float32 rounding.

Each repeated step (an inversion step, a null-text iteration, an ITO pass, a denoising step) is a pure
function of tensors and numbers handed to ``backend.compile_step``: whatever changes between calls comes
in as an argument, so the PyTorch backend can replay it as a CUDA graph.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from ..config import InversionSettings, SamplingSettings, SuppressionSettings
from .attention import ALL_PLACES, CROSS_REFERENCE_PLACES, AttentionRecorder
from .ddim import DDIMSchedule, divide_by_scalar
from .losses import LossWeights, attention_loss, loss_weights
from .swr import soft_weight_regularize

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


# ----------------------------------------------------------------------------------------------
# Real photos: DDIM inversion and null-text optimization
# ----------------------------------------------------------------------------------------------

def ddim_inversion(backend, schedule: DDIMSchedule, latent, text, progress: bool = True) -> list:
    """Run DDIM backwards (conditional prediction only); returns the latents z_0 .. z_T."""
    def inversion_step(latent, t, text, coefficients):
        return schedule.move(latent, backend.unet(latent, t, text), coefficients)

    step = backend.compile_step(inversion_step)
    latents = [latent]
    with backend.no_grad():
        for t in tqdm(schedule.timesteps[::-1], desc="DDIM inversion", disable=not progress, leave=False):
            latent = step(latent, t, text, schedule.inverse_coefficients(t))
            latents.append(latent)
    return latents


def adam_scalars(step: int, lr: float) -> tuple[float, tuple[float, float]]:
    """Adam's step size lr / (1 - beta1^step) and the divisor sqrt(1 - beta2^step) (with its float32
    reciprocal, see ``divide_by_scalar``) for 1-based ``step``."""
    beta1, beta2 = ADAM_BETAS
    bias_correction2_sqrt = (1.0 - beta2 ** step) ** 0.5
    return lr / (1.0 - beta1 ** step), (bias_correction2_sqrt, float(np.float32(1) / np.float32(bias_correction2_sqrt)))


def adam_update(param, grad, m, v, step_size, bias_correction2_sqrt):
    """One Adam update with torch.optim.Adam's exact formula, so every backend optimizes identically."""
    beta1, beta2 = ADAM_BETAS
    m = m * beta1 + grad * (1.0 - beta1)
    v = v * beta2 + grad * grad * (1.0 - beta2)
    denom = divide_by_scalar(v.sqrt(), *bias_correction2_sqrt) + ADAM_EPS
    return param - step_size * m / denom, m, v


def adam_step(param, grad, state: dict, lr: float):
    """``adam_update`` on a state dict {"step", "m", "v"}, as torch.optim.Adam keeps it."""
    state["step"] += 1
    param, state["m"], state["v"] = adam_update(param, grad, state["m"], state["v"], *adam_scalars(state["step"], lr))
    return param


def null_text_optimization(backend, schedule: DDIMSchedule, latents: list, text, uncond,
                           settings: InversionSettings, guidance_scale: float, log: list,
                           progress: bool = True) -> list:
    """Optimize one unconditional embedding per step so guided DDIM retraces the inversion path.

    The embedding carries over from step to step; Adam restarts each step. ``log`` gets one row per
    evaluated loss (step, iteration, loss, seconds).
    """
    def guided(eps_uncond, eps_cond):
        return eps_uncond + guidance_scale * (eps_cond - eps_uncond)

    def conditional_noise(current, t, text):
        return backend.unet(current, t, text)

    def optimization_step(uncond, m, v, current, t, eps_cond, target, coefficients, step_size, bias_correction2):
        def reconstruction_loss(embedding):
            eps = guided(backend.unet(current, t, embedding), eps_cond)
            return ((schedule.move(current, eps, coefficients) - target) ** 2).mean(), None

        loss, _, grad = backend.value_and_grad(reconstruction_loss, uncond)
        uncond, m, v = adam_update(uncond, grad, m, v, step_size, bias_correction2)
        return uncond, m, v, loss

    def denoising_step(current, t, uncond, text, coefficients):
        eps = backend.unet(backend.cat([current, current]), t, backend.cat([uncond, text]))
        return schedule.move(current, guided(eps[0:1], eps[1:2]), coefficients)

    conditional_noise = backend.compile_step(conditional_noise)
    optimization_step = backend.compile_step(optimization_step)
    denoising_step = backend.compile_step(denoising_step)
    n = schedule.num_steps
    current = latents[-1]
    per_step = []
    bar = tqdm(total=n * settings.inner_steps, desc="Null-text optimization", disable=not progress, leave=False)
    for i, t in enumerate(schedule.timesteps):
        target = latents[n - 1 - i]
        coefficients = schedule.coefficients(t)
        with backend.no_grad():
            eps_cond = conditional_noise(current, t, text)
        m, v = uncond * 0.0, uncond * 0.0
        lr = settings.learning_rate * (1.0 - i / 100.0)
        for j in range(settings.inner_steps):
            started = time.perf_counter()
            uncond, m, v, loss = optimization_step(uncond, m, v, current, t, eps_cond, target, coefficients,
                                                   *adam_scalars(j + 1, lr))
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
            current = denoising_step(current, t, uncond, text, coefficients)
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


class InferenceTimeOptimization:
    """ITO: gradient steps on the edited embedding that keep the other tokens' attention and push the
    negative tokens' attention away from the original branch's.

    Built once per sampling run, so the backend can compile its two passes (the reference maps of the
    original branch, and one loss + gradient step on the edited branch) for reuse at every step.
    """

    def __init__(self, backend, schedule: DDIMSchedule, n_tokens: int, token_indices: list[int],
                 settings: SuppressionSettings, step_scale: float):
        self.backend, self.schedule = backend, schedule
        self.n_tokens, self.token_indices = n_tokens, token_indices
        self.settings, self.step_scale = settings, step_scale
        all_heads, lambdas = settings.all_heads, settings.lambdas

        def reference_maps(latent_original, t, text):
            recorder = AttentionRecorder()
            backend.unet(latent_original, t, text, recorder=recorder)
            return _maps(recorder, backend, all_heads, CROSS_REFERENCE_PLACES)

        def optimization_step(edited, latent_edited, t, cross_reference, self_reference, weights, factor):
            def loss_of(embedding):
                recorder = AttentionRecorder()
                backend.unet(latent_edited, t, embedding, recorder=recorder)
                cross, self_ = _maps(recorder, backend, all_heads, ALL_PLACES)
                return attention_loss(cross_reference, cross, self_reference, self_, weights, lambdas)

            loss, parts, grad = backend.value_and_grad(loss_of, edited)
            return edited - factor * grad, loss, parts

        self.reference_maps = backend.compile_step(reference_maps)
        self.optimization_step = backend.compile_step(optimization_step)

    def __call__(self, step: int, t: int, latent_original, latent_edited, text, edited, log: list):
        """Optimize ``edited`` at sampling step ``step``; appends one row per iteration to ``log``."""
        backend, settings = self.backend, self.settings
        lambdas = settings.lambdas
        with backend.no_grad():
            cross_reference, self_reference = self.reference_maps(latent_original, t, text)
        # the masks need the reference maps on the host: the step's only synchronization
        weights = loss_weights(backend.to_numpy(cross_reference), self.n_tokens, self.token_indices,
                               need_masks=bool(lambdas.self_retain or lambdas.self_erase))
        weights = {k: backend.from_numpy(v) for k, v in vars(weights).items()}
        factor = self.step_scale * float(self.schedule.guidance_weights()[step])
        rows = []
        for iteration in range(settings.iterations):
            started = time.perf_counter()
            edited, loss, parts = self.optimization_step(edited, latent_edited, t, cross_reference, self_reference,
                                                         weights, factor)
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
    ito = InferenceTimeOptimization(backend, schedule, n_tokens, token_indices, settings, step_scale)

    def denoising_step(latents, t, uncond, text, edited, coefficients):
        recorder = AttentionRecorder() if capture_maps else None
        eps_uncond = backend.unet(latents, t, backend.cat([uncond, uncond]))
        eps_cond = backend.unet(latents, t, backend.cat([text, edited]), recorder=recorder)
        latents = schedule.move(latents, eps_uncond + guidance * (eps_cond - eps_uncond), coefficients)
        maps = [] if recorder is None else [recorder.aggregate(is_cross, CROSS_REFERENCE_PLACES, select=b)
                                            for is_cross in (True, False) for b in (0, 1)]
        return latents, maps

    denoising_step = backend.compile_step(denoising_step)
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
            edited = ito(i, t, latents[0:1], latents[1:2], text, edited, out.ito_log)
            bar.set_postfix(loss=f"{out.ito_log[-1]['total']:.4g}")
        uncond = uncond_per_step[i]
        with backend.no_grad():
            latents, step_maps = denoising_step(latents, t, uncond, text, edited, schedule.coefficients(t))
        if step_maps:
            map_sums = step_maps if map_sums is None else [s + m for s, m in zip(map_sums, step_maps)]
    bar.close()
    out.final_latents = latents
    out.first_swr_embedding = first_swr
    if map_sums is not None:
        maps = [backend.to_numpy(m) / schedule.num_steps for m in map_sums]
        out.cross_attention = np.stack(maps[0:2])
        out.self_attention = np.stack(maps[2:4])
    return out


__all__ = ["ddim_inversion", "null_text_optimization", "adam_step", "adam_update", "InferenceTimeOptimization",
           "suppress", "SuppressionOutput", "LossWeights"]
