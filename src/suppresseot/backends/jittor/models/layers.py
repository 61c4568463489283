"""Building blocks shared by the Jittor UNet and VAE, named like diffusers' modules so checkpoints load as-is.

Normalisation layers compute their statistics with a two-pass variance (jittor's stock
GroupNorm/LayerNorm use E[x^2] - E[x]^2, which loses digits when activations have a large mean and
breaks down in float16), GroupNorm's in a kernel of its own; everything else is the stock ``jittor.nn``
layer. Each op jittor cannot fuse into its neighbours costs a kernel launch and a pass over memory, so the
layers are written to fuse (see GroupNorm, _std, Attention._split).
"""
from __future__ import annotations

import os

import jittor as jt
from jittor import nn

from ....errors import SuppressEOTError

# -- normalisation --------------------------------------------------------------------------------


class GroupNorm(nn.GroupNorm):
    """torch.nn.GroupNorm numerics: float32 input to two-pass statistics, biased variance, output in the input
    dtype.

    ``silu=True`` applies SiLU to the output (every GroupNorm of the UNet's and VAE's ResNet blocks is followed
    by one). Normalisation, affine and SiLU are one elementwise expression in the grouped shape, so jittor fuses
    them into one op: a reshape between them would end the fusion (one op and one pass over the activation more
    per norm, 61 norms a UNet pass).
    """

    def execute(self, x, silu=False):
        n, c, groups = x.shape[0], x.shape[1], self.num_groups
        g = x.float32().reshape((n, groups, c // groups, -1))
        per_channel = (1, groups, c // groups, 1)
        out = normalize_groups(g, self.eps) * self.weight.reshape(per_channel) + self.bias.reshape(per_channel)
        if silu:
            out = out * jt.sigmoid(out)
        return out.reshape(x.shape).cast(x.dtype)


def normalize_groups(g, eps):
    """(g - mean) / sqrt(var + eps) over each (n, group) of ``g`` (float32, (n, G, ...)), statistics in kernels.

    jittor's own reduction over a group's inner axes runs at 15-30 GB/s on an H200 (only n*G outputs to spread
    over threads): 58 such mean/variance pairs took a quarter of a UNet forward's GPU time (docs/jittor.md), and
    autodiff of broadcast statistics reduces twice more in the backward. Here the sums are float64 (a VAE group
    holds up to 1M values at 512 px, where float32 sums drift by ~1e-4), and on CUDA each group is split over
    several blocks (``_CUDA_HEADER``): at batch 1 a UNet norm has only 32 groups for the GPU's 132 SMs.

    Without gradients: the statistics' op, and the normalisation as an elementwise op that jittor fuses with
    the affine and SiLU after it. With gradients: one ``jt.code`` op that normalises and carries its backward as
    ``cuda_grad_src`` (dx = rstd * (dy - mean(dy) - xhat * mean(dy * xhat))), so that vcompiler records and
    replays it like any op. A ``jt.Function`` backward (Python, through tape ops) crashed vcompiler's replay on an
    H200 (2026-12-03).
    """
    if jt.flags.no_grad:
        groups = tuple(g.shape[:2]) + (1, 1)
        mean, var = jt.code([groups, groups], ["float32", "float32"], [g], cpu_src=_MOMENTS_CPU,
                            cuda_src=_MOMENTS_CUDA, cuda_header=_cuda_header())
        return (g - mean) / _std(var, g.shape, eps)
    return jt.code(g.shape, g.dtype, [g], data={"eps": float(eps)}, cpu_src=_NORMALIZE_CPU,
                   cpu_grad_src=[_NORMALIZE_GRAD_CPU], cuda_src=_NORMALIZE_CUDA, cuda_grad_src=[_NORMALIZE_GRAD_CUDA],
                   cuda_header=_cuda_header())


def _cuda_header():
    """cub and the kernels the ops share (jt.code moves only a source's leading kernels out of its host function,
    and only plain ``__global__`` ones, so templates and helpers go in the header)."""
    if not jt.flags.use_cuda:
        return ""
    return f"#include <{jt.compile_extern.cub_home}cub/cub.cuh>\n" + _CUDA_HEADER


# The CPU loops one group at a time, two passes in double (the tests' reference for the kernels).
_CPU_LOOP = """
int groups = in0->shape[0] * in0->shape[1], len = in0->num / groups;
for (int b = 0; b < groups; b++) {
    size_t start = (size_t)b * len;
    const in0_type* x = in0_p + start;
    double mean = 0, sq = 0;
    for (int i = 0; i < len; i++) mean += x[i];
    mean /= len;
    for (int i = 0; i < len; i++) { double d = x[i] - mean; sq += d * d; }
    double var = sq / len;
"""
_MOMENTS_CPU = _CPU_LOOP + "    out0_p[b] = mean; out1_p[b] = var;\n}\n"
# normalise: y = (x - mean) * rstd, rstd = 1 / sqrt(var + eps) in float32 (as torch)
_NORMALIZE_CPU = _CPU_LOOP + """
    float m = mean, rstd = 1 / sqrtf((float)var + (float)data["eps"]);
    out0_type* y = out0_p + start;
    for (int i = 0; i < len; i++) y[i] = (x[i] - m) * rstd;
}
"""
# its gradient: inputs x (in0), dy (dout) and the output xhat (pout); dx = rstd * (dy - mean(dy) - xhat * mean(dy * xhat))
_NORMALIZE_GRAD_CPU = _CPU_LOOP + """
    float rstd = 1 / sqrtf((float)var + (float)data["eps"]);
    const dout_type* dy = dout_p + start;
    const pout_type* xhat = pout_p + start;
    out0_type* dx = out0_p + start;
    double s1 = 0, s2 = 0;
    for (int i = 0; i < len; i++) { s1 += dy[i]; s2 += (double)dy[i] * xhat[i]; }
    float m1 = s1 / len, m2 = s2 / len;
    for (int i = 0; i < len; i++) dx[i] = rstd * (dy[i] - m1 - xhat[i] * m2);
}
"""

# CUDA: a group is cut into slices of ~GN_SLICE values, a block a slice (grid: slices x groups). A first kernel
# writes each slice's float64 sums (x and x^2; with the gradient also dy and dy*xhat) to a scratch array, a
# second reads its group's slices and does the elementwise work; the variance is E[x^2] - mean^2 in float64.
_CUDA_HEADER = r"""
#define GN_THREADS 256
#define GN_SLICE 2048
#define GN_MAX_SLICES 64
#define GN_CAPACITY (1 << 18)
typedef cub::BlockReduce<double, GN_THREADS> GnReduce;
static __device__ double gn_partials[GN_CAPACITY];

static int gn_slices(int groups, int len) {
    int slices = len / GN_SLICE;
    slices = slices < 1 ? 1 : slices > GN_MAX_SLICES ? GN_MAX_SLICES : slices;
    while (slices > 1 && (long long)groups * slices * 4 > GN_CAPACITY) slices--;
    return slices;
}

// block (s, g): the float64 sums of slice s of group g. K = 2: x, x^2; K = 4: also dy, dy * xhat
template <int K>
__global__ void gn_partial_sums(const float* x, const float* dy, const float* xhat, int len) {
    __shared__ typename GnReduce::TempStorage scratch;
    int slices = gridDim.x, s = blockIdx.x, g = blockIdx.y, chunk = (len + slices - 1) / slices;
    int lo = s * chunk, hi = min(len, lo + chunk);
    size_t base = (size_t)g * len;
    double acc[K];
    for (int k = 0; k < K; k++) acc[k] = 0;
    for (int i = lo + threadIdx.x; i < hi; i += GN_THREADS) {
        double v = x[base + i];
        acc[0] += v; acc[1] += v * v;
        if (K == 4) { double d = dy[base + i]; acc[2] += d; acc[K - 1] += d * xhat[base + i]; }
    }
    for (int k = 0; k < K; k++) {
        double total = GnReduce(scratch).Sum(acc[k]);
        if (threadIdx.x == 0) gn_partials[((size_t)g * slices + s) * K + k] = total;
        __syncthreads();  // the scratch free again
    }
}

// group g's sums over its slices, divided by len: mean, E[x^2] (, mean dy, mean dy * xhat)
template <int K>
__device__ void gn_means(int g, int slices, int len, double* out) {
    for (int k = 0; k < K; k++) out[k] = 0;
    for (int s = 0; s < slices; s++)
        for (int k = 0; k < K; k++) out[k] += gn_partials[((size_t)g * slices + s) * K + k];
    for (int k = 0; k < K; k++) out[k] /= len;
}

__global__ void gn_moments(float* mean, float* var, int groups, int slices, int len) {
    int g = blockIdx.x * blockDim.x + threadIdx.x;
    if (g >= groups) return;
    double m[2];
    gn_means<2>(g, slices, len, m);
    double v = m[1] - m[0] * m[0];
    mean[g] = m[0]; var[g] = v > 0 ? v : 0;
}

__global__ void gn_normalize(const float* x, float* y, float eps, int len) {
    __shared__ float coef[2];
    int slices = gridDim.x, s = blockIdx.x, g = blockIdx.y, chunk = (len + slices - 1) / slices;
    if (threadIdx.x == 0) {
        double m[2];
        gn_means<2>(g, slices, len, m);
        double v = m[1] - m[0] * m[0];
        coef[0] = m[0]; coef[1] = 1 / sqrtf((float)(v > 0 ? v : 0) + eps);
    }
    __syncthreads();
    float mean = coef[0], rstd = coef[1];
    size_t base = (size_t)g * len;
    for (int i = s * chunk + threadIdx.x; i < min(len, (s + 1) * chunk); i += GN_THREADS)
        y[base + i] = (x[base + i] - mean) * rstd;
}

__global__ void gn_normalize_grad(const float* dy, const float* xhat, float* dx, float eps, int len) {
    __shared__ float coef[3];
    int slices = gridDim.x, s = blockIdx.x, g = blockIdx.y, chunk = (len + slices - 1) / slices;
    if (threadIdx.x == 0) {
        double m[4];
        gn_means<4>(g, slices, len, m);
        double v = m[1] - m[0] * m[0];
        coef[0] = 1 / sqrtf((float)(v > 0 ? v : 0) + eps); coef[1] = m[2]; coef[2] = m[3];
    }
    __syncthreads();
    float rstd = coef[0], m1 = coef[1], m2 = coef[2];
    size_t base = (size_t)g * len;
    for (int i = s * chunk + threadIdx.x; i < min(len, (s + 1) * chunk); i += GN_THREADS)
        dx[base + i] = rstd * (dy[base + i] - m1 - xhat[base + i] * m2);
}
"""
_CUDA_SETUP = """
int groups = in0->shape[0] * in0->shape[1], len = in0->num / groups;
CHECK(groups < 65536) << "GroupNorm kernels: too many (sample, group) pairs" << groups;
int slices = gn_slices(groups, len);
dim3 grid(slices, groups);
"""
_MOMENTS_CUDA = _CUDA_SETUP + """
gn_partial_sums<2><<<grid, GN_THREADS>>>(in0_p, nullptr, nullptr, len);
gn_moments<<<(groups + 255) / 256, 256>>>(out0_p, out1_p, groups, slices, len);
CHECK(0 == cudaGetLastError());
"""
_NORMALIZE_CUDA = _CUDA_SETUP + """
gn_partial_sums<2><<<grid, GN_THREADS>>>(in0_p, nullptr, nullptr, len);
gn_normalize<<<grid, GN_THREADS>>>(in0_p, out0_p, (float)data["eps"], len);
CHECK(0 == cudaGetLastError());
"""
_NORMALIZE_GRAD_CUDA = _CUDA_SETUP + """
gn_partial_sums<4><<<grid, GN_THREADS>>>(in0_p, dout_p, pout_p, len);
gn_normalize_grad<<<grid, GN_THREADS>>>(dout_p, pout_p, out0_p, (float)data["eps"], len);
CHECK(0 == cudaGetLastError());
"""


class LayerNorm(nn.LayerNorm):
    """torch.nn.LayerNorm over the last dimension, statistics in float32."""

    def execute(self, x):
        h = x.float32()
        h = h - h.mean(dim=-1, keepdims=True)
        var = (h * h).mean(dim=-1, keepdims=True)
        return (h / _std(var, h.shape, self.eps)).cast(x.dtype) * self.weight + self.bias


def _std(var, shape, eps):
    """sqrt(var + eps) broadcast to ``shape`` first: jittor fuses the sqrt into the normalising op then, where on
    the per-group (per-row) statistics it would be an op of its own, one a norm (109 norms a UNet pass)."""
    return jt.sqrt(var.broadcast(shape) + eps)


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


def attention_probabilities(q, k):
    """softmax(q k^T) over the keys, in float32, as diffusers' classic processor; ``q`` comes scaled by
    1/sqrt(head dim) (``Attention`` scales it as it splits the heads, in the same op).

    Scaling q rather than the product matters on the GPU: there jittor's softmax is a kernel of its own that no
    elementwise op fuses into, so scaling the (B*heads, queries, keys) scores would be one more pass over the
    largest tensor of the layer (2 GiB a 64x64 layer at batch 4).
    """
    return nn.softmax(nn.bmm_transpose(q, k).float32(), dim=-1)


CHUNK_VARIABLE = "SUPPRESSEOT_JITTOR_ATTENTION_CHUNK_MIB"


def attention_chunk_bytes() -> int:
    """The budget for one chunk of a layer's attention scores without gradients (``layers.attend``): 1 GiB, or
    ``$SUPPRESSEOT_JITTOR_ATTENTION_CHUNK_MIB`` MiB. The peak holds two chunks (scores and probabilities): less
    memory, more (smaller) ops."""
    value = os.environ.get(CHUNK_VARIABLE, "").strip()
    if not value:
        return 1 << 30
    if not value.isdigit() or int(value) == 0:
        raise SuppressEOTError(f"{CHUNK_VARIABLE}={value!r}: give a whole number of MiB above 0 (default 1024), "
                               "or unset it")
    return int(value) << 20


def attend(q, k, v):
    """softmax(q k^T) v (q scaled); without gradients, in chunks of queries whose scores take at most
    ``attention_chunk_bytes()`` each (1 GiB unless ``$SUPPRESSEOT_JITTOR_ATTENTION_CHUNK_MIB`` says otherwise).

    A layer's scores and probabilities are alive together, and nothing else in a pass is as large: at batch 4
    (both halves of guidance in one pass) an SD 1.x 64x64 self-attention holds 2 GiB of each, which made the
    peak of a Jittor generation 1.4x PyTorch's (whose fused attention keeps neither). In chunks the peak is
    2 x the budget; with gradients every chunk's probabilities would be kept anyway, so they go in one piece.
    """
    rows, queries, keys = q.shape[0], q.shape[1], k.shape[1]
    chunks = -(-rows * queries * keys * 4 // attention_chunk_bytes())
    if chunks <= 1 or not jt.flags.no_grad:
        return nn.bmm(attention_probabilities(q, k).cast(v.dtype), v)
    step = -(-queries // chunks)
    return jt.concat([nn.bmm(attention_probabilities(q[:, i:i + step], k).cast(v.dtype), v)
                      for i in range(0, queries, step)], dim=1)


class RecomputedAttention(jt.Function):
    """softmax(q k^T) v (q scaled) whose backward recomputes the probabilities from q and k.

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

    def execute(self, q, k, v):
        self.saved = (q, k, v)
        return nn.bmm(attention_probabilities(q, k).cast(v.dtype), v)

    def grad(self, grad_out):
        q, k, v = self.saved
        probs = attention_probabilities(q, k)
        grad_v = nn.bmm(permute(probs, 0, 2, 1).cast(v.dtype), grad_out)
        grad_probs = nn.bmm_transpose(grad_out, v).float32()
        grad_scores = (probs * (grad_probs - (grad_probs * probs).sum(dim=-1, keepdims=True))).cast(q.dtype)
        return nn.bmm(grad_scores, k), nn.bmm(permute(grad_scores, 0, 2, 1), q), grad_v


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

    def _split(self, x, upcast=False, scale=None):
        """(B, L, H*D) -> (B*H, L, D), row ``b * heads + h``; as a reindexed view, so that jittor fuses the
        float32 cast and the scale into the same op."""
        b, n, inner = x.shape
        h, d = self.heads, inner // self.heads
        out = x.reindex((b * h, n, d), [f"i0/{h}", "i1", f"i0%{h}*{d}+i2"])
        out = out.float32() if upcast else out
        return out if scale is None else out * scale

    def _merge(self, x):  # (B*H, L, D) -> (B, L, H*D)
        bh, n, d = x.shape
        h = self.heads
        return x.reindex((bh // h, n, h * d), [f"i0*{h}+i2/{d}", "i1", f"i2%{d}"])

    def execute(self, x, context=None):
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        upcast = self.upcast and q.dtype != jt.float32
        q, k, v = self._split(q, upcast, self.scale), self._split(k, upcast), self._split(v)
        rec = self.recorder
        if rec is not None and (not hasattr(rec, "wants") or rec.wants(q.shape[1], self.place_in_unet)):
            probs = attention_probabilities(q, k)  # in the graph: the recorder's losses need it
            rec(probs, self.is_cross, self.place_in_unet)
            out = nn.bmm(probs.cast(v.dtype), v)
        elif self.recompute:
            out = RecomputedAttention.apply(q, k, v)
        else:
            out = attend(q, k, v)
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

    def execute(self, x, temb_silu=None):
        """``temb_silu``: SiLU of the time embedding, which diffusers' block applies itself; the UNet applies it
        once a pass for all its blocks (the same input everywhere)."""
        h = self.conv1(self.norm1(x, silu=True))
        if self.time_emb_proj is not None and temb_silu is not None:
            h = h + self.time_emb_proj(temb_silu).broadcast(h.shape, [2, 3])  # fused into the add
        h = self.conv2(self.norm2(h, silu=True))
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
