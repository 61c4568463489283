"""Building blocks shared by the Jittor UNet and VAE, named like diffusers' modules so checkpoints load as-is.

Normalisation layers compute their statistics with a two-pass variance (jittor's stock
GroupNorm/LayerNorm use E[x^2] - E[x]^2, which loses digits when activations have a large mean and
breaks down in float16), GroupNorm's in float64; everything else is the stock ``jittor.nn`` layer.
"""
from __future__ import annotations

import jittor as jt
from jittor import nn

# -- normalisation --------------------------------------------------------------------------------


FLOAT64_GROUP_SIZE = 1 << 16  # groups larger than this get float64 statistics (see GroupNorm)


class GroupNorm(nn.GroupNorm):
    """torch.nn.GroupNorm numerics: float32 statistics, biased variance, output in the input dtype."""

    def execute(self, x):
        n, c = x.shape[0], x.shape[1]
        g = x.float32().reshape((n, self.num_groups, -1))
        # Large groups accumulate in float64: a VAE group at 512 px holds 0.5-1M values, where jittor's plain
        # float32 sum drifts by ~1e-4 relative (torch sums in a more careful order). The UNet's groups (SD v1:
        # at most 10 channels x 64x64 = 41k values) keep float32, two-pass.
        stats = g.cast("float64") if g.shape[2] > FLOAT64_GROUP_SIZE else g
        mean = stats.mean(dim=2, keepdims=True)
        centred = stats - mean
        inv_std = 1.0 / jt.sqrt((centred * centred).mean(dim=2, keepdims=True) + self.eps)
        if stats is not g:
            mean, inv_std = mean.cast("float32"), inv_std.cast("float32")
        g = ((g - mean) * inv_std).reshape(x.shape).cast(x.dtype)
        shape = (1, c) + (1,) * (x.ndim - 2)
        return g * self.weight.reshape(shape) + self.bias.reshape(shape)


class LayerNorm(nn.LayerNorm):
    """torch.nn.LayerNorm over the last dimension, statistics in float32."""

    def execute(self, x):
        h = x.float32()
        h = h - h.mean(dim=-1, keepdims=True)
        var = (h * h).mean(dim=-1, keepdims=True)
        return (h / jt.sqrt(var + self.eps)).cast(x.dtype) * self.weight + self.bias


def silu(x):
    return x * jt.sigmoid(x)


def permute(x, *axes):
    """``x.permute(*axes)`` that stays on the GPU.

    jittor 1.3 has no GPU kernel for a transpose that moves the last axis unless the optional cuTT
    library was fetched at build time (impossible offline; ``use_cutt=0``): it then runs a CPU loop and
    copies the tensor to the host and back (half of an SD UNet forward on an H200). With a trailing unit
    axis the same permutation keeps the last axis in place, which jittor fuses into a GPU kernel.
    """
    if axes[-1] == x.ndim - 1:
        return x.permute(*axes)
    shape = tuple(x.shape)
    moved = x.reshape(shape + (1,)).permute(*axes, len(shape))
    return moved.reshape(tuple(shape[a] for a in axes))


# -- attention ------------------------------------------------------------------------------------


def attention_probabilities(q, k, scale):
    """softmax(q k^T * scale) over the keys, in float32, as diffusers' classic processor.

    The scale multiplies q, not the product: on the GPU jittor's softmax is a kernel of its own that no
    elementwise op fuses into, so scaling the (B*heads, queries, keys) scores would be one more pass over the
    largest tensor of the layer (2 GiB a 64x64 layer at batch 4).
    """
    return nn.softmax(nn.bmm_transpose(q * scale, k).float32(), dim=-1)


MAX_SCORES_BYTES = 1 << 30  # larger (B*heads, queries, keys) float32 scores are made in chunks of queries (see attend)


