"""Deterministic DDIM (eta = 0) sampling and inversion, shared by every backend.

The schedule is Stable Diffusion's (scaled-linear betas 0.00085..0.012, 1000 training steps,
"leading" timesteps with offset 1, alpha_prev of the last step = alphas_cumprod[0]), computed in float32
as diffusers does. Coefficients are Python floats holding float32 values, so multiplying a float32
tensor by them matches diffusers' arithmetic.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DDIMSchedule:
    num_steps: int
    alphas_cumprod: np.ndarray  # float32, one per training timestep
    timesteps: tuple[int, ...]  # descending, as sampled
    num_train_timesteps: int = 1000

    @classmethod
    def create(cls, num_steps: int, beta_start: float = 0.00085, beta_end: float = 0.012,
               num_train_timesteps: int = 1000, steps_offset: int = 1) -> "DDIMSchedule":
        if num_steps < 1 or num_steps > num_train_timesteps:
            raise ValueError(f"steps must be in 1..{num_train_timesteps}, got {num_steps}")
        betas = np.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps, dtype=np.float32) ** 2
        alphas_cumprod = np.cumprod(np.float32(1.0) - betas, dtype=np.float32)
        ratio = num_train_timesteps // num_steps
        timesteps = (np.arange(num_steps) * ratio).round()[::-1].astype(np.int64) + steps_offset
        return cls(num_steps, alphas_cumprod, tuple(int(t) for t in timesteps), num_train_timesteps)

    @property
    def step_ratio(self) -> int:
        return self.num_train_timesteps // self.num_steps

    def alpha(self, t: int) -> np.float32:
        """alphas_cumprod at t; before the first training step it is alphas_cumprod[0] (set_alpha_to_one=False)."""
        return self.alphas_cumprod[t] if t >= 0 else self.alphas_cumprod[0]

    @staticmethod
    def _move(sample, eps, alpha_from: np.float32, alpha_to: np.float32):
        """x_to = sqrt(a_to) * x0_pred + sqrt(1 - a_to) * eps, with x0_pred from x_from and eps."""
        one = np.float32(1.0)
        sqrt_from, sqrt_beta_from = float(np.sqrt(alpha_from)), float(np.sqrt(one - alpha_from))
        sqrt_to, sqrt_beta_to = float(np.sqrt(alpha_to)), float(np.sqrt(one - alpha_to))
        original = (sample - sqrt_beta_from * eps) / sqrt_from
        return sqrt_to * original + sqrt_beta_to * eps

    def step(self, eps, t: int, sample):
        """One denoising step from timestep t to t - ratio."""
        return self._move(sample, eps, self.alpha(t), self.alpha(t - self.step_ratio))

    def inverse_step(self, eps, t: int, sample):
        """One inversion step from t - ratio up to t (the noise is predicted at t, as the official code does)."""
        return self._move(sample, eps, self.alpha(min(t - self.step_ratio, self.num_train_timesteps - 1)),
                          self.alpha(t))

    def guidance_weights(self) -> np.ndarray:
        """The ITO step-size schedule sqrt(linspace(1, 0.1, steps)) of the official code."""
        return np.sqrt(np.linspace(1.0, 0.1, self.num_steps))
