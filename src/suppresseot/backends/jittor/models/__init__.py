"""Native Jittor Stable Diffusion 1.x / 2.x / SDXL models with diffusers/transformers parameter names.

Importing this package imports jittor through ``env.ensure_jittor`` (offline-safe environment defaults,
compile output to a log, ``BackendUnavailable`` on failure); call ``env.import_jittor(device)`` to pick
the device.
"""
from ..env import ensure_jittor

ensure_jittor()

from .clip import CLIPTextModel, CLIPTextModelWithProjection  # noqa: E402
from .layers import Attention  # noqa: E402
from .unet import UNet2DConditionModel  # noqa: E402
from .vae import AutoencoderKL  # noqa: E402

__all__ = ["Attention", "AutoencoderKL", "CLIPTextModel", "CLIPTextModelWithProjection", "UNet2DConditionModel"]
