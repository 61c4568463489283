"""A diffusers SD 1.x state (UNet, VAE, CLIP text encoder) renamed into the original LDM single-file layout.

diffusers only reads that layout (``from_single_file``); the tests write it from a tiny diffusers model to
check that reading it back gives the same model. The names follow the original repository's modules
(``input_blocks``/``middle_block``/``output_blocks``; the VAE's ``down``/``mid``/``up``).
"""
from __future__ import annotations

import re

RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
          ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection")]
VAE_ATTENTION = [("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")]


def _unet_name(name: str, levels: int, layers: int) -> str:
    top = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
           "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
    for old, new in top.items():
        if name.startswith(old + "."):
            return new + name[len(old):]
    if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", name):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        block = f"input_blocks.{(layers + 1) * i + j + 1}.{0 if kind == 'resnets' else 1}"
    elif m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", name):
        return f"input_blocks.{(layers + 1) * (int(m[1]) + 1)}.0.op.{m[2]}"
    elif m := re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", name):
        block = f"middle_block.{2 * int(m[2]) if m[1] == 'resnets' else 1}"
        kind, rest = m[1], m[3]
    elif m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", name):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        block = f"output_blocks.{(layers + 1) * i + j}.{0 if kind == 'resnets' else 1}"
    elif m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.(.*)", name):
        i = int(m[1])  # the first up block has no attention: its upsampler sits at index 1, the others' at 2
        return f"output_blocks.{(layers + 1) * i + layers}.{1 if i == 0 else 2}.{m[2]}"
    else:
        raise KeyError(name)
    if kind == "resnets":
        for old, new in RESNET:
            rest = re.sub(rf"^{old}\.", new + ".", rest)
    return f"{block}.{rest}"


def _vae_name(name: str, levels: int) -> str:
    name = name.replace("conv_norm_out", "norm_out")
    if m := re.match(r"(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.*)", name):
        where = f"mid.block_{int(m[3]) + 1}" if m[2] == "resnets" else "mid.attn_1"
        name = f"{m[1]}.{where}.{m[4]}"
    elif m := re.match(r"encoder\.down_blocks\.(\d+)\.(resnets\.(\d+)|downsamplers\.0)\.(.*)", name):
        name = f"encoder.down.{m[1]}.{f'block.{m[3]}' if m[3] else 'downsample'}.{m[4]}"
    elif m := re.match(r"decoder\.up_blocks\.(\d+)\.(resnets\.(\d+)|upsamplers\.0)\.(.*)", name):
        name = f"decoder.up.{levels - 1 - int(m[1])}.{f'block.{m[3]}' if m[3] else 'upsample'}.{m[4]}"
    name = name.replace("conv_shortcut", "nin_shortcut")
    if ".attn_1." in name:
        for old, new in VAE_ATTENTION:
            name = name.replace(f".attn_1.{old}.", f".attn_1.{new}.")
    return name


def to_ldm(unet, vae, text_encoder) -> dict:
    """The three models' weights under the original SD 1.x single-file names (VAE attention as 1x1 convs)."""
    levels, layers = len(unet.config.block_out_channels), unet.config.layers_per_block
    state = {}
    for name, value in unet.state_dict().items():
        state["model.diffusion_model." + _unet_name(name, levels, layers)] = value
    for name, value in vae.state_dict().items():
        new = _vae_name(name, len(vae.config.block_out_channels))
        if ".attn_1." in new and new.endswith("weight") and value.ndim == 2:
            value = value[:, :, None, None]
        state["first_stage_model." + new] = value
    for name, value in text_encoder.state_dict().items():
        # the original file holds transformers' CLIPTextModel under ``text_model.`` (newer releases drop it)
        state["cond_stage_model.transformer.text_model." + name.removeprefix("text_model.")] = value
    return {k: v.contiguous().clone() for k, v in state.items()}
