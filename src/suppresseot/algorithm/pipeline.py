"""SuppressEOT itself, written once for every backend: inversion, null-text optimization, SWR + ITO sampling.

Reads top to bottom like the method: each function takes a backend (models + a few tensor ops, see
``suppresseot.backends.base``), the DDIM schedule and plain settings, and returns tensors plus logs.
The defaults reproduce the official implementation step for step (batch layout included), so results
match it within float32 rounding.

Model families (``suppresseot.families``) enter as data: the schedule (v-prediction outputs become noise
predictions in ``as_noise``), the maps' resolution and the embedding layout SWR reads.

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
from .attention import ALL_PLACES, CROSS_REFERENCE_PLACES, RESOLUTION, AttentionRecorder
from .ddim import DDIMSchedule, as_noise, divide_by_scalar, move
from .losses import LossWeights, attention_loss, loss_weights
from .swr import EmbeddingLayout, soft_weight_regularize

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


# ----------------------------------------------------------------------------------------------
# Real photos: DDIM inversion and null-text optimization
# ----------------------------------------------------------------------------------------------

def ddim_inversion(backend, schedule: DDIMSchedule, latent, text, progress: bool = True, on_step=None) -> list:
    """Run DDIM backwards (conditional prediction only); returns the latents z_0 .. z_T. ``on_step(stage, i)``,
    here and in the other loops, is called before every step: raising there stops the run (the app's Cancel)."""
    prediction_type = schedule.prediction_type
    def inversion_step(latent, t, text, coefficients, conversion):
        eps = as_noise(backend.unet(latent, t, text), latent, conversion, prediction_type)
        return move(latent, eps, coefficients)

    step = backend.compile_step(inversion_step)
    latents = [latent]
    with backend.no_grad():
        for i, t in enumerate(tqdm(schedule.timesteps[::-1], desc="DDIM inversion", disable=not progress,
                                   leave=False)):
            if on_step is not None:
                on_step("ddim_inversion", i)
            latent = step(latent, t, text, schedule.inverse_coefficients(t), schedule.noise_conversion(t))
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
                           settings: InversionSettings, guidance_scale: float, logs: list[list],
                           progress: bool = True, on_step=None) -> list:
    """Optimize one unconditional embedding per step so guided DDIM retraces the inversion path.

    The embedding carries over from step to step; Adam restarts each step. Several photos (K, stacked
    along the batch) are optimized together, each with its own loss, Adam state and early stop: a photo
    that stopped keeps its embedding while the others go on. ``logs`` holds one list per photo, which
    gets one row per evaluated loss (step, iteration, loss, seconds).
    """
    k = len(logs)

    def guided(eps_uncond, eps_cond):
        return eps_uncond + guidance_scale * (eps_cond - eps_uncond)

    prediction_type = schedule.prediction_type

    def conditional_noise(current, t, text, conversion):
        return as_noise(backend.unet(current, t, text), current, conversion, prediction_type)

    def optimization_step(uncond, m, v, current, t, eps_cond, target, coefficients, conversion, step_size,
                          bias_correction2):
        def reconstruction_loss(embedding):
            eps = guided(as_noise(backend.unet(current, t, embedding), current, conversion, prediction_type),
                         eps_cond)
            error = (move(current, eps, coefficients) - target) ** 2
            if k == 1:  # the official loss, reduced as it reduces it
                return error.mean(), None
            per_photo = error.reshape(k, -1).mean(1)  # photos are independent: d(sum)/d(own) = d(own)
            return per_photo.sum(), {"per_photo": per_photo}

        loss, aux, grad = backend.value_and_grad(reconstruction_loss, uncond)
        uncond, m, v = adam_update(uncond, grad, m, v, step_size, bias_correction2)
        return uncond, m, v, loss if aux is None else aux["per_photo"]

    def denoising_step(current, t, uncond, text, coefficients, conversion):
        doubled = backend.cat([current, current])
        eps = as_noise(backend.unet(doubled, t, backend.cat([uncond, text])), doubled, conversion,
                       prediction_type)
        return move(current, guided(eps[0:k], eps[k:2 * k]), coefficients)

    def unconditional_step(current, t, uncond, eps_cond, coefficients, conversion):
        # the same step reusing the conditional half, which the step's first pass computed on the same latent
        eps_uncond = as_noise(backend.unet(current, t, uncond), current, conversion, prediction_type)
        return move(current, guided(eps_uncond, eps_cond), coefficients)

    conditional_noise = backend.compile_step(conditional_noise)
    optimization_step = backend.compile_step(optimization_step)
    if backend.repeated_samples_once:
        unconditional_step = backend.compile_step(unconditional_step)
    else:
        denoising_step = backend.compile_step(denoising_step)
    n = schedule.num_steps
    current = latents[-1]
    per_step = []
    iterations_last_step = settings.inner_steps
    bar = tqdm(total=n * settings.inner_steps, desc="Null-text optimization", disable=not progress, leave=False)
    for i, t in enumerate(schedule.timesteps):
        if on_step is not None:
            on_step("null_text", i)
        target = latents[n - 1 - i]
        coefficients, conversion = schedule.coefficients(t), schedule.noise_conversion(t)
        with backend.no_grad():
            eps_cond = conditional_noise(current, t, text, conversion)
        m, v = uncond * 0.0, uncond * 0.0
        lr = settings.learning_rate * (1.0 - i / 100.0)
        threshold = settings.early_stop_epsilon + i * 2e-5

        def launch(j, uncond, m, v):
            return optimization_step(uncond, m, v, current, t, eps_cond, target, coefficients, conversion,
                                     *adam_scalars(j + 1, lr))

        active = [True] * k
        pending = launch(0, uncond, m, v)
        started = time.perf_counter()
        for j in range(settings.inner_steps):
            updated, m, v, loss = pending
            # a photo that stopped keeps its embedding (the batch still computes it; its update is dropped)
            uncond = updated if all(active) else backend.cat(
                [updated[b:b + 1] if active[b] else uncond[b:b + 1] for b in range(k)])
            loss_on_host = backend.read_later(loss)
            # The next iteration's input does not depend on this loss, so it is queued before the early-stop
            # read, and the device need not idle while the host reads. Where the previous step stopped by now,
            # this one probably will too, and the read comes first (a stop discards a queued iteration: time,
            # not values).
            pending = None
            if j + 1 < min(settings.inner_steps, iterations_last_step):
                pending = launch(j + 1, uncond, m, v)
            values = [float(x) for x in loss_on_host().reshape(-1)]  # one host read for all photos
            seconds, started = time.perf_counter() - started, time.perf_counter()
            for b in range(k):
                if active[b]:
                    logs[b].append({"step": i, "timestep": t, "iteration": j, "loss": values[b], "seconds": seconds})
            bar.update()
            active = [a and not value < threshold for a, value in zip(active, values)]
            if not any(active):
                bar.update(settings.inner_steps - j - 1)
                break
            if pending is None and j + 1 < settings.inner_steps:
                pending = launch(j + 1, uncond, m, v)
        iterations_last_step = j + 1
        bar.set_postfix(loss=f"{max(values):.3g}")
        per_step.append(uncond)
        with backend.no_grad():
            current = (unconditional_step(current, t, uncond, eps_cond, coefficients, conversion)
                       if backend.repeated_samples_once else
                       denoising_step(current, t, uncond, text, coefficients, conversion))
    bar.close()
    return per_step


