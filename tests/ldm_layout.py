"""A diffusers SD 1.x, 2.x or SDXL state (UNet, VAE, text encoders) renamed into the original single-file layout.

diffusers only reads that layout (``from_single_file``); the tests write it from a tiny diffusers model to
check that reading it back gives the same model. The names follow the original repositories' modules
(``input_blocks``/``middle_block``/``output_blocks``; the VAE's ``down``/``mid``/``up``; the text encoders
as transformers' CLIP (``transformer.text_model.``) or as OpenCLIP (``model.``, fused q/k/v projections)).
"""
from __future__ import annotations

import re

import torch

RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
          ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection")]
VAE_ATTENTION = [("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")]
OPEN_CLIP = [("embeddings.position_embedding.weight", "positional_embedding"), ("embeddings.token_embedding.",
             "token_embedding."), ("final_layer_norm.", "ln_final."), ("encoder.layers.", "transformer.resblocks."),
             ("layer_norm1.", "ln_1."), ("layer_norm2.", "ln_2."), ("mlp.fc1.", "mlp.c_fc."),
             ("mlp.fc2.", "mlp.c_proj."), ("self_attn.", "attn.")]
# family (diffusers' name) -> each text encoder's prefix in the file and whether it is in the OpenCLIP layout
TEXT_ENCODERS = {
    "v1": [("cond_stage_model.transformer.text_model.", False)],
    "v2": [("cond_stage_model.model.", True)],
    "xl_base": [("conditioner.embedders.0.transformer.text_model.", False), ("conditioner.embedders.1.model.", True)],
}


def _unet_name(name: str, up_blocks: tuple, layers: int) -> str:
    top = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
           "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
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
        i = int(m[1])  # after the last resnet, or after its attention in a cross-attention block
        return f"output_blocks.{(layers + 1) * i + layers}.{2 if 'CrossAttn' in up_blocks[i] else 1}.{m[2]}"
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


def _open_clip(state: dict) -> dict:
    """transformers' CLIP text model in OpenCLIP's names: q/k/v fused into ``in_proj``, projection transposed."""
    out = {}
    for name, value in state.items():
        if name == "text_projection.weight":
            out["text_projection"] = value.T
            continue
        name = name.removeprefix("text_model.")
        for old, new in OPEN_CLIP:
            name = name.replace(old, new)
        out[name] = value
    for name in [n for n in out if ".attn.q_proj." in n]:
        base, kind = name.split(".q_proj.")
        out[f"{base}.in_proj_{kind}"] = torch.cat([out.pop(f"{base}.{p}_proj.{kind}") for p in "qkv"])
    return out


def to_ldm(unet, vae, *text_encoders, family: str = "v1") -> dict:
    """The models' weights under the original single-file names of ``family`` (VAE attention as 1x1 convs)."""
    layers = unet.config.layers_per_block
    state = {}
    for name, value in unet.state_dict().items():
        state["model.diffusion_model." + _unet_name(name, unet.config.up_block_types, layers)] = value
    for name, value in vae.state_dict().items():
        new = _vae_name(name, len(vae.config.block_out_channels))
        if ".attn_1." in new and new.endswith("weight") and value.ndim == 2:
            value = value[:, :, None, None]
        state["first_stage_model." + new] = value
    assert len(text_encoders) == len(TEXT_ENCODERS[family]), family
    for model, (prefix, open_clip) in zip(text_encoders, TEXT_ENCODERS[family]):
        # SD 1 and SDXL files hold CLIP-L as transformers did, under ``text_model.`` (transformers 5 drops it)
        text = model.state_dict()
        text = _open_clip(text) if open_clip else {k.removeprefix("text_model."): v for k, v in text.items()}
        state.update({prefix + k: v for k, v in text.items()})
    return {k: v.contiguous().clone() for k, v in state.items()}
