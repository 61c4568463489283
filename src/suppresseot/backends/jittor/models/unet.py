"""The Stable Diffusion 1.x / 2.x UNet (diffusers' ``UNet2DConditionModel``) in Jittor.

Only those families are built: CrossAttnDownBlock2D/DownBlock2D, UNetMidBlock2DCrossAttn,
UpBlock2D/CrossAttnUpBlock2D, GEGLU transformer blocks (1x1-convolution or, SD 2, linear projections; per-block
head counts; SD 2.1's upcast attention), positional timestep embedding. Config values
outside that raise ``SuppressEOTError`` naming the key. Module and parameter names are diffusers' own,
so ``diffusion_pytorch_model.safetensors`` loads without renaming.
"""
from __future__ import annotations

import math

import numpy as np
import jittor as jt
from jittor import nn

from ....errors import SuppressEOTError
from .layers import Attention, Downsample2D, GroupNorm, LayerNorm, ResnetBlock2D, Upsample2D, permute, silu

# config key -> the values this implementation handles (anything else is a different architecture)
_SUPPORTED = {
    "act_fn": ("silu",),
    "addition_embed_type": (None, "text_time"),
    "attention_type": ("default",),
    "center_input_sample": (False,),
    "class_embed_type": (None,),
    "cross_attention_norm": (None,),
    "dual_cross_attention": (False,),
    "encoder_hid_dim": (None,),
    "mid_block_type": ("UNetMidBlock2DCrossAttn",),
    "num_class_embeds": (None,),
    "resnet_out_scale_factor": (1, 1.0),
    "resnet_skip_time_act": (False,),
    "resnet_time_scale_shift": ("default",),
    "time_cond_proj_dim": (None,),
    "time_embedding_act_fn": (None,),
    "time_embedding_type": ("positional",),
    "timestep_post_act": (None,),
    "upcast_attention": (False, None, True),
    "num_attention_heads": (None,),
}
_DOWN_TYPES = ("CrossAttnDownBlock2D", "DownBlock2D")
_UP_TYPES = ("CrossAttnUpBlock2D", "UpBlock2D")


def _check_config(cfg: dict) -> None:
    for key, allowed in _SUPPORTED.items():
        if key in cfg and cfg[key] not in allowed:
            raise SuppressEOTError(f"unet/config.json: {key}={cfg[key]!r} is not supported by the Jittor UNet "
                                   f"(Stable Diffusion 1.x and 2.x layouts only; supported: {allowed})")
    only_cross = cfg.get("only_cross_attention", False)
    if any(only_cross if isinstance(only_cross, (list, tuple)) else [only_cross]):
        raise SuppressEOTError("unet/config.json: only_cross_attention is not supported by the Jittor UNet")
    for key, types in (("down_block_types", _DOWN_TYPES), ("up_block_types", _UP_TYPES)):
        bad = [t for t in cfg[key] if t not in types]
        if bad:
            raise SuppressEOTError(f"unet/config.json: {key} contains {bad}; the Jittor UNet supports {types}")


def _per_block(value, n):
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


def timestep_frequencies(dim, shift=0.0, max_period=10000) -> np.ndarray:
    half = dim // 2
    return np.exp(-math.log(max_period) * np.arange(half, dtype=np.float32) / (half - shift)).astype(np.float32)


def timestep_embedding(t, dim, flip_sin_to_cos=True, shift=0.0, max_period=10000, freqs=None):
    """Sinusoidal embedding of a (B,) float32 Var, as diffusers' ``get_timestep_embedding``. ``freqs``: the
    frequencies as a Var made beforehand (jittor.vcompiler replays a Var made from numpy inside the
    recorded function with the wrong values)."""
    if freqs is None:
        freqs = jt.array(timestep_frequencies(dim, shift, max_period))
    arg = t.float32()[:, None] * freqs[None, :]
    sin, cos = jt.sin(arg), jt.cos(arg)
    emb = jt.concat([cos, sin] if flip_sin_to_cos else [sin, cos], dim=-1)
    return nn.pad(emb, (0, 1)) if dim % 2 else emb


