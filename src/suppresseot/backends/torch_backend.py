"""PyTorch backend: diffusers' UNet and VAE, transformers' CLIP text encoders, torch autograd.

Every family of ``suppresseot.families`` (SD 1.x, 2.x, SDXL) runs here: the family says which text encoders
to load and how their outputs make the conditioning tensor; SDXL's pooled embedding travels as one extra
row of that tensor (see ``encode_text``), so the algorithm handles a single tensor for every family.

Attention maps are read through diffusers' attention-processor API (``set_attn_processor``), not by
replacing module ``forward``s, so the code follows diffusers releases. The processor computes
attention explicitly (as diffusers' classic ``AttnProcessor`` and the official code do) where maps are
needed and on the CPU (the parity fixture), and with fused SDPA elsewhere on a GPU or in fast mode.
"""
from __future__ import annotations

import itertools
import weakref
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable

import numpy as np

from ..algorithm.attention import FORWARD_ORDER
from ..errors import BackendUnavailable, SuppressEOTError
from .base import sample_sizes
from .step_cache import StepCache, step_key

try:
    import torch
    import torch.nn.functional as F
    from torch.utils.checkpoint import checkpoint
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise BackendUnavailable(
        "PyTorch is not installed: pip install 'suppresseot[torch]' (or pick --backend jittor)") from exc

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class RecordingAttnProcessor:
    """diffusers attention processor that hands softmax probabilities to the active recorder."""

    def __init__(self, backend: "TorchBackend", place: str):
        self.backend = backend
        self.place = place

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 *args, **kwargs):
        recorder = self.backend.recorder
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape)
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        is_cross = encoder_hidden_states is not None
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        # Prompt-to-Prompt's reweighting (``reweighted_cross_attention``): key j's probability times w_j, not
        # renormalized. sum_j (w_j p_j) v_j = sum_j p_j (w_j v_j), so the values carry the weights and every
        # kernel below (fused too) computes it; a recorder is handed the reweighted probabilities.
        weights = self.backend.cross_attention_weights if is_cross else None
        if weights is not None:
            if tuple(weights.shape) != (batch_size, key.shape[1]):
                raise SuppressEOTError(f"cross-attention weights of shape {tuple(weights.shape)} for a batch of "
                                       f"{batch_size} x {key.shape[1]} keys")
            value = value * weights[:, :, None].to(value.dtype)
            weights = weights.repeat_interleave(attn.heads, 0)[:, None, :]

        wanted = recorder is not None and recorder.wants(query.shape[1], self.place)
        n = recorder.skip if wanted else 0
        if n and self.backend.fused_attention and attention_mask is None:
            # guidance's two halves in one pass (one_pass_guidance): the unrecorded half goes through the fused
            # kernel, only the recorded samples explicitly
            heads = attn.heads
            hidden_states = torch.cat([
                self._attention(attn, query[:n], key[:n], value[:n], None, None, None, is_cross),
                self._attention(attn, query[n:], key[n:], value[n:], None, recorder.recorded_part(),
                                None if weights is None else weights[n * heads:], is_cross)])
        else:
            hidden_states = self._attention(attn, query, key, value, attention_mask, recorder if wanted else None,
                                            weights, is_cross)

        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    def _attention(self, attn, query, key, value, attention_mask, recorder, weights, is_cross: bool):
        """(batch, queries, heads * dim) attention of (batch, tokens, heads * dim) projections: fused where no
        ``recorder`` takes the maps (and the backend fuses), else explicit, the recorder handed the (reweighted)
        probabilities."""
        batch_size = query.shape[0]
        if self.backend.fused_attention and recorder is None:
            heads = attn.heads
            q, k, v = (x.view(batch_size, -1, heads, x.shape[-1] // heads).transpose(1, 2) for x in (query, key, value))
            hidden_states = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, scale=attn.scale)
            return hidden_states.transpose(1, 2).reshape(batch_size, -1, heads * q.shape[-1])
        query = attn.head_to_batch_dim(query)
        key = attn.head_to_batch_dim(key)
        value = attn.head_to_batch_dim(value)
        if recorder is not None and self.backend.recompute_attention and torch.is_grad_enabled():
            # ITO: keep q, k, v, not the probabilities, for the backward pass (SDXL: 60 recorded layers)
            hidden_states, reduced = checkpoint(_recorded_attention, attn, query, key, value, attention_mask,
                                                recorder.reduce, weights, use_reentrant=False,
                                                preserve_rng_state=False)
            recorder.add(reduced, recorder.heads(query.shape[0]), is_cross, self.place)
        elif recorder is not None:
            probs = attn.get_attention_scores(query, key, attention_mask)
            recorder(probs if weights is None else probs * weights, is_cross, self.place)
            hidden_states = torch.bmm(probs, value)
        else:
            hidden_states = _sliced_attention(attn, query, key, value, attention_mask,
                                              self.backend.attention_slice_bytes,
                                              self.backend.recompute_attention and torch.is_grad_enabled())
        return attn.batch_to_head_dim(hidden_states)


def _explicit_attention(attn, query, key, value, attention_mask):
    """softmax(q k^T * scale) v as diffusers' classic AttnProcessor (and the official code) computes it."""
    return torch.bmm(attn.get_attention_scores(query, key, attention_mask), value)


def _recorded_attention(attn, query, key, value, attention_mask, reduce, weights=None):
    """Explicit attention and the recorder's reduction of its (reweighted) probabilities, recomputed together."""
    probs = attn.get_attention_scores(query, key, attention_mask)
    return torch.bmm(probs, value), reduce(probs if weights is None else probs * weights)


def _sliced_attention(attn, query, key, value, attention_mask, slice_bytes: int | None, recompute: bool):
    """Explicit attention over groups of (batch x head) rows, each group's probabilities at most
    ``slice_bytes``: every row is computed alone by the same formula, so results match the unsliced
    call to rounding, while a 64x64 layer's transient scores and probabilities (2 GiB at batch 2 in
    fp32, SD v1.4) shrink to one group's. With ``recompute`` (unrecorded layers under autograd) each
    group keeps only q, k, v for the backward pass and recomputes its probabilities there, one group at
    a time: same gradients, no stored probability matrices. Nothing random inside, so no RNG state to
    stash (which CUDA graph capture would refuse)."""
    rows = query.shape[0]
    per_row = query.shape[1] * key.shape[1] * query.element_size()
    step = rows if not slice_bytes else max(1, min(rows, slice_bytes // per_row))
    outs = []
    for start in range(0, rows, step):
        part = slice(start, start + step)
        mask = None if attention_mask is None else attention_mask[part]
        args = (attn, query[part], key[part], value[part], mask)
        if recompute:
            outs.append(checkpoint(_explicit_attention, *args, use_reentrant=False, preserve_rng_state=False))
        else:
            outs.append(_explicit_attention(*args))
    return outs[0] if len(outs) == 1 else torch.cat(outs)


class HostResident:
    """A model that waits in pinned CPU memory and is copied to the GPU only while it runs.

    The text encoder and the VAE run a few times per image (prompts, one encode, one decode) while the UNet
    runs hundreds of times; keeping them off the GPU in between lowers the peak by their weights (0.75 GiB
    in fp32 for SD v1) at the cost of a host-to-device copy per use (~30 ms at pinned-memory bandwidth).
    The weights are swapped in and out by reference (``tensor.data``), so the module object, its hooks
    and its results are those of a resident model.
    """

    def __init__(self, module, device: str):
        self.module, self.device = module, device
        pin = torch.cuda.is_available()  # page-locked host memory: faster, asynchronous copies (needs CUDA)
        self.host = [(t, t.data.pin_memory() if pin else t.data)
                     for t in itertools.chain(module.parameters(), module.buffers())]
        for tensor, host in self.host:
            tensor.data = host

    @contextmanager
    def on_device(self):
        for tensor, host in self.host:  # copy=True: a fresh tensor even where the device is the CPU
            tensor.data = host.to(self.device, non_blocking=True, copy=True)
        try:
            yield self.module
        finally:  # the GPU copies go back to the caching allocator (stream-ordered, so queued kernels are safe)
            for tensor, host in self.host:
                tensor.data = host


class _MapsRecorded(Exception):
    """Ends a UNet pass early once every map its recorder keeps exists (see ``record_attention``)."""


def pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SuppressEOTError(f"--device {device} was asked for but PyTorch sees no CUDA GPU; use --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise SuppressEOTError(f"unknown device {device!r}: use auto, cpu or cuda")
    return device


class TorchBackend:
    name = "torch"

    def __init__(self, model_dir: Path, device: str = "auto", dtype: str = "float32", fast: bool = False,
                 cuda_graphs: bool | None = None, channels_last: bool | None = None,
                 recompute_attention: bool = True, attention_slice_mib: int | None = 128,
                 offload_models: bool | None = None, fused_attention: bool | None = None,
                 compile_unet: "bool | str | Callable" = False):
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection

        from ..families import detect_family

        if dtype not in DTYPES:
            raise SuppressEOTError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}")
        self.device = pick_device(device)
        self.model_dir = Path(model_dir)
        self.family = detect_family(model_dir)
        self.dtype = dtype
        self.torch_dtype = DTYPES[dtype]
        on_gpu = self.device.startswith("cuda")
        # Fused SDPA on layers whose maps nobody reads (the 64x64 self-attention maps alone are 1 GiB a layer
        # in fp32): on by default on a GPU, in fp32 too (PyTorch's memory-efficient kernel). It rounds
        # differently from the official explicit softmax(q k^T) v (~1e-6 a call), far below what the GPU's
        # TF32 convolutions already change; on the CPU faithful mode stays explicit, as the parity fixture
        # needs: DDIM inversion + null-text amplify SDPA's rounding past its 1e-4 tolerance (2e-4 to 8e-3 seen).
        self.fused_attention = (fast or on_gpu) if fused_attention is None else bool(fused_attention)
        self.fast = fast
        # Faithful keeps the official batches: two guidance passes of both branches, every step. Fast mode runs
        # guidance as one pass of twice the batch (larger GEMMs and convolutions, half the kernels) and computes
        # once what those batches compute twice (see Backend.repeated_samples_once): the same samples, other rounding.
        self.one_pass_guidance = self.repeated_samples_once = fast
        # Explicit attention under autograd: recompute the probabilities in the backward pass instead of
        # storing them, on recorded layers too (their recorder reduction is recomputed with them), exact;
        # see RecordingAttnProcessor.
        self.recompute_attention = bool(recompute_attention)
        # ... and in groups of heads whose probabilities take at most this much (only SD's 64x64 layers are
        # split: 64 MiB a head in fp32, 2 heads a group), so no step holds a whole layer's 1-2 GiB of scores
        # at once: a group's backward holds probabilities, their gradient and the scores' gradient together.
        self.attention_slice_bytes = attention_slice_mib * 2**20 if attention_slice_mib else None
        self.strict_fp32 = False
        self.recorder = None
        self.cross_attention_weights = None  # (batch, 77) while ``reweighted_cross_attention`` holds
        self._pipelines = {}  # diffusers pipelines built on these modules (the baselines), by class
        # Repeated steps replay CUDA graphs: the same kernels as eager (bitwise-equal SD v1.4 runs on an H100),
        # minus the host's launch overhead, which limits both modes: a bf16 null-text iteration is 4x faster
        # replayed, and in fp32 (H200, benchmarks/probes/profile_steps.py) its 60 ms of kernels took 118 ms eagerly
        # (3200 launches, the checkpointed attention's Python among them). Costs reserved memory for the
        # graphs' pool, not allocated memory. On by default on a GPU.
        self.cuda_graphs = (True if cuda_graphs is None else bool(cuda_graphs)) and on_gpu
        self._graph_steps = weakref.WeakSet()  # live graphed steps, which share a memory pool
        # Captured graphs are kept for later images (see compile_step), the most recently used last
        self._step_cache = StepCache()
        self._replay_allocated = 0  # the allocator's count at the busiest replay since the last peak reset
        self._captures_at_reset = -1  # graph captures counted at that reset (-1: never reset)
        if on_gpu:
            # Faithful: the official code's arithmetic as it runs, i.e. PyTorch's defaults: fp32 matmuls
            # without TF32, cuDNN convolutions allowed TF32. SUPPRESSEOT_STRICT_FP32=1 turns TF32 off in
            # convolutions too, at a price: on an H100 (cuDNN 9.19) cuDNN then picks batch-1 fp32 conv
            # algorithms that take a UNet forward from 59 to 171 ms and an ITO step from 8 to 25 GiB
            # (benchmarks/probes/profile_unet.py). Fast: TF32 everywhere.
            import os

            strict = os.environ.get("SUPPRESSEOT_STRICT_FP32", "") not in ("", "0") and not fast
            torch.backends.cuda.matmul.allow_tf32 = fast
            torch.backends.cudnn.allow_tf32 = not strict
            self.strict_fp32 = strict
        try:
            load = dict(torch_dtype=self.torch_dtype)
            self.text_encoders = [(CLIPTextModelWithProjection if e.pooled else CLIPTextModel).from_pretrained(
                model_dir, subfolder=e.subfolder, **load) for e in self.family.text_encoders]
            self.text_encoder = self.text_encoders[0]
            self.unet_model = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet", **load)
            # SDXL's VAE overflows in float16 (NaN, black images); its pipeline runs it in float32 when the
            # VAE config says force_upcast, and so does this backend (Family.upcast_vae)
            self.vae_dtype = (torch.float32 if self.torch_dtype == torch.float16 and self.family.upcast_vae
                              else self.torch_dtype)
            self.vae = AutoencoderKL.from_pretrained(model_dir, subfolder="vae", **{**load, "torch_dtype": self.vae_dtype})
        except (OSError, ValueError, EnvironmentError) as exc:
            raise SuppressEOTError(f"could not load the model from {model_dir}: {str(exc).splitlines()[0]}") from exc
        # The text encoder and the VAE wait in CPU memory between uses on a GPU (HostResident); the UNet stays.
        self.offload_models = (True if offload_models is None else bool(offload_models)) and on_gpu
        for module in (*self.text_encoders, self.unet_model, self.vae):
            module.eval().requires_grad_(False)
        self.unet_model.to(self.device)
        self._resident = {}
        for module in (*self.text_encoders, self.vae):
            if self.offload_models:
                self._resident[id(module)] = HostResident(module, self.device)
            else:
                module.to(self.device)
        # NHWC convolutions on a GPU: cuDNN's kernels (TF32 or bf16 tensor cores) work in NHWC and otherwise
        # transpose every input and output (fp32 null-text iteration on an H200: 6 of 60 ms of kernels; a
        # graphed bf16 one takes 16.5 instead of 20.5 ms on the H100, benchmarks/probes/profile_fast.py).
        # Same arithmetic.
        self.use_channels_last(on_gpu if channels_last is None else bool(channels_last))
        self.scaling_factor = float(self.vae.config.scaling_factor)
        self.latent_size, self.image_size = sample_sizes(dict(self.unet_model.config), dict(self.vae.config))
        # SDXL's size conditioning: (original size, crop top-left, target size), as diffusers' pipeline defaults
        # it for an uncropped image at the model's size; made once (no host-to-device copy inside a CUDA graph)
        self._time_ids = (torch.tensor([[self.image_size, self.image_size, 0, 0, self.image_size, self.image_size]],
                                       dtype=torch.float32, device=self.device) if self.family.time_ids else None)
        self._pooled = self.family.layout.pooled_columns()
        # processor names look like "down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor"
        self.unet_model.set_attn_processor({name: RecordingAttnProcessor(self, name.split("_")[0])
                                            for name in self.unet_model.attn_processors})
        self._maps_side = self._maps_last = None
        for block in self.unet_model.up_blocks:
            block.register_forward_hook(self._end_after_maps)
        # recorders that keep no up-block maps (--ito-blocks without up) end before the up blocks or the mid block
        self.unet_model.up_blocks[0].register_forward_pre_hook(self._end_before("up"))
        if self.unet_model.mid_block is not None:
            self.unet_model.mid_block.register_forward_pre_hook(self._end_before("mid"))
        # torch.compile (inductor) of the UNet's ResNet blocks and feed-forward layers, for every call: it fuses
        # the group norms, activations, layout copies and pointwise ops around their convolutions and GEMMs
        # into fewer kernels (a whole compiled UNet took a bf16 null-text iteration from 15 to 12 ms on an H200,
        # benchmarks/probes/profile_steps.py --compile). Module by module, not the whole UNet: the attention
        # layers stay out (the recorder that takes their maps is Python state, which a graph would break at), so
        # passes that record maps, end early (``record_attention``) or take gradients all run compiled code,
        # and a compiled module serves every layer of its shape. The price: a compilation per module shape,
        # batch and grad mode (minutes on a fresh machine; inductor caches them on disk). Opt-in; True means
        # inductor, a string or callable is handed to torch.compile as its backend (tests trace without codegen).
        named = callable(compile_unet) or isinstance(compile_unet, str)
        self.compile_unet = compile_unet if named else bool(compile_unet)
        if self.compile_unet:
            import torch._dynamo.config as dynamo_config
            from diffusers.models.attention import FeedForward
            from diffusers.models.resnet import ResnetBlock2D

            # one graph per module shape, batch and grad mode: a run meets dozens; dynamo's default cap is 8 a
            # code object
            for limit in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                          "accumulated_cache_size_limit"):
                if hasattr(dynamo_config, limit):
                    setattr(dynamo_config, limit, max(getattr(dynamo_config, limit), 512))
            backend = "inductor" if self.compile_unet is True else self.compile_unet
            for module in self.unet_model.modules():
                if isinstance(module, (ResnetBlock2D, FeedForward)):
                    module.forward = torch.compile(module.forward, backend=backend, dynamic=False)

    # --- models -------------------------------------------------------------------------------
    # The algorithm's tensors (latents, embeddings, null-text and Adam state, losses) stay float32 whatever
    # the model dtype: the models cast at their boundary (fp16 null-text optimization is known to fail).
    def _on_device(self, module):
        """Context giving ``module`` on the device: copied there for the call when offloaded."""
        if self.offload_models:
            return self._resident[id(module)].on_device()
        return nullcontext(module)

    def use_channels_last(self, flag: bool) -> None:
        """Keep the UNet's convolution weights (and feed its inputs) in NHWC, or back in NCHW."""
        self.channels_last = bool(flag)
        self.unet_model.to(memory_format=torch.channels_last if flag else torch.contiguous_format)

    def encode_text(self, ids: list):
        """(1, 77, D) token embeddings for 77 padded ids, or for one id list per text encoder (SDXL): their
        penultimate hidden states side by side (1, 77, 768 + 1280), then one row with the pooled projection
        of encoder 2 in its columns (1, 78, 2048), as diffusers' SDXL pipeline conditions the UNet."""
        per_encoder = ids if ids and isinstance(ids[0], (list, tuple)) else [ids]
        if len(per_encoder) != len(self.text_encoders):
            raise SuppressEOTError(f"{len(per_encoder)} id lists for {len(self.text_encoders)} text encoders")
        if len(per_encoder) == 1 and not self.family.text_encoders[0].pooled and \
                self.family.text_encoders[0].hidden_layer == "last":  # SD 1 and 2: the last hidden state
            with torch.no_grad(), self._on_device(self.text_encoder) as text_encoder:
                return text_encoder(torch.tensor(per_encoder, device=self.device))[0].float()
        hidden, pooled = [], None
        for spec, module, one in zip(self.family.text_encoders, self.text_encoders, per_encoder):
            with torch.no_grad(), self._on_device(module) as encoder:
                out = encoder(torch.tensor([one], device=self.device), output_hidden_states=True)
            hidden.append(out.hidden_states[-2] if spec.hidden_layer == "penultimate" else out[0])
            if spec.pooled:
                pooled = out.text_embeds
        context = torch.cat(hidden, dim=-1).float()
        if self._pooled is None:
            return context
        row = context.new_zeros(1, 1, context.shape[-1])
        row[0, 0, self._pooled] = pooled.float()
        return torch.cat([context, row], dim=1)

    def unet(self, latents, t: int, context, recorder=None):
        self.recorder = recorder
        try:
            dtype = self.torch_dtype
            if self.channels_last:
                latents = latents.contiguous(memory_format=torch.channels_last)  # .to(dtype) keeps the layout
            model = self.unet_model
            extra = {}
            if self._time_ids is not None:  # SDXL: the pooled row goes to the added conditioning
                tokens = self.family.layout.tokens
                extra["added_cond_kwargs"] = {"text_embeds": context[:, tokens, self._pooled].to(dtype),
                                              "time_ids": self._time_ids.expand(context.shape[0], -1).to(dtype)}
                context = context[:, :tokens]
            return model(latents.to(dtype), t, encoder_hidden_states=context.to(dtype), **extra).sample.float()
        finally:
            self.recorder = None

    def record_attention(self, latents, t: int, context, recorder) -> None:
        """The UNet pass up to the last block that holds attention the recorder keeps (its resolution, its
        places): the later blocks (SD v1: the 32x32 and 64x64 up blocks, the output convolution; about half a
        forward) cannot change the maps, so passes that only compare maps (ITO, its reference) skip them. What
        runs is the same computation as in ``unet``, so the maps and their gradients are the same."""
        self._maps_side, self._maps_last = recorder.resolution, recorder.last_place
        try:
            self.unet(latents, t, context, recorder=recorder)
        except _MapsRecorded:
            pass
        finally:
            self._maps_side = self._maps_last = None

    def _end_before(self, place: str):
        """Forward pre-hook of the mid block and the first up block: no later block holds kept maps."""
        later = FORWARD_ORDER[FORWARD_ORDER.index(place):]

        def hook(block, args):
            if self._maps_last is not None and self._maps_last not in later:
                raise _MapsRecorded
        return hook

    def _end_after_maps(self, block, args, output):
        """Forward hook of the up blocks (registered once: adding and removing hooks per call would change
        the modules that torch.compile guards on). Up blocks only grow the maps' side."""
        if self._maps_side is not None and output.shape[-2] * output.shape[-1] > self._maps_side ** 2:
            raise _MapsRecorded

    @contextmanager
    def reweighted_cross_attention(self, weights):
        """Every cross-attention layer's probabilities times ``weights`` ((batch, 77): one row per sample of a
        UNet call, e.g. diffusers' [negative, prompt] under guidance), not renormalized: Prompt-to-Prompt's
        reweighting. 0 takes a token out of the attention, 1 leaves it."""
        self.cross_attention_weights = torch.as_tensor(weights, dtype=torch.float32, device=self.device)
        try:
            yield
        finally:
            self.cross_attention_weights = None

    # --- diffusers' own pipelines on these modules (the baselines, ``suppresseot.baselines``) ----------------
    def diffusers_pipeline(self, class_name: str, scheduler: str = "ddim"):
        """diffusers pipeline ``class_name`` built on this backend's loaded modules (no second copy of the
        weights), with the model folder's tokenizers and a scheduler from its config: ``ddim`` (the DDIM every
        approach here samples with) or ``dpm-sde`` (DPM-Solver++ SDE, LEDITS++'s own choice). Run it inside
        ``pipeline_session``. Built once per class and scheduler."""
        import inspect

        import diffusers

        key = (class_name, scheduler)
        if key not in self._pipelines:
            cls = getattr(diffusers, class_name)
            config = diffusers.DDIMScheduler.load_config(self.model_dir, subfolder="scheduler")
            schedulers = {"ddim": lambda: diffusers.DDIMScheduler.from_config(config),
                          "dpm-sde": lambda: diffusers.DPMSolverMultistepScheduler.from_config(
                              config, algorithm_type="sde-dpmsolver++", solver_order=2)}
            modules = {"unet": self.unet_model, "vae": self.vae, "scheduler": schedulers[scheduler](),
                       **{e.subfolder: m for e, m in zip(self.family.text_encoders, self.text_encoders)}}
            accepted = inspect.signature(cls.__init__).parameters
            absent = {k: v for k, v in {"safety_checker": None, "feature_extractor": None, "image_encoder": None,
                                        "requires_safety_checker": False}.items() if k in accepted}
            bars = diffusers.utils.logging.is_progress_bar_enabled()
            diffusers.utils.logging.disable_progress_bar()  # its "Loading pipeline components" bar: nothing loads
            try:
                self._pipelines[key] = cls.from_pretrained(self.model_dir, **modules, **absent,
                                                           torch_dtype=self.torch_dtype)
            finally:
                if bars:
                    diffusers.utils.logging.enable_progress_bar()
            self._pipelines[key].set_progress_bar_config(disable=True)
        return self._pipelines[key]

    @contextmanager
    def pipeline_session(self, attention: str = "diffusers"):
        """While a diffusers pipeline runs: the offloaded text encoders and VAE on the device, the UNet's
        attention processors diffusers' own (``"diffusers"``: what a plain pipeline computes) or this backend's
        (``"recording"``: for ``reweighted_cross_attention``). The backend's processors are put back afterwards
        (LEDITS++ installs its own)."""
        from contextlib import ExitStack

        saved = dict(self.unet_model.attn_processors)
        with ExitStack() as stack:
            for module in (*self.text_encoders, self.vae):
                stack.enter_context(self._on_device(module))
            try:
                if attention == "diffusers":
                    from diffusers.models.attention_processor import AttnProcessor2_0

                    self.unet_model.set_attn_processor(AttnProcessor2_0())
                yield
            finally:
                self.unet_model.set_attn_processor(saved)

    def vae_encode(self, image: np.ndarray):
        with torch.no_grad(), self._on_device(self.vae) as vae:
            x = torch.from_numpy(image).float() / 127.5 - 1
            x = x.permute(2, 0, 1).unsqueeze(0).to(self.device, self.vae_dtype)
            return vae.encode(x).latent_dist.mean.float() * self.scaling_factor

    def vae_decode(self, latents) -> np.ndarray:
        # One image at a time: a batch of two doubles the decoder's 512x512 activations (by count, about
        # 0.6 GiB an image in fp32), and convolutions act on each image alone either way.
        with torch.no_grad(), self._on_device(self.vae) as vae:
            scaled = (1 / self.scaling_factor) * latents.to(self.vae_dtype)
            image = torch.cat([vae.decode(one[None]).sample for one in scaled])
            image = (image / 2 + 0.5).clamp(0, 1)
            return (image.float().cpu().permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)

    def initial_latent(self, seed: int):
        """What diffusers' pipelines draw for a CPU ``torch.Generator().manual_seed(seed)`` (and the official
        code for SD v1): standard normal (1, 4, side, side) float32 on the CPU, then moved."""
        generator = torch.Generator().manual_seed(seed)
        shape = (1, self.family.latent_channels, self.latent_size, self.latent_size)
        return torch.randn(shape, generator=generator).to(self.device)

    # --- tensors ------------------------------------------------------------------------------
    def from_numpy(self, array: np.ndarray):
        tensor = torch.from_numpy(np.ascontiguousarray(array)).to(self.device)
        return tensor if tensor.dtype == torch.float64 else tensor.float()

    def to_numpy(self, tensor) -> np.ndarray:
        tensor = tensor.detach()
        if tensor.dtype in (torch.float16, torch.bfloat16):  # numpy has no bfloat16
            tensor = tensor.float()
        return tensor.cpu().numpy()

    def read_later(self, tensor):
        if not self.device.startswith("cuda"):
            return lambda: self.to_numpy(tensor)
        # copy into page-locked memory behind the work queued so far and return at once; the caller may queue
        # more work before it waits for this copy alone (an event), not for everything queued after it
        dtype = torch.float32 if tensor.dtype in (torch.float16, torch.bfloat16) else tensor.dtype  # as to_numpy
        host = torch.empty(tensor.shape, dtype=dtype, pin_memory=True)
        host.copy_(tensor.detach(), non_blocking=True)
        copied = torch.cuda.Event()
        copied.record()

        def wait() -> np.ndarray:
            copied.synchronize()
            return host.numpy()

        return wait

    def to_float64(self, tensor):
        return tensor.to(torch.float64)

    def cat(self, tensors):
        return torch.cat(tensors)

    def item(self, tensor) -> float:
        return float(tensor.item())

    def value_and_grad(self, fn, x):
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            loss, aux = fn(x)
            (grad,) = torch.autograd.grad(loss, x)
        if isinstance(aux, dict):
            aux = {k: v.detach() for k, v in aux.items()}
        return loss.detach(), aux, grad

    def no_grad(self):
        return torch.no_grad()

    def compile_step(self, fn):
        """A graphed step, captured once per process and argument shapes: the pipeline builds its step
        functions anew for every image, and a closure of the same code over equal values (``step_key``)
        under the same backend settings gets the graph captured for an earlier image. Capturing costs three
        eager calls (two warm-ups and the capture itself); a photo with null-text has seven steps to capture,
        which later images no longer pay. A graph reads the UNet's weights where they were at capture:
        change them in place (``load_state_dict``), not by assigning new tensors, or load a new backend."""
        if not self.cuda_graphs:
            return fn
        from .cuda_graphs import GraphedStep

        key = step_key(fn, same=(self,))
        return self._step_cache.step(fn, key if key is None else (key, self._graph_settings()), lambda fn: GraphedStep(
            fn, self.device, self._graph_steps, on_replay=self._note_replay))

    def _graph_settings(self) -> tuple:
        """What a captured graph has baked in besides its function: the attention and layout choices, the
        compiled UNet, the TF32 switches."""
        return (self.fused_attention, self.channels_last, self.recompute_attention, self.attention_slice_bytes,
                self.compile_unet is not False, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)

    def _note_replay(self) -> None:
        self._replay_allocated = max(self._replay_allocated, torch.cuda.memory_allocated(self.device))

    # --- bookkeeping --------------------------------------------------------------------------
    def synchronize(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def release_cache(self, graphs: bool = False) -> None:
        import gc

        if graphs:  # their shared pool goes once no graph holds it
            self._step_cache.clear()
        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()

    def _captures(self) -> int:
        return sum(step.captures for step in list(self._graph_steps))

    def reset_peak_memory(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        self._replay_allocated = 0
        self._captures_at_reset = self._captures()

    def peak_memory(self) -> dict:
        """Peak allocated and reserved bytes since the last reset, the graphs' working memory included.

        A replay allocates nothing, so the allocator's own peak sees a graph's working memory only while it
        is captured. Graphs kept from earlier images hold their pool throughout: where nothing was captured
        since the reset, the pool counts on top of the allocator's peak; where something was, the capture
        is in that peak and later replays count as what was allocated at the busiest one plus the pool
        (both bounds count the graphs' small static outputs twice)."""
        if not self.device.startswith("cuda"):
            return {"allocated": None, "reserved": None}
        from .cuda_graphs import pool_bytes

        allocated = torch.cuda.max_memory_allocated()
        if self._captures() == self._captures_at_reset:
            allocated += pool_bytes(list(self._graph_steps))
        elif self._replay_allocated:
            allocated = max(allocated, self._replay_allocated + pool_bytes(list(self._graph_steps)))
        return {"allocated": allocated, "reserved": torch.cuda.max_memory_reserved()}

    def info(self) -> dict:
        import diffusers
        import transformers

        info = {"backend": "torch", "torch": torch.__version__, "diffusers": diffusers.__version__,
                "transformers": transformers.__version__, "device": self.device, "dtype": self.dtype,
                "fused_attention": self.fused_attention, "recompute_attention": self.recompute_attention,
                "attention_slice_bytes": self.attention_slice_bytes,
                "fast": self.fast, "one_pass_guidance": self.one_pass_guidance,
                "repeated_samples_once": self.repeated_samples_once, "cuda_graphs": self.cuda_graphs,
                "offload_models": self.offload_models,
                "compile_unet": self.compile_unet if isinstance(self.compile_unet, (bool, str)) else "custom",
                "channels_last": self.channels_last,
                # graphs captured so far in this process (later images replay them) and what capturing took
                "graph_steps": len(self._graph_steps),
                "graph_capture_s": round(sum(step.capture_seconds for step in list(self._graph_steps)), 3),
                "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32) if self.device.startswith("cuda") else False,
                "tf32_conv": bool(torch.backends.cudnn.allow_tf32) if self.device.startswith("cuda") else False}
        if self.device.startswith("cuda"):
            info["gpu"] = torch.cuda.get_device_name()
            info["cuda"] = torch.version.cuda
        return info