# ----------------------------------------------------------------------------------------------
# SWR + ITO sampling of the two branches
# ----------------------------------------------------------------------------------------------

@dataclass
class SuppressionOutput:
    final_latents: object  # backend tensor (2, 4, 64, 64) for SD v1: original branch, suppressed branch
    first_swr_embedding: np.ndarray | None  # the edited embedding at the first regularized step (before ITO)
    ito_log: list = field(default_factory=list)  # rows: step, timestep, iteration, losses, seconds
    cross_attention: np.ndarray | None = None  # (2, res, res, 77) mean over steps, per branch (SD v1: res 16)
    self_attention: np.ndarray | None = None  # (2, res, res, res * res)


def _maps(recorder: AttentionRecorder, backend, all_heads: bool, cross_places, tasks: int):
    """(K, res, res, keys) float64 cross and self maps of a pass over K tasks' edited (or original) branch,
    from the places the recorder kept."""
    cross_places = [p for p in cross_places if p in recorder.places]
    cross = backend.to_float64(recorder.aggregate(True, cross_places, halves=not all_heads, tasks=tasks))
    self_ = backend.to_float64(recorder.aggregate(False, recorder.places, halves=not all_heads, tasks=tasks))
    return cross, self_


def _stack(backend, scalars: list):
    """K backend scalars as one (K,) tensor (one host read for all tasks)."""
    return backend.cat([x.reshape(1) for x in scalars])


