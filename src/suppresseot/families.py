"""Model families (SD 1.x, SD 2.x, SDXL) as small declarative descriptions read from a model's own configs.

The one algorithm reads a ``Family``: how many text encoders there are and how their outputs combine into
the conditioning, which attention resolution the ITO losses compare, the DDIM schedule and prediction type
(from ``scheduler/scheduler_config.json``), the default size and the extra conditioning. Detection looks at
configs only (text encoders, UNet blocks, conditioning), never at the model's name. docs/families.md says
what was decided per family and why.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .algorithm.attention import ALL_PLACES
from .algorithm.ddim import DDIMSchedule
from .algorithm.swr import EmbeddingLayout
from .errors import SuppressEOTError

SUPPORTED = ("Stable Diffusion 1.x, 2.x (epsilon or v-prediction) and SDXL base, as diffusers folders "
             "with 4-channel UNets")
TOKENS = 77  # CLIP's context: every family's prompts are 77 token embeddings


@dataclass(frozen=True)
class TextEncoder:
    """One CLIP text encoder: its folders and which of its outputs the UNet reads."""

    subfolder: str  # "text_encoder" or "text_encoder_2"
    tokenizer: str  # "tokenizer" or "tokenizer_2"
    width: int  # hidden size: the columns it fills in the token embeddings
    hidden_layer: str = "last"  # "last": last_hidden_state (SD 1/2); "penultimate": hidden_states[-2] (SDXL)
    pooled: bool = False  # its projected pooled output conditions the UNet (SDXL's encoder 2)
    pooled_width: int = 0  # the projection's width (SDXL: 1280, the hidden size)


@dataclass(frozen=True)
class ScheduleConfig:
    """The DDIM schedule of the model's scheduler config, in diffusers' names. The defaults are Stable
    Diffusion's (a folder without a scheduler config); keys missing from a config take DDIMScheduler's own
    defaults, as ``DDIMScheduler.from_config`` would."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    steps_offset: int = 1
    set_alpha_to_one: bool = False
    timestep_spacing: str = "leading"
    prediction_type: str = "epsilon"

    @classmethod
    def from_json(cls, config: dict) -> "ScheduleConfig":
        if config.get("rescale_betas_zero_snr") or config.get("trained_betas") is not None:
            raise SuppressEOTError("the scheduler config uses zero-terminal-SNR or trained betas, which SuppressEOT "
                                   f"does not implement; supported: {SUPPORTED}")
        if not config:
            return cls()
        ddim = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                    steps_offset=0, set_alpha_to_one=True, timestep_spacing="leading", prediction_type="epsilon")
        out = cls(**{k: config[k] if config.get(k) is not None else ddim[k] for k in cls.__dataclass_fields__})
        if out.prediction_type not in ("epsilon", "v_prediction"):
            raise SuppressEOTError(f"prediction type {out.prediction_type!r} is not supported (epsilon or "
                                   f"v_prediction); supported: {SUPPORTED}")
        if out.beta_schedule not in ("scaled_linear", "linear"):
            raise SuppressEOTError(f"beta schedule {out.beta_schedule!r} is not supported (scaled_linear or linear)")
        if out.timestep_spacing not in ("leading", "trailing", "linspace"):
            raise SuppressEOTError(f"timestep spacing {out.timestep_spacing!r} is not supported")
        return out


@dataclass(frozen=True)
class Family:
    """What the algorithm and the backends need to know about one model."""

    name: str  # "sd1", "sd2" or "sdxl" (for run.json and messages; nothing branches on it)
    text_encoders: tuple[TextEncoder, ...]
    latent_size: int  # default square latent side (UNet sample_size): SD 1 64, SD 2.1 96, SDXL 128
    image_size: int  # default image side: latent side x 2^(VAE blocks - 1)
    maps_resolution: int  # side of the attention maps the ITO losses and the saved maps read
    schedule_config: ScheduleConfig = field(default_factory=ScheduleConfig)
    time_ids: bool = False  # SDXL: (original size, crop top-left, target size) added to the time embedding
    zero_uncond: bool = False  # the unconditional embedding is zeros, not "" encoded (force_zeros_for_empty_prompt)
    latent_channels: int = 4
    map_places: tuple[str, ...] = ("up", "down")  # the UNet blocks with attention at maps_resolution (SD 1's)
    upcast_vae: bool = False  # float16 runs the VAE in float32 (SDXL's force_upcast, as its pipeline does)

    @property
    def prediction_type(self) -> str:
        return self.schedule_config.prediction_type

    @property
    def context_width(self) -> int:
        """Columns of the token embeddings: the encoders' widths side by side (SDXL: 768 + 1280)."""
        return sum(e.width for e in self.text_encoders)

    @property
    def layout(self) -> EmbeddingLayout:
        """How SWR reads the conditioning tensor: one column block per encoder; SDXL's pooled embedding as the
        row after the 77 tokens (the PyTorch backend's packing, see ``TorchBackend.encode_text``)."""
        blocks, start = [], 0
        for encoder in self.text_encoders:
            blocks.append((start, start + encoder.width))
            start += encoder.width
        pooled = [(b[0], b[0] + e.pooled_width) for b, e in zip(blocks, self.text_encoders) if e.pooled]
        return EmbeddingLayout(tokens=TOKENS, blocks=tuple(blocks), pooled_block=pooled[0] if pooled else None)

    def schedule(self, num_steps: int) -> DDIMSchedule:
        return DDIMSchedule.from_config(num_steps, self.schedule_config)

    def describe(self) -> dict:
        """For run.json."""
        return {"family": self.name, "prediction_type": self.prediction_type, "image_size": self.image_size,
                "maps_resolution": self.maps_resolution, "map_places": list(self.map_places),
                "text_encoders": [e.subfolder for e in self.text_encoders]}


