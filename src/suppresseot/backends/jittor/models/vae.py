"""Stable Diffusion's VAE (diffusers' ``AutoencoderKL``) in Jittor: ``encode`` -> latent mean, ``decode`` -> image.

Parameter names are diffusers' current ones (``mid_block.attentions.0.to_q``); old checkpoints that use
``query/key/value/proj_attn`` are renamed at load time (``loading.py``).
"""
from __future__ import annotations

from jittor import nn

from ....errors import SuppressEOTError
from .layers import Attention, Downsample2D, GroupNorm, ResnetBlock2D, Upsample2D, permute


class VAEAttention(Attention):
    """Single-head-per-``head_dim`` spatial self-attention with its own GroupNorm and a residual connection."""

    def __init__(self, channels, head_dim, groups, eps):
        super().__init__(channels, channels // head_dim, head_dim, bias=True)
        self.group_norm = GroupNorm(groups, channels, eps=eps)

    def execute(self, x, context=None):
        b, c, h, w = x.shape
        seq = permute(self.group_norm(x).reshape((b, c, h * w)), 0, 2, 1)
        out = permute(super().execute(seq), 0, 2, 1).reshape((b, c, h, w))
        return out + x


class UNetMidBlock2D(nn.Module):
    def __init__(self, channels, groups, eps=1e-6, add_attention=True):
        self.resnets = nn.ModuleList([ResnetBlock2D(channels, channels, None, groups, eps) for _ in range(2)])
        self.attentions = nn.ModuleList([VAEAttention(channels, channels, groups, eps)]) if add_attention else None

    def execute(self, x):
        x = self.resnets[0](x)
        if self.attentions is not None:
            x = self.attentions[0](x)
        return self.resnets[1](x)


class DownEncoderBlock2D(nn.Module):
    def __init__(self, cin, cout, num_layers, add_downsample, groups, eps=1e-6):
        self.resnets = nn.ModuleList([ResnetBlock2D(cin if i == 0 else cout, cout, None, groups, eps)
                                      for i in range(num_layers)])
        self.downsamplers = nn.ModuleList([Downsample2D(cout, padding=0)]) if add_downsample else None

    def execute(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        return self.downsamplers[0](x) if self.downsamplers is not None else x


class UpDecoderBlock2D(nn.Module):
    def __init__(self, cin, cout, num_layers, add_upsample, groups, eps=1e-6):
        self.resnets = nn.ModuleList([ResnetBlock2D(cin if i == 0 else cout, cout, None, groups, eps)
                                      for i in range(num_layers)])
        self.upsamplers = nn.ModuleList([Upsample2D(cout)]) if add_upsample else None

    def execute(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        return self.upsamplers[0](x) if self.upsamplers is not None else x


class Encoder(nn.Module):
    def __init__(self, cfg):
        ch, groups, layers = cfg["block_out_channels"], cfg.get("norm_num_groups", 32), cfg.get("layers_per_block", 2)
        self.conv_in = nn.Conv2d(cfg.get("in_channels", 3), ch[0], 3, padding=1)
        self.down_blocks = nn.ModuleList([
            DownEncoderBlock2D(ch[max(i - 1, 0)], ch[i], layers, i < len(ch) - 1, groups) for i in range(len(ch))])
        self.mid_block = UNetMidBlock2D(ch[-1], groups, add_attention=cfg.get("mid_block_add_attention", True))
        self.conv_norm_out = GroupNorm(groups, ch[-1], eps=1e-6)
        self.conv_out = nn.Conv2d(ch[-1], 2 * cfg.get("latent_channels", 4), 3, padding=1)  # mean and logvar

    def execute(self, x):
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        return self.conv_out(self.conv_norm_out(self.mid_block(x), silu=True))


class Decoder(nn.Module):
    def __init__(self, cfg):
        ch, groups, layers = cfg["block_out_channels"], cfg.get("norm_num_groups", 32), cfg.get("layers_per_block", 2)
        rch = list(reversed(ch))
        self.conv_in = nn.Conv2d(cfg.get("latent_channels", 4), ch[-1], 3, padding=1)
        self.mid_block = UNetMidBlock2D(ch[-1], groups, add_attention=cfg.get("mid_block_add_attention", True))
        self.up_blocks = nn.ModuleList([
            UpDecoderBlock2D(rch[max(i - 1, 0)], rch[i], layers + 1, i < len(ch) - 1, groups) for i in range(len(ch))])
        self.conv_norm_out = GroupNorm(groups, ch[0], eps=1e-6)
        self.conv_out = nn.Conv2d(ch[0], cfg.get("out_channels", 3), 3, padding=1)

    def execute(self, z):
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(self.conv_norm_out(x, silu=True))


class AutoencoderKL(nn.Module):
    """``encode(x in [-1, 1]) -> latent mean`` (unscaled) and ``decode(z) -> image in about [-1, 1]``."""

    def __init__(self, config: dict):
        for key, allowed in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
            if any(t != allowed for t in config.get(key, [allowed])):
                raise SuppressEOTError(f"vae/config.json: {key}={config[key]} is not supported by the Jittor VAE "
                                       f"(only {allowed})")
        if config.get("act_fn", "silu") != "silu":
            raise SuppressEOTError(f"vae/config.json: act_fn={config['act_fn']!r} is not supported (only 'silu')")
        self.config = dict(config)
        self.scaling_factor = config.get("scaling_factor", 0.18215)
        latent = config.get("latent_channels", 4)
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.quant_conv = nn.Conv2d(2 * latent, 2 * latent, 1) if config.get("use_quant_conv", True) else None
        self.post_quant_conv = nn.Conv2d(latent, latent, 1) if config.get("use_post_quant_conv", True) else None

    def encode(self, x):
        moments = self.encoder(x)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        return moments[:, : moments.shape[1] // 2]

    def decode(self, z):
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def execute(self, x):
        return self.decode(self.encode(x))
