"""Preservation: how much of what should not change did the edit keep, between original.png and suppressed.png?

CLIPScore against the prompt without the suppressed words says whether the rest is still *described*;
these say whether it is still *there*, for every approach alike:

* ``clip_image_similarity``: cosine of the two images' CLIP image embeddings (1: CLIP sees the same image);
* ``ssim``: structural similarity (Wang et al. 2004, scikit-image) of the two RGB images (1: identical);
* ``ssim_outside_boxes``: the SSIM map averaged outside the detector's boxes of the suppressed object, so
  the region that is meant to change does not count against the edit. SSIM at a pixel looks at a
  window around it, so a box is widened by the window's radius: a pixel counts only if its window
  touches no box. With no box it equals ``ssim``.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from ..errors import SuppressEOTError
from . import short_error

WIN_SIZE = 7  # scikit-image's default window for SSIM on images without gaussian weights
Box = tuple[int, int, int, int]  # xmin, ymin, xmax, ymax in pixels, as the detector pipeline gives them


def require_skimage():
    """scikit-image's SSIM, or a one-line error saying what to install (checked before any model loads)."""
    try:
        from skimage.metrics import structural_similarity
    except ImportError as exc:
        raise SuppressEOTError(f"eval needs scikit-image for SSIM ({short_error(exc)}): "
                               f"pip install 'suppresseot[eval]'") from exc
    return structural_similarity


def size_mismatch(original: Image.Image, suppressed: Image.Image) -> str | None:
    """Why SSIM cannot compare the two images (it is per pixel), or None when it can."""
    if original.size != suppressed.size:
        return f"original {original.size[0]}x{original.size[1]} and suppressed {suppressed.size[0]}x" \
               f"{suppressed.size[1]} differ in size: no SSIM"
    if min(original.size) < WIN_SIZE:
        return f"images smaller than SSIM's {WIN_SIZE}-pixel window: no SSIM"
    return None


def ssim_map(original: Image.Image, suppressed: Image.Image) -> tuple[float, np.ndarray]:
    """SSIM of two same-size images and its per-pixel map (H x W, the mean over the RGB channels)."""
    structural_similarity = require_skimage()
    a, b = (np.asarray(image.convert("RGB")) for image in (original, suppressed))
    score, full = structural_similarity(a, b, channel_axis=-1, data_range=255, win_size=WIN_SIZE, full=True)
    return float(score), full.mean(axis=-1)


def ssim(original: Image.Image, suppressed: Image.Image) -> float:
    return ssim_map(original, suppressed)[0]


def outside_mask(shape: tuple[int, int], boxes: list[Box], win_size: int = WIN_SIZE) -> np.ndarray:
    """Pixels whose SSIM window lies inside the image and touches none of ``boxes``.

    The border of half a window is left out as scikit-image leaves it out of its mean, so with no box
    the mask's mean of the map is exactly ``ssim``. Boxes are clipped to the image; ``xmax``/``ymax``
    count as inside.
    """
    height, width = shape
    pad = (win_size - 1) // 2
    mask = np.zeros(shape, bool)
    mask[pad:height - pad, pad:width - pad] = True
    for xmin, ymin, xmax, ymax in boxes:
        top, left = max(0, int(ymin) - pad), max(0, int(xmin) - pad)
        bottom, right = min(height, int(ymax) + pad + 1), min(width, int(xmax) + pad + 1)
        if bottom > top and right > left:
            mask[top:bottom, left:right] = False
    return mask


def masked_mean(values: np.ndarray, mask: np.ndarray) -> float | None:
    """The mean over ``mask``; None when the boxes cover the whole image."""
    return float(values[mask].mean(dtype=np.float64)) if mask.any() else None


def ssim_outside_boxes(original: Image.Image, suppressed: Image.Image, boxes: list[Box]) -> float | None:
    """SSIM of what lies outside ``boxes`` (the suppressed object's, from both images); ``ssim`` without boxes."""
    _, full = ssim_map(original, suppressed)
    return masked_mean(full, outside_mask(full.shape, boxes))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two embeddings (CLIPScorer's are unit vectors already; normalised again anyway)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def clip_image_similarity(scorer, original: Image.Image, suppressed: Image.Image) -> float:
    """Cosine of the two images' CLIP image embeddings (``scorer``: a ``CLIPScorer``)."""
    return cosine(*scorer.embed_images([original, suppressed]))