class TimestepEmbedding(nn.Module):
    def __init__(self, in_channels, dim):
        self.linear_1 = nn.Linear(in_channels, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def execute(self, x):
        return self.linear_2(silu(self.linear_1(x)))


# -- transformer ----------------------------------------------------------------------------------


class GEGLU(nn.Module):
    """proj(x) split in halves h and gate along the last axis, ``h * gelu(gate)``. The halves are reindexed views
    that jittor fuses into the product (``chunk`` would copy each half out first: two ops more, forward and
    backward, over the block's largest activation)."""

    def __init__(self, dim_in, dim_out):
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def execute(self, x):
        p = self.proj(x)
        last, half = p.ndim - 1, p.shape[-1] // 2
        shape, leading = tuple(p.shape[:-1]) + (half,), [f"i{k}" for k in range(last)]
        h, gate = p.reindex(shape, leading + [f"i{last}"]), p.reindex(shape, leading + [f"i{last}+{half}"])
        return h * nn.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim, mult=4):
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Identity(), nn.Linear(dim * mult, dim))  # [1] = dropout

    def execute(self, x):
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Self-attention, cross-attention to the text, GEGLU feed-forward; pre-LayerNorm residuals."""

    def __init__(self, dim, heads, dim_head, cross_attention_dim, place_in_unet):
        self.norm1 = LayerNorm(dim)
        self.attn1 = Attention(dim, heads, dim_head, is_cross=False, place_in_unet=place_in_unet)
        self.norm2 = LayerNorm(dim)
        self.attn2 = Attention(dim, heads, dim_head, cross_attention_dim, is_cross=True, place_in_unet=place_in_unet)
        self.norm3 = LayerNorm(dim)
        self.ff = FeedForward(dim)

    def execute(self, x, context):
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class Transformer2DModel(nn.Module):
    """GroupNorm, project in (1x1 conv, or Linear for ``use_linear_projection``), blocks, project out, residual."""

    def __init__(self, channels, heads, cross_attention_dim, groups, num_layers, use_linear_projection, place_in_unet):
        self.use_linear = use_linear_projection
        self.norm = GroupNorm(groups, channels, eps=1e-6)
        proj = (lambda: nn.Linear(channels, channels)) if use_linear_projection else (lambda: nn.Conv2d(channels, channels, 1))
        self.proj_in = proj()
        self.transformer_blocks = nn.ModuleList([
            BasicTransformerBlock(channels, heads, channels // heads, cross_attention_dim, place_in_unet)
            for _ in range(num_layers)])
        self.proj_out = proj()

    def execute(self, x, context):
        b, c, h, w = x.shape
        hs = self.norm(x)
        if not self.use_linear:
            hs = self.proj_in(hs)
        hs = permute(hs, 0, 2, 3, 1).reshape((b, h * w, c))
        if self.use_linear:
            hs = self.proj_in(hs)
        for block in self.transformer_blocks:
            hs = block(hs, context)
        if self.use_linear:
            hs = self.proj_out(hs)
        hs = permute(hs.reshape((b, h, w, c)), 0, 3, 1, 2)
        if not self.use_linear:
            hs = self.proj_out(hs)
        return hs + x


# -- UNet blocks ----------------------------------------------------------------------------------


class _Block(nn.Module):
    """Shared constructor: ``resnets`` (in, out channel pairs) and, when ``heads`` is set, ``attentions``."""

    def _build(self, resnet_io, attn_channels, temb, cross, place, groups, eps, heads, layers, use_linear,
               output_scale_factor=1.0):
        self.resnets = nn.ModuleList([ResnetBlock2D(i, o, temb, groups, eps, output_scale_factor) for i, o in resnet_io])
        self.attentions = nn.ModuleList([
            Transformer2DModel(c, heads, cross, groups, layers, use_linear, place) for c in attn_channels]) if heads else None


class DownBlock(_Block):
    """CrossAttnDownBlock2D (``heads`` set) or DownBlock2D; returns the output and the skip connections."""

    def __init__(self, cin, cout, temb, num_layers, add_downsample, downsample_padding, heads=None, cross=None,
                 groups=32, eps=1e-5, transformer_layers=1, use_linear=False):
        self._build([(cin if i == 0 else cout, cout) for i in range(num_layers)], [cout] * num_layers, temb, cross,
                    "down", groups, eps, heads, transformer_layers, use_linear)
        self.downsamplers = nn.ModuleList([Downsample2D(cout, downsample_padding)]) if add_downsample else None

    def execute(self, x, temb, context):
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = resnet(x, temb)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class UNetMidBlock2DCrossAttn(_Block):
    def __init__(self, channels, temb, heads, cross, groups, eps, transformer_layers=1, use_linear=False,
                 output_scale_factor=1.0):
        self._build([(channels, channels)] * 2, [channels], temb, cross, "mid", groups, eps, heads, transformer_layers,
                    use_linear, output_scale_factor)

    def execute(self, x, temb, context):
        x = self.resnets[0](x, temb)
        return self.resnets[1](self.attentions[0](x, context), temb)


class UpBlock(_Block):
    """CrossAttnUpBlock2D (``heads`` set) or UpBlock2D; consumes skip connections from the end of ``skips``."""

    def __init__(self, cin, cout, prev, temb, num_layers, add_upsample, heads=None, cross=None, groups=32, eps=1e-5,
                 transformer_layers=1, use_linear=False):
        io = [((prev if i == 0 else cout) + (cin if i == num_layers - 1 else cout), cout) for i in range(num_layers)]
        self._build(io, [cout] * num_layers, temb, cross, "up", groups, eps, heads, transformer_layers, use_linear)
        self.upsamplers = nn.ModuleList([Upsample2D(cout)]) if add_upsample else None

    def execute(self, x, skips, temb, context):
        for i, resnet in enumerate(self.resnets):
            x = resnet(jt.concat([x, skips.pop()], dim=1), temb)
            if self.attentions is not None:
                x = self.attentions[i](x, context)
        if self.upsamplers is not None:
            # to the next skip's size (handles odd latent sizes like diffusers' ``upsample_size``)
            x = self.upsamplers[0](x, skips[-1].shape[2:] if skips else None)
        return x


class UNet2DConditionModel(nn.Module):
    """``forward(sample, timestep, encoder_hidden_states) -> noise prediction``, diffusers' SD 1.x / 2.x UNet."""

    def __init__(self, config: dict):
        _check_config(config)
        self.config = dict(config)
        ch = list(config["block_out_channels"])
        n = len(ch)
        groups, eps = config.get("norm_num_groups", 32), config.get("norm_eps", 1e-5)
        cross = config["cross_attention_dim"]
        if isinstance(cross, (list, tuple)):
            raise SuppressEOTError("unet/config.json: a per-block cross_attention_dim is not supported by the Jittor UNet")
        heads = _per_block(config.get("num_attention_heads") or config.get("attention_head_dim", 8), n)
        layers = _per_block(config.get("layers_per_block", 2), n)
        tlayers = _per_block(config.get("transformer_layers_per_block", 1), n)
        use_linear = bool(config.get("use_linear_projection", False))
        k_in, k_out = config.get("conv_in_kernel", 3), config.get("conv_out_kernel", 3)
        temb = config.get("time_embedding_dim") or ch[0] * 4
        self.flip_sin_to_cos, self.freq_shift = config.get("flip_sin_to_cos", True), config.get("freq_shift", 0)
        self.time_proj_dim = ch[0]
        # made once, outside any recorded graph; held in a tuple so that it is no parameter
        self._time_frequencies = (jt.array(timestep_frequencies(self.time_proj_dim, self.freq_shift)),)

        self.conv_in = nn.Conv2d(config.get("in_channels", 4), ch[0], k_in, padding=(k_in - 1) // 2)
        self.time_embedding = TimestepEmbedding(ch[0], temb)
        # SDXL ("text_time"): the pooled text embedding and the size conditioning's sinusoidal embedding,
        # side by side, through one more embedding added to the timestep's
        self.add_time_dim = config.get("addition_time_embed_dim") if config.get("addition_embed_type") else None
        if self.add_time_dim:
            self._add_time_frequencies = (jt.array(timestep_frequencies(self.add_time_dim, self.freq_shift)),)
            self.add_embedding = TimestepEmbedding(config["projection_class_embeddings_input_dim"], temb)

        down = []
        for i, kind in enumerate(config["down_block_types"]):
            attn = kind == "CrossAttnDownBlock2D"
            down.append(DownBlock(ch[max(i - 1, 0)], ch[i], temb, layers[i], i < n - 1,
                                  config.get("downsample_padding", 1), heads[i] if attn else None, cross, groups, eps,
                                  tlayers[i], use_linear))
        self.down_blocks = nn.ModuleList(down)
        self.mid_block = UNetMidBlock2DCrossAttn(ch[-1], temb, heads[-1], cross, groups, eps, tlayers[-1], use_linear,
                                                 config.get("mid_block_scale_factor", 1))
        rch, rheads, rlayers = ch[::-1], heads[::-1], layers[::-1]
        rtlayers = list(config.get("reverse_transformer_layers_per_block") or tlayers[::-1])
        up = []
        for i, kind in enumerate(config["up_block_types"]):
            attn = kind == "CrossAttnUpBlock2D"
            up.append(UpBlock(rch[min(i + 1, n - 1)], rch[i], rch[max(i - 1, 0)], temb, rlayers[i] + 1, i < n - 1,
                              rheads[i] if attn else None, cross, groups, eps, rtlayers[i], use_linear))
        self.up_blocks = nn.ModuleList(up)
        self.conv_norm_out = GroupNorm(groups, ch[0], eps=eps)
        self.conv_out = nn.Conv2d(ch[0], config.get("out_channels", 4), k_out, padding=(k_out - 1) // 2)
        for module in self.attention_modules():  # SD 2.1 (768): scores in float32 below float32 weights
            module.upcast = bool(config.get("upcast_attention"))

    # -- attention hooks ------------------------------------------------------------------------
    def attention_modules(self) -> list[Attention]:
        """All attention layers in forward order (down, mid, up; self before cross in each block)."""
        return [m for m in self.modules() if isinstance(m, Attention)]

    def set_attention_recorder(self, recorder) -> None:
        for m in self.attention_modules():
            m.recorder = recorder

    # -- forward --------------------------------------------------------------------------------
    def _timesteps(self, timestep, batch):
        if isinstance(timestep, jt.Var):
            t = timestep.reshape((-1,))
        else:
            t = jt.array(np.asarray(timestep, dtype=np.float32).reshape(-1))
        return t.broadcast((batch,)) if t.shape[0] == 1 and batch != 1 else t

    def execute(self, sample, timestep, encoder_hidden_states, stop_past_side=None, last_place="up",
                text_embeds=None, time_ids=None):
        """Noise prediction; with ``stop_past_side`` the pass ends (returning None) after the first up block
        whose output is larger than that side, or after block ``last_place`` ("down", "mid"): the attention
        maps up to there are all it is run for."""
        t = self._timesteps(timestep, sample.shape[0])
        t_emb = timestep_embedding(t, self.time_proj_dim, self.flip_sin_to_cos, self.freq_shift,
                                   freqs=self._time_frequencies[0])
        temb = self.time_embedding(t_emb.cast(sample.dtype))
        if self.add_time_dim:  # SDXL: text_embeds (B, pooled width), time_ids (B, 6)
            ids = time_ids.reshape((-1,))
            time_embeds = timestep_embedding(ids, self.add_time_dim, self.flip_sin_to_cos, self.freq_shift,
                                             freqs=self._add_time_frequencies[0]).reshape((time_ids.shape[0], -1))
            added = jt.concat([text_embeds, time_embeds.cast(text_embeds.dtype)], dim=-1)
            temb = temb + self.add_embedding(added.cast(temb.dtype))
        context = encoder_hidden_states
        temb = silu(temb)  # what every ResnetBlock2D's time_emb_proj takes

        x = self.conv_in(sample)
        skips = [x]
        for block in self.down_blocks:
            x, s = block(x, temb, context)
            skips += s
        if stop_past_side is not None and last_place == "down":
            return None
        x = self.mid_block(x, temb, context)
        if stop_past_side is not None and last_place == "mid":
            return None
        for block in self.up_blocks:
            x = block(x, skips, temb, context)
            if stop_past_side is not None and x.shape[2] * x.shape[3] > stop_past_side ** 2:
                return None
        return self.conv_out(self.conv_norm_out(x, silu=True))
