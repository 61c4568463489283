"""Jittor backend: native Jittor SD 1.x / 2.x / SDXL modules on the diffusers folder's safetensors, jt.grad for ITO.

No torch is needed. Where torch happens to be importable, the generated-image starting noise is drawn
with the same seeded CPU torch generator as the official code, so one seed gives one image on both
backends; without torch a numpy generator is used and run.json says so.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ...errors import SuppressEOTError
from ..base import sample_sizes
from ..step_cache import StepCache, step_key
from .env import import_jittor, jittor_info
from .loading import load_component
from .models.layers import attention_chunk_bytes


def initial_noise(seed: int, latent_size: int = 64) -> tuple[np.ndarray, str]:
    """The official starting latent for ``seed`` (torch's CPU generator) or, without torch, numpy's."""
    shape = (1, 4, latent_size, latent_size)
    try:
        import torch
    except ImportError:
        rng = np.random.default_rng(seed)
        return rng.standard_normal(shape).astype(np.float32), "numpy.random.default_rng(seed).standard_normal"
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    return noise.numpy(), "torch.randn(generator=torch.Generator().manual_seed(seed))"


class JittorBackend:
    name = "jittor"

    def __init__(self, model_dir: Path, device: str = "auto", dtype: str = "float32", fast: bool = False,
                 recompute_attention: bool = False, static_graphs: bool | None = None,
                 one_pass_guidance: bool = True):
        if device.startswith("cuda"):
            device = "cuda"
        if device not in ("auto", "cpu", "cuda"):
            raise SuppressEOTError(f"unknown device {device!r}: use auto, cpu or cuda")
        attention_chunk_bytes()  # a bad $SUPPRESSEOT_JITTOR_ATTENTION_CHUNK_MIB fails here, before loading
        from ...families import detect_family

        self.family = detect_family(model_dir)
        self.model_dir = model_dir
        self.jt = import_jittor(device)
        self.device = "cuda" if self.jt.flags.use_cuda else "cpu"
        # jittor.vcompiler: each repeated step recorded once as a fused graph and replayed (see StaticStep). Its
        # module builds only against CUDA's headers, so CUDA only, where it is the default (None): measured on
        # whole runs on an H200 (docs/benchmarks.md, 2026-12-03)
        self._static_by_default = static_graphs is None
        if static_graphs is None:
            static_graphs = self.device == "cuda"
        if static_graphs and self.device != "cuda":
            raise SuppressEOTError("static graphs (jittor.vcompiler) need jittor on a CUDA GPU: drop "
                                   "--static-graphs or run on --device cuda")
        self.dtype = dtype
        self.fast = fast
        self.noise_source = None
        self.text_encoders = [load_component(model_dir, e.subfolder, dtype) for e in self.family.text_encoders]
        self.text_encoder = self.text_encoders[0]
        self.unet_model = load_component(model_dir, "unet", dtype)
        # SDXL's VAE overflows in float16: float32 where its config says force_upcast (see the PyTorch backend)
        self.vae_dtype = "float32" if dtype == "float16" and self.family.upcast_vae else dtype
        self.vae = load_component(model_dir, "vae", self.vae_dtype)
        # SDXL: the pooled row's columns and the size conditioning (original size, crop, target size), as the
        # PyTorch backend (made once: no Var from numpy inside a recorded static step)
        self._pooled = self.family.layout.pooled_columns()
        side = self.family.image_size
        self._time_ids = (self.jt.array(np.array([[side, side, 0, 0, side, side]], dtype=np.float32))
                          if self.family.time_ids else None)
        self.scaling_factor = float(self.vae.scaling_factor)
        self.latent_size, self.image_size = sample_sizes(self.unet_model.config, self.vae.config)
        self.recompute_attention = bool(recompute_attention)  # off: see layers.RecomputedAttention
        for module in self.unet_model.attention_modules():
            module.recompute = self.recompute_attention
        self.static_graphs = bool(static_graphs)
        # jittor's time goes to the host per op (docs/jittor.md): one batch-4 pass costs little more than a
        # batch-2 one, so sampling runs guidance's two halves together
        self.one_pass_guidance = bool(one_pass_guidance)
        self.repeated_samples_once = False  # the official batch of two branches (faithful only)
        self.record_step = None  # how static steps are recorded: jittor.vcompiler.build (set on first use)
        self._step_cache = StepCache()  # recorded steps kept for later images (see compile_step)
        self._tracing = False  # True while a step is being recorded: nothing may run, so no jt.sync

    # --- models -------------------------------------------------------------------------------
    def encode_text(self, ids: list):
        """As the PyTorch backend's: (1, 77, D) for SD 1/2; for SDXL (one id list per encoder) the penultimate
        hidden states side by side and a 78th row holding encoder 2's pooled projection in its columns."""
        per_encoder = ids if ids and isinstance(ids[0], (list, tuple)) else [ids]
        if len(per_encoder) != len(self.text_encoders):
            raise SuppressEOTError(f"{len(per_encoder)} id lists for {len(self.text_encoders)} text encoders")
        with self.jt.no_grad():
            if len(per_encoder) == 1 and self.family.text_encoders[0].hidden_layer == "last":
                return self.text_encoder(self.jt.array(np.array(per_encoder, dtype=np.int64)))
            hidden, pooled = [], None
            for spec, module, one in zip(self.family.text_encoders, self.text_encoders, per_encoder):
                one_ids = np.array([one], dtype=np.int64)  # with projection: (last, penultimate, pooled)
                out = module(one_ids) if spec.pooled else module(one_ids, penultimate=True)
                hidden.append(out[1] if spec.hidden_layer == "penultimate" else out[0])
                if spec.pooled:
                    pooled = out[2]
            context = self.jt.concat([h.float32() for h in hidden], dim=-1)
            if self._pooled is None:
                return context
            row = np.zeros((1, 1, context.shape[-1]), dtype=np.float32)
            row[0, 0, self._pooled] = pooled.float32().numpy()[0]
            return self.jt.concat([context, self.jt.array(row)], dim=1)

    def unet(self, latents, t: int, context, recorder=None):
        return self._unet_pass(latents, t, context, recorder)

    def record_attention(self, latents, t: int, context, recorder) -> None:
        """The UNet pass only as far as the recorder's maps need (see the PyTorch backend's)."""
        self._unet_pass(latents, t, context, recorder, stop_past_side=recorder.resolution,
                        last_place=recorder.last_place)

    def _unet_pass(self, latents, t, context, recorder, stop_past_side=None, last_place="up"):
        # jittor evaluates lazily: run what the inputs depend on now, so graphs never span many steps
        if not self._tracing:
            self.jt.sync([latents, context])
        self.unet_model.set_attention_recorder(recorder)
        try:
            t = t if isinstance(t, self.jt.Var) else int(t)  # a Var inside a static step (StaticStep)
            extra = {}
            if self._time_ids is not None:  # SDXL: the pooled row goes to the added conditioning
                tokens = self.family.layout.tokens
                extra = {"text_embeds": context[:, tokens, self._pooled],
                         "time_ids": self._time_ids.broadcast((context.shape[0], 6))}
                context = context[:, :tokens]
            return self.unet_model(latents, t, context, stop_past_side=stop_past_side, last_place=last_place,
                                   **extra)
        finally:
            self.unet_model.set_attention_recorder(None)

    def vae_encode(self, image: np.ndarray):
        x = image.astype(np.float32) / 127.5 - 1
        x = self.jt.array(x.transpose(2, 0, 1)[None]).cast(self.vae_dtype)
        with self.jt.no_grad():
            return (self.vae.encode(x) * self.scaling_factor).cast(self.dtype)

    def vae_decode(self, latents) -> np.ndarray:
        with self.jt.no_grad():
            image = self.vae.decode((1 / self.scaling_factor) * latents.cast(self.vae_dtype))
            image = (image / 2 + 0.5).clamp(0, 1)
            return (image.float32().numpy().transpose(0, 2, 3, 1) * 255).astype(np.uint8)

    def initial_latent(self, seed: int):
        noise, self.noise_source = initial_noise(seed, self.latent_size)
        return self.from_numpy(noise)

    # --- tensors ------------------------------------------------------------------------------
    def from_numpy(self, array: np.ndarray):
        if array.dtype == np.float64:  # jittor would silently turn float64 into float32
            return self.jt.array(np.ascontiguousarray(array), dtype="float64")
        return self.jt.array(np.ascontiguousarray(array)).cast(self.dtype)

    def to_numpy(self, tensor) -> np.ndarray:
        return tensor.numpy()

    def read_later(self, tensor):
        return tensor.numpy  # the values exist once computed (value_and_grad syncs them): nothing to overlap

    def to_float64(self, tensor):
        return tensor.float64()

    def cat(self, tensors):
        return self.jt.concat(tensors, dim=0)

    def item(self, tensor) -> float:
        return float(tensor.item())

    def value_and_grad(self, fn, x):
        x = x.detach()
        x.start_grad()
        loss, aux = fn(x)
        grad = self.jt.grad(loss, x)
        if isinstance(aux, dict):
            aux = {k: v.detach() for k, v in aux.items()}
        if not self._tracing:
            self.jt.sync([loss, grad])
        return loss.detach(), aux, grad.detach()

    def no_grad(self):
        return self.jt.no_grad()

    def compile_step(self, fn):
        """``fn`` itself (jittor fuses and caches kernels), or with static graphs a ``StaticStep``, kept for
        later images as the PyTorch backend keeps its CUDA graphs: a closure of the same code over equal
        values (``step_key``) replays the graphs an earlier image recorded instead of recording its own (a
        photo with null-text records 7 steps, each a graph build and fusion of a whole UNet pass)."""
        if not self.static_graphs:
            return fn
        if self.record_step is None:
            try:
                from jittor import vcompiler  # its C++ module is compiled on first import
            except Exception as exc:  # noqa: BLE001 - any build failure: eager steps where nobody asked for static
                why = f"jittor.vcompiler does not build here ({type(exc).__name__} while compiling its C++ module)"
                if not self._static_by_default:
                    raise SuppressEOTError(f"--static-graphs: {why}; drop it (--no-static-graphs) or see "
                                           "docs/jittor.md") from exc
                import warnings

                warnings.warn(f"{why}: running eager steps (--no-static-graphs silences this)", stacklevel=2)
                self.static_graphs = False
                return fn
            self.record_step = vcompiler.build
        key = step_key(fn, same=(self,))
        # besides the function, a recorded graph holds the UNet's attention choices
        settings = (self.recompute_attention, attention_chunk_bytes(), self.record_step)
        return self._step_cache.step(fn, key if key is None else (key, settings),
                                     lambda fn: StaticStep(self, fn, self.record_step))

    # --- bookkeeping --------------------------------------------------------------------------
    def synchronize(self) -> None:
        self.jt.sync_all(True)

    def release_cache(self, graphs: bool = False) -> None:
        import gc

        if graphs:
            self._step_cache.clear()
        gc.collect()
        self.jt.gc()

    def reset_peak_memory(self) -> None:
        pass

    def peak_memory(self) -> dict:
        # jittor exposes no allocator peak counter; device memory is sampled through NVML by `batch`
        return {"allocated": None, "reserved": None}

    def info(self) -> dict:
        info = {"backend": "jittor", "device": self.device, "dtype": self.dtype, "jittor": jittor_info(),
                "recompute_attention": self.recompute_attention, "static_graphs": self.static_graphs,
                "one_pass_guidance": self.one_pass_guidance}
        if self.noise_source:
            info["initial_noise"] = self.noise_source
        return info


class StaticStep:
    """A step function recorded once by ``jittor.vcompiler.build`` and replayed: graph building, fusion and
    JIT-key lookups happen once instead of at every call (on an H200 a UNet forward 85 -> 73 ms, forward +
    backward 128 -> 116 ms; docs/jittor.md).

    vcompiler keys its graphs on the Python numbers among the arguments, so the numbers (timestep, DDIM and
    Adam coefficients, ITO's step size) come in as float32 Vars and one graph serves every step; the step
    must trigger no execution while it is recorded, so the backend skips its ``jt.sync`` calls then. A
    Var made from numpy inside the step would be replayed with wrong values (the UNet makes its constants
    beforehand). The pipeline builds its step functions anew for every image; the backend hands an equal
    closure the step an earlier image recorded (``JittorBackend.compile_step``).
    """

    def __init__(self, backend: JittorBackend, fn, build):
        self.backend, self.fn = backend, fn
        self.replay = build(self._record)

    def _record(self, *args):
        self.backend._tracing = True
        try:
            return self.fn(*args)
        finally:
            self.backend._tracing = False

    def _as_vars(self, value):
        if isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool):
            return self.backend.jt.array(np.array([value], dtype=np.float32))
        if isinstance(value, (tuple, list)):
            return type(value)(self._as_vars(v) for v in value)
        return value

    def __call__(self, *args):
        return self.replay(*(self._as_vars(a) for a in args))