class InferenceTimeOptimization:
    """ITO: gradient steps on the edited embedding that keep the other tokens' attention and push the
    negative tokens' attention away from the original branch's.

    Built once per sampling run, so the backend can compile its two passes (the reference maps of the
    original branch, and one loss + gradient step on the edited branch) for reuse at every step. Several
    tasks (K, stacked along the batch) are optimized together: each has its own maps, masks and loss, and
    since the tasks are independent, the gradient of the summed losses is each task's own gradient.
    """

    def __init__(self, backend, schedule: DDIMSchedule, n_tokens: list[int], token_indices: list[list[int]],
                 settings: SuppressionSettings, step_scale: float, resolution: int = RESOLUTION):
        self.backend, self.schedule = backend, schedule
        self.n_tokens, self.token_indices = n_tokens, token_indices
        self.settings, self.step_scale = settings, step_scale
        all_heads, lambdas = settings.all_heads, settings.lambdas
        tasks = len(n_tokens)

        places = settings.ito_blocks

        def reference_maps(latent_original, t, text):
            recorder = AttentionRecorder(resolution, batch=tasks, places=places)
            backend.record_attention(latent_original, t, text, recorder)
            return _maps(recorder, backend, all_heads, CROSS_REFERENCE_PLACES, tasks)

        def optimization_step(edited, latent_edited, t, cross_reference, self_reference, weights, factor):
            def loss_of(embedding):
                recorder = AttentionRecorder(resolution, batch=tasks, places=places)
                backend.record_attention(latent_edited, t, embedding, recorder)
                cross, self_ = _maps(recorder, backend, all_heads, ALL_PLACES, tasks)
                totals, parts = zip(*(attention_loss(cross_reference[b], cross[b], self_reference[b], self_[b],
                                                     weights[b], lambdas) for b in range(tasks)))
                loss = totals[0]
                for total in totals[1:]:
                    loss = loss + total
                per_task = {name: _stack(backend, [p[name] for p in parts]) for name in parts[0]}
                return loss, {**per_task, "total": _stack(backend, list(totals))}

            loss, per_task, grad = backend.value_and_grad(loss_of, edited)
            return edited - factor * grad, per_task

        self.reference_maps = backend.compile_step(reference_maps)
        self.optimization_step = backend.compile_step(optimization_step)

    def __call__(self, step: int, t: int, latent_original, latent_edited, text, edited, logs: list[list]):
        """Optimize ``edited`` (K tasks) at sampling step ``step``; appends one row per iteration to each
        task's log."""
        backend, settings = self.backend, self.settings
        lambdas = settings.lambdas
        with backend.no_grad():
            cross_reference, self_reference = self.reference_maps(latent_original, t, text)
        # the masks need the reference maps on the host: the step's only synchronization
        cross_np = backend.to_numpy(cross_reference)
        need_masks = bool(lambdas.self_retain or lambdas.self_erase)
        weights = [{k: backend.from_numpy(v) for k, v in vars(loss_weights(
            cross_np[b], n, indices, need_masks=need_masks)).items()}
            for b, (n, indices) in enumerate(zip(self.n_tokens, self.token_indices))]
        factor = self.step_scale * float(self.schedule.guidance_weights()[step])
        rows = []
        started = time.perf_counter()
        for _ in range(settings.iterations):
            edited, per_task = self.optimization_step(edited, latent_edited, t, cross_reference, self_reference,
                                                      weights, factor)
            rows.append(per_task)
        # read values once the step's work is queued; the reads wait for it, so the step's time is known after
        # them. An iteration's own time is not: on a GPU it is queued, not done, when the next one is
        # (timing each would take a synchronization each), so every row gets the step's mean.
        rows = [{name: backend.to_numpy(v).reshape(-1) for name, v in per_task.items()} for per_task in rows]
        seconds = (time.perf_counter() - started) / max(len(rows), 1)
        for iteration, values in enumerate(rows):
            for b, log in enumerate(logs):
                log.append({"step": step, "timestep": t, "iteration": iteration,
                            **{name: float(v[b]) for name, v in values.items() if name != "total"},
                            "total": float(values["total"][b]), "seconds": seconds})
        return edited


