"""The thin interface the shared algorithm needs from a framework.

A backend holds the three Stable Diffusion models of one framework and the few tensor operations that
differ between frameworks (creating tensors, gradients, no-grad scopes, memory statistics). The
algorithm itself (SWR, ITO losses, attention aggregation, DDIM, inversion, null-text optimization)
lives in ``suppresseot.algorithm`` and uses only these methods plus arithmetic operators,
``reshape``, ``sum``, ``sqrt``, ``mean`` and indexing, which torch tensors and jittor Vars share.
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Callable, Protocol

import numpy as np

Tensor = Any  # torch.Tensor or jittor.Var


def sample_sizes(unet_config: dict, vae_config: dict) -> tuple[int, int]:
    """(latent side, image side) of the model's square samples, the sizes diffusers' pipelines default to:
    the UNet's ``sample_size`` (SD v1: 64) and 2^(VAE blocks - 1) times that in pixels (512). The official
    code fixes 64 and 512; reading them keeps SD v1 as it was and lets smaller test models run smaller."""
    from ..errors import SuppressEOTError

    latent = unet_config.get("sample_size", 64)
    if isinstance(latent, (list, tuple)):
        if len(set(latent)) != 1:
            raise SuppressEOTError(f"the UNet's sample_size {list(latent)} is not square; SuppressEOT needs an "
                                   "SD v1 model (square 64x64 latents)")
        latent = latent[0]
    blocks = len(vae_config.get("block_out_channels", (128, 256, 512, 512)))
    return int(latent), int(latent) * 2 ** (blocks - 1)


class Backend(Protocol):
    name: str  # "torch" or "jittor"
    device: str  # "cpu" or "cuda"
    dtype: str  # model dtype: "float32", "float16" or "bfloat16"
    latent_size: int  # side of the square latents (SD v1: 64), see ``sample_sizes``
    image_size: int  # side of the square images (SD v1: 512)
    # sampling's guidance as one UNet pass over [uncond, cond] instead of the official two (same samples, half
    # the launches: for backends whose time goes to the host per op, not to the GPU's arithmetic)
    one_pass_guidance: bool
    # a sample the official batches compute twice is computed once and reused (fast modes only; other rounding):
    # sampling's steps before SWR starts, where both branches are the same image, and the conditional half of
    # null-text's step-closing denoising pass, which the step's first pass already computed
    repeated_samples_once: bool

    # --- models -------------------------------------------------------------------------------
    def encode_text(self, ids: list[int]) -> Tensor:
        """(1, 77, D) last hidden state of the CLIP text encoder for 77 padded token ids."""

    def unet(self, latents: Tensor, t: int, context: Tensor, recorder=None) -> Tensor:
        """Noise prediction; ``recorder(probs, is_cross, place)`` receives every layer's attention."""

    def record_attention(self, latents: Tensor, t: int, context: Tensor, recorder) -> None:
        """``unet(..., recorder)`` for the maps alone: stops after the last block holding attention at
        ``recorder.resolution`` (the later blocks cannot change the maps or their gradients)."""

    def vae_encode(self, image: np.ndarray) -> Tensor:
        """(1, 4, h/8, w/8) latent (distribution mean times the scaling factor) of an RGB uint8 image."""

    def vae_decode(self, latents: Tensor) -> np.ndarray:
        """(B, H, W, 3) uint8 images, converted as the official code does (clamp, x255, truncate)."""

    def initial_latent(self, seed: int) -> Tensor:
        """(1, 4, latent_size, latent_size) starting noise, drawn as the official code does for a seed."""

    # --- tensors ------------------------------------------------------------------------------
    def from_numpy(self, array: np.ndarray) -> Tensor: ...

    def to_numpy(self, tensor: Tensor) -> np.ndarray: ...

    def read_later(self, tensor: Tensor) -> Callable[[], np.ndarray]:
        """Start copying ``tensor`` to the host; the returned function waits for that copy and returns it.
        Work queued in between runs on while the host waits (the PyTorch backend on a GPU)."""

    def to_float64(self, tensor: Tensor) -> Tensor: ...

    def cat(self, tensors: list[Tensor]) -> Tensor: ...

    def item(self, tensor: Tensor) -> float: ...

    def value_and_grad(self, fn: Callable[[Tensor], tuple[Tensor, Any]], x: Tensor) -> tuple[Tensor, Any, Tensor]:
        """Evaluate ``loss, aux = fn(x)`` with gradients on, return (loss, aux, d loss / d x) detached."""

    def no_grad(self) -> AbstractContextManager: ...

    def compile_step(self, fn: Callable) -> Callable:
        """``fn`` or a faster equivalent for calling it many times with same-shaped arguments.

        ``fn`` takes tensors, Python numbers and tuples/lists/dicts of those, and returns the same kinds;
        it must be pure (all it reads that changes between calls comes in as an argument). The PyTorch
        backend replays a captured CUDA graph, the Jittor backend on CUDA a static graph (both kept for
        later images, see ``step_cache``); otherwise ``fn`` itself.
        """

    # --- bookkeeping --------------------------------------------------------------------------
    def synchronize(self) -> None: ...

    def reset_peak_memory(self) -> None: ...

    def release_cache(self, graphs: bool = False) -> None:
        """Hand cached, unused device memory back (between batch tasks), so one task's peak is its own;
        ``graphs``: also the captured steps kept for later images (and the memory they work in)."""

    def peak_memory(self) -> dict:
        """{'allocated': bytes, 'reserved': bytes} since the last reset (None where not measurable)."""

    def info(self) -> dict:
        """Versions and settings for run.json."""
