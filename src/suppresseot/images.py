"""Reading photos the way the official code does, and drawing attention grids (Pillow only)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

from .errors import SuppressEOTError

SIZE = 512


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Open an image as 8-bit RGB whatever its mode (RGBA, L, P, CMYK, 16-bit), honouring EXIF rotation."""
    path = Path(path)
    if not path.exists():
        raise SuppressEOTError(f"image {path} does not exist: check the path")
    if path.is_dir():
        raise SuppressEOTError(f"{path} is a folder, not an image file")
    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
    except (UnidentifiedImageError, OSError) as exc:
        raise SuppressEOTError(f"cannot read {path} as an image ({exc}); give a JPEG or PNG file") from exc
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grey: rescale to 8 bits, do not clip
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "RGBA" or (image.mode == "P" and "transparency" in image.info):
        # the official code keeps the first three channels of RGBA (no compositing); do the same
        image = image.convert("RGBA")
        return Image.fromarray(np.asarray(image)[:, :, :3], "RGB")
    return image.convert("RGB")


def center_crop(image: Image.Image, size: int = SIZE) -> np.ndarray:
    """Centre square crop, resized to size x size (Pillow's bicubic), as the official ``load_512`` at 512."""
    array = np.asarray(image)
    h, w = array.shape[:2]
    if h < w:
        offset = (w - h) // 2
        array = array[:, offset:offset + h]
    elif w < h:
        offset = (h - w) // 2
        array = array[offset:offset + w]
    return np.array(Image.fromarray(array).resize((size, size), Image.Resampling.BICUBIC))


def load_square(path: str | os.PathLike, size: int = SIZE) -> np.ndarray:
    """A photo file as the model's square input (see ``center_crop``)."""
    return center_crop(load_rgb(path), size)


def _map_image(values: np.ndarray, size: int) -> Image.Image:
    peak = values.max()
    scaled = 255 * values / peak if peak > 0 else values * 0
    return Image.fromarray(scaled.astype(np.uint8), "L").resize((size, size), Image.Resampling.BILINEAR)


def cross_attention_grid(maps: np.ndarray, labels: list[str], row_names: list[str], cell: int = 128) -> Image.Image:
    """Rows of per-token cross-attention maps (rows: branches; maps: (rows, res, res, tokens)) with labels."""
    font = ImageFont.load_default()
    label_h, name_w = 18, 90
    rows, cols = maps.shape[0], len(labels)
    grid = Image.new("RGB", (name_w + cols * cell, rows * (cell + label_h)), "white")
    draw = ImageDraw.Draw(grid)
    for r in range(rows):
        y = r * (cell + label_h)
        draw.text((4, y + cell // 2), row_names[r], fill="black", font=font)
        for c in range(cols):
            grid.paste(_map_image(maps[r, :, :, c], cell).convert("RGB"), (name_w + c * cell, y))
            text = labels[c][:16]
            width = draw.textlength(text, font=font)
            draw.text((name_w + c * cell + (cell - width) / 2, y + cell + 3), text, fill="black", font=font)
    return grid


def self_attention_grid(maps: np.ndarray, cell: int = 32) -> Image.Image:
    """The self-attention map of every key pixel (res x res grid of res x res maps), like the official figure."""
    res = maps.shape[0]
    grid = Image.new("L", (res * cell, res * cell))
    for k in range(res * res):
        grid.paste(_map_image(maps[:, :, k], cell), ((k % res) * cell, (k // res) * cell))
    return grid