def suppress_many(backend, schedule: DDIMSchedule, start_latent, text, text_np: np.ndarray, uncond_per_step: list,
                  n_tokens: list[int], token_indices: list[list[int]], settings: SuppressionSettings,
                  sampling: SamplingSettings, step_scale: float, capture_maps: bool = True,
                  progress: bool = True, resolution: int = RESOLUTION,
                  layout: EmbeddingLayout | None = None, on_step=None) -> list[SuppressionOutput]:
    """Denoise the original and the suppressed branch side by side (the result is the second), for K tasks
    at once: ``start_latent``, ``text`` and each ``uncond_per_step`` entry hold K samples (``text_np``:
    (K, 77, D)), each task with its own tokens; they share the settings. The UNet sees the K originals,
    then the K edited samples (K = 1: the official batch layout). ``resolution``: the side of the maps the ITO
    losses read (the family's); ``layout``: the embedding's column blocks and pooled row (see ``swr``)."""
    tasks = len(n_tokens)
    guidance = sampling.guidance_scale
    first = settings.first_step(schedule.num_steps)
    ito_steps = settings.ito_steps(schedule.num_steps)
    ito = InferenceTimeOptimization(backend, schedule, n_tokens, token_indices, settings, step_scale, resolution)
    prediction_type = schedule.prediction_type

    one_pass = backend.one_pass_guidance

    def make_denoising_step(branches: int):
        """One guided DDIM step of ``branches`` x K samples: both branches (original, edited), or where they are
        the same image (before SWR starts, ``repeated_samples_once``) the original alone. Returns the latents and
        the step's maps, (cross, self) x (original, edited)."""
        def denoising_step(latents, t, uncond, text, edited, coefficients, conversion):
            # the official layout: the unconditional pass, then the conditional one, which alone is recorded;
            # ``one_pass_guidance`` runs both as one pass of twice the batch (the same samples)
            n = branches * tasks
            unconds, conds = backend.cat([uncond] * branches), backend.cat([text, edited][:branches])
            recorder = AttentionRecorder(resolution, batch=n, skip=n if one_pass else 0) if capture_maps else None
            if one_pass:
                both = backend.cat([latents, latents])
                eps = as_noise(backend.unet(both, t, backend.cat([unconds, conds]), recorder=recorder), both,
                               conversion, prediction_type)
                eps_uncond, eps_cond = eps[0:n], eps[n:]
            else:
                eps_uncond = as_noise(backend.unet(latents, t, unconds), latents, conversion, prediction_type)
                eps_cond = as_noise(backend.unet(latents, t, conds, recorder=recorder), latents, conversion,
                                    prediction_type)
            latents = move(latents, eps_uncond + guidance * (eps_cond - eps_uncond), coefficients)
            if recorder is None:
                return latents, []
            if branches == 1:  # the edited branch's maps are the original's
                return latents, [recorder.aggregate(is_cross, CROSS_REFERENCE_PLACES, halves=False, tasks=tasks)
                                 for is_cross in (True, True, False, False)]
            return latents, [recorder.aggregate(is_cross, CROSS_REFERENCE_PLACES, select=b, tasks=tasks, branches=2)
                             for is_cross in (True, False) for b in (0, 1)]
        return backend.compile_step(denoising_step)

    both_branches = make_denoising_step(2)
    one_branch = make_denoising_step(1) if backend.repeated_samples_once else None
    latents = backend.cat([start_latent, start_latent])
    # SWR of the prompt's embedding: the official code redoes it at every step from step ``first`` on (ITO
    # edits do not carry over); it depends on nothing that changes, so it is done once, uploaded once
    swr, swr_regularized, swr_embedding = [], [False] * tasks, None
    if first < schedule.num_steps:
        swr = [soft_weight_regularize(text_np[b:b + 1], token_indices[b], n_tokens[b], settings.alpha,
                                      settings.method, layout, settings.pooled) for b in range(tasks)]
        # as the official code, no ITO where SWR changed nothing; alpha 0 (s * exp(0): SWR the identity) is the
        # ITO-only ablation, where ITO works on the prompt's own embedding
        swr_regularized = [settings.alpha == 0 or not np.array_equal(e, text_np[b:b + 1]) for b, e in enumerate(swr)]
        swr_embedding = backend.from_numpy(np.concatenate(swr))
    edited, regularized = text, [False] * tasks
    outs = [SuppressionOutput(final_latents=None, first_swr_embedding=None) for _ in range(tasks)]
    map_sums = None
    bar = tqdm(schedule.timesteps, desc="SuppressEOT" if tasks == 1 else f"SuppressEOT ({tasks} tasks)",
               disable=not progress, leave=False)
    for i, t in enumerate(bar):
        if on_step is not None:
            on_step("swr_ito_sampling", i)
        if i >= first:  # from the SWR embedding at every step: ITO edits do not carry over
            edited, regularized = swr_embedding, swr_regularized
            if i == first:
                for out, e in zip(outs, swr):
                    out.first_swr_embedding = e
        if i in ito_steps and any(regularized):
            logs = [out.ito_log if r else [] for out, r in zip(outs, regularized)]  # as the official: no ITO
            optimized = ito(i, t, latents[0:tasks], latents[tasks:], text, edited, logs)  # where SWR changed nothing
            edited = optimized if all(regularized) else backend.cat(
                [optimized[b:b + 1] if r else edited[b:b + 1] for b, r in enumerate(regularized)])
            bar.set_postfix(loss=f"{max(o.ito_log[-1]['total'] for o, r in zip(outs, regularized) if r):.4g}")
        uncond = uncond_per_step[i]
        arguments = (t, uncond, text, edited, schedule.coefficients(t), schedule.noise_conversion(t))
        with backend.no_grad():
            if i < first and backend.repeated_samples_once:  # the branches are the same image until SWR starts
                latent, step_maps = one_branch(latents[0:tasks], *arguments)
                latents = backend.cat([latent, latent])
            else:
                latents, step_maps = both_branches(latents, *arguments)
        if step_maps:
            map_sums = step_maps if map_sums is None else [s + m for s, m in zip(map_sums, step_maps)]
    bar.close()
    maps = None if map_sums is None else [backend.to_numpy(m) / schedule.num_steps for m in map_sums]
    for b, out in enumerate(outs):
        out.final_latents = backend.cat([latents[b:b + 1], latents[tasks + b:tasks + b + 1]])
        if maps is not None:
            out.cross_attention = np.stack([maps[0][b], maps[1][b]])
            out.self_attention = np.stack([maps[2][b], maps[3][b]])
    return outs