def places_with_maps(unet: dict, latent: int, side: int) -> tuple[str, ...]:
    """The places ("up", "down", "mid") whose attention layers run at ``side`` x ``side`` for a latent of
    side ``latent``: down block i runs at latent / 2^i, the mid block at the lowest level, up block j at
    the mirror of down block n-1-j (diffusers' UNet2DConditionModel)."""
    down = unet.get("down_block_types", ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",))
    up = unet.get("up_block_types", ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    levels = len(down)
    mid = unet.get("mid_block_type", "UNetMidBlock2DCrossAttn")
    found = {"down": any("CrossAttn" in b and latent // 2 ** i == side for i, b in enumerate(down)),
             "mid": bool(mid) and "CrossAttn" in mid and latent // 2 ** (levels - 1) == side,
             "up": any("CrossAttn" in b and latent // 2 ** (levels - 1 - j) == side for j, b in enumerate(up))}
    return tuple(p for p in ALL_PLACES if found[p])


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError) as exc:
        raise SuppressEOTError(f"cannot read {path}: {exc}; give an intact diffusers model folder") from exc


def _refuse(what: str) -> SuppressEOTError:
    return SuppressEOTError(f"{what} is not supported; SuppressEOT runs {SUPPORTED}")


def detect_family(model_dir: str | Path) -> Family:
    """The family of a diffusers model folder, from its configs alone."""
    model_dir = Path(model_dir)
    index = _read(model_dir / "model_index.json")
    if (model_dir / "transformer").is_dir() or "transformer" in index:
        raise _refuse("a transformer-based model (SD3, FLUX, PixArt, ...)")
    if "prior" in index or "image_noising_scheduler" in index or "image_encoder" in index and "unet" not in index:
        raise _refuse("an unCLIP (image-variation) model")
    unet = _read(model_dir / "unet" / "config.json")
    vae = _read(model_dir / "vae" / "config.json")
    text = _read(model_dir / "text_encoder" / "config.json")
    if not unet:
        raise _refuse(f"{model_dir} (no unet/config.json)")
    channels = unet.get("in_channels", 4)
    if channels != 4:
        kind = {9: "an inpainting UNet (9 input channels)", 8: "an InstructPix2Pix UNet (8 input channels)"}
        raise _refuse(kind.get(channels, f"a UNet with {channels} input channels"))
    if unet.get("class_embed_type") is not None:
        raise _refuse(f"a UNet with class embeddings ({unet['class_embed_type']}: unCLIP or an upscaler)")
    addition = unet.get("addition_embed_type")
    if addition not in (None, "text_time"):
        raise _refuse(f"a UNet with {addition!r} added conditioning")
    if addition == "text_time" and not (model_dir / "text_encoder").is_dir():
        raise _refuse("the SDXL refiner (one text encoder, aesthetic-score conditioning)")

    scheduler = _read(model_dir / "scheduler" / "scheduler_config.json")
    if "EDM" in str(scheduler.get("_class_name", "")) or "sigma_data" in scheduler:
        raise _refuse("an EDM-formulation model (e.g. Playground v2.5; DDIM on its betas would be wrong)")
    if vae.get("latents_mean") is not None or vae.get("latents_std") is not None:
        raise _refuse("a VAE that normalizes its latents' mean and std (e.g. Playground v2.5)")
    from .backends.base import sample_sizes

    latent, image = sample_sizes(unet, vae)
    schedule = ScheduleConfig.from_json(scheduler)
    first_width = int(text.get("hidden_size", unet.get("cross_attention_dim", 768)))
    if addition == "text_time":
        second = _read(model_dir / "text_encoder_2" / "config.json")
        width = int(second.get("hidden_size", 1280))
        pooled_width = int(second.get("projection_dim", width))
        if pooled_width > width:
            raise _refuse(f"an SDXL-like model whose pooled projection ({pooled_width}) is wider than its encoder")
        encoders = (TextEncoder("text_encoder", "tokenizer", first_width, "penultimate"),
                    TextEncoder("text_encoder_2", "tokenizer_2", width, "penultimate", pooled=True,
                                pooled_width=pooled_width))
        side = max(1, image // 32)
        return Family("sdxl", encoders, latent, image, maps_resolution=side, schedule_config=schedule,
                      time_ids=True, zero_uncond=bool(index.get("force_zeros_for_empty_prompt", True)),
                      map_places=places_with_maps(unet, latent, side),
                      upcast_vae=bool(vae.get("force_upcast", True)))  # AutoencoderKL's default
    if (model_dir / "text_encoder_2").is_dir():
        raise _refuse("a UNet without SDXL's text_time conditioning next to two text encoders")
    encoders = (TextEncoder("text_encoder", "tokenizer", first_width),)
    # SD 2.x: OpenCLIP ViT-H (gelu, 1024-dim) and linear projections in the transformers; SD 1.x: OpenAI CLIP
    # ViT-L (quick_gelu, 768-dim). The tiny test models keep these markers at small widths.
    open_clip = text.get("hidden_act") == "gelu" or unet.get("cross_attention_dim") == 1024
    if open_clip:
        side = max(1, image // 32)
        return Family("sd2", encoders, latent, image, maps_resolution=side, schedule_config=schedule,
                      map_places=places_with_maps(unet, latent, side))
    # SD 1: the official code's 16x16 maps whatever the size (1/32 of the side at 512 px)
    return Family("sd1", encoders, latent, image, maps_resolution=16, schedule_config=schedule,
                  map_places=places_with_maps(unet, latent, 16))