def attend(q, k, v, scale):
    """softmax(q k^T * scale) v; without gradients, in chunks of queries whose scores take at most
    ``MAX_SCORES_BYTES`` each.

    A layer's scores and probabilities are alive together, and nothing else in a pass is as large: at batch 4
    (both halves of guidance in one pass) an SD 1.x 64x64 self-attention holds 2 GiB of each, which made the
    peak of a Jittor generation 1.4x PyTorch's (whose fused attention keeps neither). In chunks the peak is
    2 x the budget; with gradients every chunk's probabilities would be kept anyway, so they go in one piece.
    """
    rows, queries, keys = q.shape[0], q.shape[1], k.shape[1]
    chunks = -(-rows * queries * keys * 4 // MAX_SCORES_BYTES)
    if chunks <= 1 or not jt.flags.no_grad:
        return nn.bmm(attention_probabilities(q, k, scale).cast(v.dtype), v)
    step = -(-queries // chunks)
    return jt.concat([nn.bmm(attention_probabilities(q[:, i:i + step], k, scale).cast(v.dtype), v)
                      for i in range(0, queries, step)], dim=1)


class RecomputedAttention(jt.Function):
    """softmax(q k^T * scale) v whose backward recomputes the probabilities from q and k.

    Autodiff of the explicit ops keeps every layer's (B*heads, queries, keys) scores and probabilities
    until the backward pass: 0.5 GiB a 64x64 layer per image in fp32, for each of the UNet's ten such
    layers when null-text optimization differentiates through the whole UNet. This keeps q, k and v
    instead, as the PyTorch backend's recompute does. The forward is the explicit ops; the backward is
    their exact derivative (softmax's Jacobian-vector product written out).

    Off by default (``Attention.recompute``): on an H200 (2026-12-01) the null-text run's peak rose from
    16.75 to 21.19 GiB with it and its iterations got slower. Jittor builds the whole backward graph before
    running it, and its scheduler may run every layer's recomputation before the first is consumed; on
    the CPU test model the probabilities are indeed not kept.
    """

    def execute(self, q, k, v, scale):
        self.saved, self.scale = (q, k, v), scale
        return nn.bmm(attention_probabilities(q, k, scale).cast(v.dtype), v)

    def grad(self, grad_out):
        q, k, v = self.saved
        probs = attention_probabilities(q, k, self.scale)
        grad_v = nn.bmm(permute(probs, 0, 2, 1).cast(v.dtype), grad_out)
        grad_probs = nn.bmm_transpose(grad_out, v).float32()
        grad_scores = (probs * (grad_probs - (grad_probs * probs).sum(dim=-1, keepdims=True))).cast(q.dtype)
        return (nn.bmm(grad_scores, k * self.scale), nn.bmm(permute(grad_scores, 0, 2, 1), q * self.scale),
                grad_v, None)


class Attention(nn.Module):
    """diffusers' ``Attention`` with the classic processor, written out so attention maps can be recorded.

    ``recorder(probs, is_cross, place_in_unet)`` (when set, and unless ``recorder.wants(query_length, place)``
    exists and says no) sees the (B*heads, queries, keys) float32 softmax probabilities, row
    ``b * heads + h`` as in diffusers' ``head_to_batch_dim``; they stay in the graph, so ``jt.grad``
    can flow through whatever the recorder computes from them.
    """

    def __init__(self, query_dim, heads, dim_head, cross_attention_dim=None, bias=False,
                 is_cross=False, place_in_unet=None):
        inner = heads * dim_head
        self.heads, self.scale = heads, dim_head ** -0.5
        self.to_q = nn.Linear(query_dim, inner, bias=bias)
        self.to_k = nn.Linear(cross_attention_dim or query_dim, inner, bias=bias)
        self.to_v = nn.Linear(cross_attention_dim or query_dim, inner, bias=bias)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim))  # diffusers: [Linear, Dropout]
        self.is_cross, self.place_in_unet = is_cross, place_in_unet
        self.recorder = None
        self.recompute = False  # unrecorded layers through RecomputedAttention (see there)
        self.upcast = False  # q and k in float32 before their product (diffusers' upcast_attention, SD 2.1)

    def _split(self, x):  # (B, L, H*D) -> (B*H, L, D)
        b, n, _ = x.shape
        return x.reshape((b, n, self.heads, -1)).permute(0, 2, 1, 3).reshape((b * self.heads, n, -1))

    def _merge(self, x):  # (B*H, L, D) -> (B, L, H*D)
        bh, n, d = x.shape
        return x.reshape((bh // self.heads, self.heads, n, d)).permute(0, 2, 1, 3).reshape((bh // self.heads, n, -1))

    def execute(self, x, context=None):
        context = x if context is None else context
        q, k, v = self._split(self.to_q(x)), self._split(self.to_k(context)), self._split(self.to_v(context))
        if self.upcast and q.dtype != jt.float32:
            q, k = q.float32(), k.float32()
        rec = self.recorder
        if rec is not None and (not hasattr(rec, "wants") or rec.wants(q.shape[1], self.place_in_unet)):
            probs = attention_probabilities(q, k, self.scale)  # in the graph: the recorder's losses need it
            rec(probs, self.is_cross, self.place_in_unet)
            out = nn.bmm(probs.cast(v.dtype), v)
        elif self.recompute:
            out = RecomputedAttention.apply(q, k, v, self.scale)
        else:
            out = attend(q, k, v, self.scale)
        return self.to_out(self._merge(out))


# -- convolutional blocks -------------------------------------------------------------------------


class ResnetBlock2D(nn.Module):
    """diffusers' ResnetBlock2D (``resnet_time_scale_shift='default'``, SiLU, optional time embedding)."""

    def __init__(self, in_channels, out_channels, temb_channels=None, groups=32, eps=1e-6, output_scale_factor=1.0):
        self.norm1 = GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels) if temb_channels else None
        self.norm2 = GroupNorm(groups, out_channels, eps=eps)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        self.output_scale_factor = output_scale_factor

    def execute(self, x, temb=None):
        h = self.conv1(silu(self.norm1(x)))
        if self.time_emb_proj is not None and temb is not None:
            h = h + self.time_emb_proj(silu(temb))[:, :, None, None]
        h = self.conv2(silu(self.norm2(h)))
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        out = skip + h
        return out if self.output_scale_factor == 1 else out / self.output_scale_factor


class Downsample2D(nn.Module):
    """Stride-2 3x3 conv; ``padding=0`` (the VAE encoder) pads right/bottom by one first, as diffusers does."""

    def __init__(self, channels, padding=1):
        self.padding = padding
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=padding)

    def execute(self, x):
        if self.padding == 0:
            x = nn.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample2D(nn.Module):
    """Nearest-neighbour upsampling (to ``size`` when given, else x2) followed by a 3x3 conv."""

    def __init__(self, channels):
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def execute(self, x, size=None):
        size = tuple(size) if size is not None else (x.shape[2] * 2, x.shape[3] * 2)
        return self.conv(nn.interpolate(x, size=size, mode="nearest"))