def guided_sampling(backend, schedule: DDIMSchedule, start_latent, text, uncond_per_step: list,
                    guidance_scale: float, progress: bool = True, on_step=None, desc: str = "Sampling"):
    """Classifier-free guided DDIM of B samples from ``start_latent``, each with its own conditional embedding
    (``text``) and, at every step, its own unconditional one (``uncond_per_step[i]``, B rows): the official
    two passes, unconditional then conditional, without SWR or ITO. What baselines that edit the guidance
    itself sample with (a negative prompt in place of the null-text of an inverted photo)."""
    prediction_type = schedule.prediction_type

    def denoising_step(latents, t, uncond, text, coefficients, conversion):
        eps_uncond = as_noise(backend.unet(latents, t, uncond), latents, conversion, prediction_type)
        eps_cond = as_noise(backend.unet(latents, t, text), latents, conversion, prediction_type)
        return move(latents, eps_uncond + guidance_scale * (eps_cond - eps_uncond), coefficients)

    step = backend.compile_step(denoising_step)
    latents = start_latent
    with backend.no_grad():
        for i, t in enumerate(tqdm(schedule.timesteps, desc=desc, disable=not progress, leave=False)):
            if on_step is not None:
                on_step("sampling", i)
            latents = step(latents, t, uncond_per_step[i], text, schedule.coefficients(t),
                           schedule.noise_conversion(t))
    return latents


__all__ = ["ddim_inversion", "null_text_optimization", "adam_step", "adam_update", "InferenceTimeOptimization",
           "suppress_many", "SuppressionOutput", "LossWeights", "guided_sampling"]
