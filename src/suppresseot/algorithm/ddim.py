"""Deterministic DDIM (eta = 0) sampling and inversion, shared by every backend.

The default schedule is Stable Diffusion's (scaled-linear betas 0.00085..0.012, 1000 training steps,
"leading" timesteps with offset 1, alpha_prev of the last step = alphas_cumprod[0]); ``from_config`` reads
a model's scheduler config (SD 2, SDXL) the way diffusers' DDIMScheduler does. Computed in float32 as
diffusers does: coefficients are Python floats holding float32 values, so multiplying a float32 tensor by
them matches diffusers' arithmetic. v-prediction models' outputs become noise predictions in one place
(``as_noise``), so ``move`` and everything built on it serve both prediction types.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def divide_by_scalar(x, value, reciprocal):
    """``x / value`` for a Python float, ``x * reciprocal`` for a 0-d tensor (inside a CUDA graph).

    PyTorch's CUDA kernels divide by a Python scalar as a multiplication by its float32 reciprocal, a
    device tensor by true division; passing ``reciprocal = float32(1) / float32(value)`` keeps a graph's
    arithmetic bitwise equal to the eager run's (and CPU / Jittor runs keep their plain division).
    """
    return x / value if isinstance(value, (int, float, np.floating)) else x * reciprocal


def move(sample, eps, coefficients):
    """One deterministic DDIM move: x_to = sqrt(a_to) * x0_pred + sqrt(1 - a_to) * eps, x0_pred from x_from, eps.

    The coefficients (``DDIMSchedule.coefficients``) are floats, or 0-d tensors when the step runs inside a
    captured CUDA graph. A plain function, so the pipeline's step functions close over it and not over a
    schedule: a graph captured for one step count serves every other.
    """
    sqrt_from, sqrt_beta_from, sqrt_to, sqrt_beta_to, inverse_sqrt_from = coefficients
    original = divide_by_scalar(sample - sqrt_beta_from * eps, sqrt_from, inverse_sqrt_from)
    return sqrt_to * original + sqrt_beta_to * eps


def as_noise(prediction, sample, conversion, prediction_type: str):
    """The noise prediction eps from a UNet output at ``sample``: the output itself for epsilon models,
    eps = sqrt(a_t) * v + sqrt(1 - a_t) * x_t for v-prediction ones (``conversion`` =
    ``DDIMSchedule.noise_conversion(t)``, t the timestep the UNet saw). ``prediction_type`` is a constant the
    step functions close over, ``conversion`` always two numbers: a CUDA graph's arguments are tensors and
    numbers only, and its cache tells the two kinds of step apart by what they close over."""
    if prediction_type == "epsilon":
        return prediction
    sqrt_alpha, sqrt_beta = conversion
    return sqrt_alpha * prediction + sqrt_beta * sample


@dataclass(frozen=True)
class DDIMSchedule:
    num_steps: int
    alphas_cumprod: np.ndarray  # float32, one per training timestep
    timesteps: tuple[int, ...]  # descending, as sampled
    num_train_timesteps: int = 1000
    prediction_type: str = "epsilon"  # or "v_prediction"
    set_alpha_to_one: bool = False  # alpha before the first training step: 1, or alphas_cumprod[0]

    @classmethod
    def create(cls, num_steps: int, beta_start: float = 0.00085, beta_end: float = 0.012,
               num_train_timesteps: int = 1000, steps_offset: int = 1, beta_schedule: str = "scaled_linear",
               timestep_spacing: str = "leading", prediction_type: str = "epsilon",
               set_alpha_to_one: bool = False) -> "DDIMSchedule":
        if num_steps < 1 or num_steps > num_train_timesteps:
            raise ValueError(f"steps must be in 1..{num_train_timesteps}, got {num_steps}")
        if beta_schedule == "scaled_linear":
            betas = np.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps, dtype=np.float32) ** 2
        else:  # "linear"
            betas = np.linspace(beta_start, beta_end, num_train_timesteps, dtype=np.float32)
        alphas_cumprod = np.cumprod(np.float32(1.0) - betas, dtype=np.float32)
        if timestep_spacing == "leading":
            ratio = num_train_timesteps // num_steps
            timesteps = (np.arange(num_steps) * ratio).round()[::-1].astype(np.int64) + steps_offset
        elif timestep_spacing == "trailing":
            timesteps = np.round(np.arange(num_train_timesteps, 0, -num_train_timesteps / num_steps)).astype(np.int64) - 1
        else:  # "linspace"
            timesteps = np.linspace(0, num_train_timesteps - 1, num_steps).round()[::-1].astype(np.int64)
        return cls(num_steps, alphas_cumprod, tuple(int(t) for t in timesteps), num_train_timesteps,
                   prediction_type, bool(set_alpha_to_one))

    @classmethod
    def from_config(cls, num_steps: int, config) -> "DDIMSchedule":
        """The schedule of a ``families.ScheduleConfig`` (a model's scheduler config)."""
        return cls.create(num_steps, config.beta_start, config.beta_end, config.num_train_timesteps,
                          config.steps_offset, config.beta_schedule, config.timestep_spacing,
                          config.prediction_type, config.set_alpha_to_one)

    @property
    def step_ratio(self) -> int:
        return self.num_train_timesteps // self.num_steps

    def alpha(self, t: int) -> np.float32:
        """alphas_cumprod at t; before the first training step alphas_cumprod[0] (or 1 with set_alpha_to_one)."""
        if t >= 0:
            return self.alphas_cumprod[t]
        return np.float32(1.0) if self.set_alpha_to_one else self.alphas_cumprod[0]

    def noise_conversion(self, t: int) -> tuple[float, float]:
        """``as_noise``'s coefficients for a UNet output at timestep t: (sqrt a_t, sqrt(1 - a_t)) as float32
        values (used by v-prediction models only)."""
        alpha = self.alpha(t)
        return float(np.sqrt(alpha)), float(np.sqrt(np.float32(1.0) - alpha))

    @staticmethod
    def coefficients_between(alpha_from: np.float32, alpha_to: np.float32) -> tuple[float, ...]:
        """(sqrt a_from, sqrt(1 - a_from), sqrt a_to, sqrt(1 - a_to), 1 / sqrt a_from): Python floats holding
        float32 values (the last one for ``divide_by_scalar``)."""
        one = np.float32(1.0)
        sqrt_from = np.sqrt(alpha_from)
        return (float(sqrt_from), float(np.sqrt(one - alpha_from)), float(np.sqrt(alpha_to)),
                float(np.sqrt(one - alpha_to)), float(one / sqrt_from))

    def coefficients(self, t: int) -> tuple[float, ...]:
        """The ``move`` coefficients of one denoising step from timestep t to t - ratio."""
        return self.coefficients_between(self.alpha(t), self.alpha(t - self.step_ratio))

    def inverse_coefficients(self, t: int) -> tuple[float, ...]:
        """The ``move`` coefficients of one inversion step from t - ratio up to t (noise predicted at t, as
        the official code does)."""
        return self.coefficients_between(self.alpha(min(t - self.step_ratio, self.num_train_timesteps - 1)),
                                         self.alpha(t))

    def step(self, eps, t: int, sample):
        """One denoising step from timestep t to t - ratio."""
        return move(sample, eps, self.coefficients(t))

    def inverse_step(self, eps, t: int, sample):
        """One inversion step from t - ratio up to t."""
        return move(sample, eps, self.inverse_coefficients(t))

    def guidance_weights(self) -> np.ndarray:
        """The ITO step-size schedule sqrt(linspace(1, 0.1, steps)) of the official code."""
        return np.sqrt(np.linspace(1.0, 0.1, self.num_steps))
