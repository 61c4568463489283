"""Loading a diffusers Stable Diffusion folder into the Jittor models, without torch.

``.safetensors`` files are parsed here (8-byte header length, JSON header, raw little-endian data), so
float32, float16 and bfloat16 checkpoints all load with numpy alone (numpy has no bfloat16: its raw
bits are widened to float32, which is exact).
"""
from __future__ import annotations

import json
import mmap
import re
import struct
from pathlib import Path

import numpy as np

from ...errors import SuppressEOTError
from .env import ensure_jittor

_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
           "U8": "u1", "BOOL": "?"}
_MODEL_DTYPES = ("float32", "float16", "bfloat16")


def load_safetensors_numpy(path) -> dict[str, np.ndarray]:
    """Every tensor of a .safetensors file as a numpy array (bfloat16 becomes float32; arrays are read-only)."""
    path = Path(path)
    with open(path, "rb") as f:
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    (n,) = struct.unpack("<Q", buf[:8])
    header = json.loads(buf[8:8 + n])
    header.pop("__metadata__", None)
    out = {}
    for name, info in header.items():
        start, end = (8 + n + o for o in info["data_offsets"])
        shape, dtype = tuple(info["shape"]), info["dtype"]
        if dtype == "BF16":
            raw = np.frombuffer(buf, dtype="<u2", count=(end - start) // 2, offset=start)
            arr = (raw.astype(np.uint32) << 16).view(np.float32)
        elif dtype in _DTYPES:
            arr = np.frombuffer(buf, dtype=_DTYPES[dtype], count=(end - start) // np.dtype(_DTYPES[dtype]).itemsize,
                                offset=start)
        else:
            raise SuppressEOTError(f"{path}: tensor {name} has dtype {dtype}, which the Jittor loader does not read")
        out[name] = arr.reshape(shape)
    return out


# -- checkpoint key conventions -------------------------------------------------------------------

_OLD_VAE_ATTN = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def _rename_text_encoder(state: dict) -> dict:
    """transformers >= 5 saves CLIPTextModel without the ``text_model.`` prefix; old files carry position_ids."""
    return {(k if k.startswith(("text_model.", "text_projection.")) else "text_model." + k): v
            for k, v in state.items() if not k.endswith("position_ids")}


def _rename_vae(state: dict) -> dict:
    """Old VAE checkpoints (e.g. CompVis v1-4) name the mid-block attention query/key/value/proj_attn."""
    pattern = re.compile(r"(mid_block\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$")
    out = {}
    for k, v in state.items():
        m = pattern.search(k)
        if m:
            k = k[: m.start()] + f"{m.group(1)}.{_OLD_VAE_ATTN[m.group(2)]}.{m.group(3)}"
            if v.ndim == 4:  # 1x1-conv form of a linear layer
                v = v[:, :, 0, 0]
        out[k] = v
    return out


def load_state(module, state: dict, what: str, dtype: str = "float32") -> None:
    """Copy ``state`` into ``module``'s parameters (names and shapes must match exactly), cast to ``dtype``."""
    jt = ensure_jittor()

    params = module.state_dict()
    missing = sorted(set(params) - set(state))
    unexpected = sorted(set(state) - set(params))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise SuppressEOTError(f"{what}: the checkpoint does not match the Jittor model: {'; '.join(parts)}")
    for name, param in params.items():
        arr = state[name]
        if tuple(arr.shape) != tuple(param.shape):
            raise SuppressEOTError(f"{what}: {name} has shape {tuple(arr.shape)} in the checkpoint, "
                                   f"the model expects {tuple(param.shape)}")
        if arr.dtype.kind == "f":
            arr = arr.astype(np.float16 if dtype == "float16" else np.float32)
        value = jt.array(arr)
        if dtype == "bfloat16" and arr.dtype.kind == "f":
            value = value.bfloat16()
        param.assign(value)
    jt.sync(list(params.values()))  # materialise now, so the numpy/mmap buffers can go


# -- diffusers folders ----------------------------------------------------------------------------


def _weights_file(folder: Path, stem: str) -> Path:
    for name in (f"{stem}.safetensors", f"{stem}.fp16.safetensors"):
        if (folder / name).is_file():
            return folder / name
    others = sorted(p.name for p in folder.glob(f"{stem}*")) if folder.is_dir() else []
    hint = f" (found {', '.join(others)}; only .safetensors is read without torch)" if others else ""
    raise SuppressEOTError(f"no {stem}.safetensors in {folder}{hint}")


def _config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise SuppressEOTError(f"{path} is missing: expected a diffusers Stable Diffusion folder")
    return json.loads(path.read_text())


def load_component(model_dir, name: str, dtype: str = "float32"):
    """Build and load one of ``text_encoder``, ``text_encoder_2`` (SDXL), ``unet``, ``vae`` from a diffusers
    folder (eval mode)."""
    from .models import AutoencoderKL, CLIPTextModel, CLIPTextModelWithProjection, UNet2DConditionModel

    kinds = {"text_encoder": (CLIPTextModel, "model", _rename_text_encoder),
             "text_encoder_2": (CLIPTextModelWithProjection, "model", _rename_text_encoder),
             "unet": (UNet2DConditionModel, "diffusion_pytorch_model", None),
             "vae": (AutoencoderKL, "diffusion_pytorch_model", _rename_vae)}
    if dtype not in _MODEL_DTYPES:
        raise SuppressEOTError(f"dtype must be one of {_MODEL_DTYPES}, not {dtype!r}")
    if dtype == "bfloat16" and not ensure_jittor().flags.use_cuda:
        # jittor's CPU matmul/conv accumulate in the 16-bit type: bf16 results are off by ~40%
        raise SuppressEOTError("bfloat16 needs CUDA with the Jittor backend (on the CPU jittor accumulates "
                               "matmuls and convolutions in bfloat16); use float32 on the CPU")
    cls, stem, rename = kinds[name]
    folder = Path(model_dir) / name
    model = cls(_config(folder))
    path = _weights_file(folder, stem)
    state = load_safetensors_numpy(path)
    load_state(model, rename(state) if rename else state, str(path), dtype)
    model.eval()  # also stops gradients into the weights
    return model


def load_sd_components(model_dir, dtype: str = "float32"):
    """(text_encoder, unet, vae) of a diffusers Stable Diffusion folder, as Jittor modules (SDXL's second
    encoder: ``load_component(model_dir, "text_encoder_2")``)."""
    return tuple(load_component(model_dir, name, dtype) for name in ("text_encoder", "unet", "vae"))
