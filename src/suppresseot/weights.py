"""Finding Stable Diffusion weights: a local diffusers folder or a Hugging Face hub id.

Both backends load from a local diffusers folder, so a hub id is first downloaded (only the files
SuppressEOT needs: configs, tokenizer, safetensors of the text encoder, UNet and VAE) into the usual
hub cache.
"""
from __future__ import annotations

import os
from pathlib import Path

from .errors import SuppressEOTError

DEFAULT_MODEL = "CompVis/stable-diffusion-v1-4"
COMPONENTS = ("text_encoder", "unet", "vae", "tokenizer")
HUB_PATTERNS = [
    "model_index.json", "scheduler/*.json", "tokenizer/*", "tokenizer_2/*",
    "text_encoder/config.json", "text_encoder/model.safetensors",
    "text_encoder_2/config.json", "text_encoder_2/model.safetensors",  # SDXL
    "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
]


def _is_hub_id(model: str) -> bool:
    """Hub ids are ``owner/name``; anything else (``./x``, ``/x``, ``~/x``, ``a/b/c``) is a path."""
    return not model.startswith((".", "/", "~")) and model.count("/") == 1 and "\\" not in model


def check_model_folder(path: Path) -> Path:
    missing = [c for c in COMPONENTS if not (path / c).is_dir()]
    if missing:
        raise SuppressEOTError(
            f"{path} is not a Stable Diffusion folder in the diffusers layout: it lacks {', '.join(missing)}/; "
            f"give a folder saved with diffusers (save_pretrained) or a hub id such as {DEFAULT_MODEL}")
    return path


def resolve_model(model: str | os.PathLike) -> Path:
    """A local diffusers folder for ``model`` (a folder path or a hub id), downloading if needed."""
    model = str(model)
    path = Path(model).expanduser()
    if path.is_dir():
        return check_model_folder(path)
    if not _is_hub_id(model):
        raise SuppressEOTError(
            f"model folder {model} does not exist: give an existing diffusers folder or a hub id "
            f"such as {DEFAULT_MODEL}")
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(model, allow_patterns=HUB_PATTERNS)
    except Exception as exc:  # offline, unknown repo, gated repo, ...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SuppressEOTError(
            f"could not get {model} from the Hugging Face hub ({type(exc).__name__}: {reason[:200]}); "
            f"check the network and the model id (`huggingface-cli login` for gated models), "
            f"or pass a local diffusers folder with --model") from exc
    return check_model_folder(Path(local))
