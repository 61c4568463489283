"""Random-weight Stable Diffusion pipelines (SD 1, SD 2, SDXL) in the diffusers folder layout.

No weights can be downloaded on CI or on the benchmark GPU, so tests and benchmarks build models
from configs: ``tiny`` keeps the SD v1 block layout (32 attention layers, 16x16 maps at 512 px) with
small widths; ``sd-v1`` is the exact SD v1.4 architecture (for timing and memory only). ``build_random_sd2``
and ``build_random_sdxl`` do the same for the other families (``tiny`` or the real architectures ``sd2.1`` /
``sdxl``), with the families' markers: OpenCLIP-like text encoders (gelu), linear projections, per-block
head counts, "!" padding; SDXL's two encoders, text_time conditioning and force_zeros_for_empty_prompt.
Needs the torch extra (diffusers builds and saves the folder).
"""
from __future__ import annotations

import os
from pathlib import Path

# (unet channels, vae channels, text hidden, text mlp, text layers, text heads, unet heads, groups)
SIZES = {
    # text hidden >= 77 so the SVD of [negative tokens + EOT] keeps its shape
    "tiny": ((32, 32, 64, 64), (32, 32, 32, 32), 128, 256, 2, 2, 2, 16),
    "sd-v1": ((320, 640, 1280, 1280), (128, 256, 512, 512), 768, 3072, 12, 12, 8, 32),
}


def build_random_pipeline(tokenizer_dir: str | os.PathLike, size: str = "tiny", seed: int = 0,
                          latent_size: int = 64):
    """A StableDiffusionPipeline with random weights and the given CLIP tokenizer (vocab.json + merges.txt).

    ``latent_size`` 32 gives 256 px samples whose 16x16 attention maps sit at the UNet's second level: the
    same algorithm at a sixteenth of the 64x64 layers' attention cost (the slow tests' model)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    ch, vch, hid, inter, layers, heads, unet_heads, groups = SIZES[size]
    torch.manual_seed(seed)
    tokenizer = CLIPTokenizer(os.path.join(tokenizer_dir, "vocab.json"), os.path.join(tokenizer_dir, "merges.txt"),
                              model_max_length=77)
    unet = UNet2DConditionModel(
        sample_size=latent_size, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=ch, layers_per_block=2, cross_attention_dim=hid,
        attention_head_dim=unet_heads, norm_num_groups=groups)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=vch, layers_per_block=2,
        latent_channels=4, sample_size=latent_size * 2 ** (len(vch) - 1), norm_num_groups=groups)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=hid, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=heads, max_position_embeddings=77, hidden_act="quick_gelu"))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def save_random_model(out_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike, size: str = "tiny",
                      seed: int = 0, latent_size: int = 64) -> Path:
    """Build a random pipeline and save it as a diffusers folder (safetensors); returns the folder."""
    out_dir = Path(out_dir)
    pipe = build_random_pipeline(tokenizer_dir, size=size, seed=seed, latent_size=latent_size)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


# SD 2: (unet channels, vae channels, text hidden, text mlp, text layers, text heads, unet heads per block, groups)
SD2_SIZES = {
    "tiny": ((32, 32, 64, 64), (32, 32, 32, 32), 128, 256, 2, 2, (2, 4, 4, 4), 16),
    "sd2.1": ((320, 640, 1280, 1280), (128, 256, 512, 512), 1024, 4096, 23, 16, (5, 10, 20, 20), 32),
}
# SDXL: (unet channels, transformer layers, heads per block, vae channels, (hidden, mlp, layers, heads) x 2,
#        groups)
SDXL_SIZES = {
    "tiny": ((32, 64, 64), (1, 1, 2), (2, 4, 4), (32, 32, 32, 32), ((80, 160, 2, 2), (128, 256, 2, 2)), 16),
    "sdxl": ((320, 640, 1280), (1, 2, 10), (5, 10, 20), (128, 256, 512, 512),
             ((768, 3072, 12, 12), (1280, 5120, 32, 20)), 32),
}


def _tokenizer(tokenizer_dir, pad_token: str | None = None):
    from transformers import CLIPTokenizer

    extra = {} if pad_token is None else {"pad_token": pad_token}
    return CLIPTokenizer(os.path.join(tokenizer_dir, "vocab.json"), os.path.join(tokenizer_dir, "merges.txt"),
                         model_max_length=77, **extra)


def _vae(vch, groups, latent_size, scaling_factor=0.18215):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=vch, layers_per_block=2,
        latent_channels=4, sample_size=latent_size * 2 ** (len(vch) - 1), norm_num_groups=groups,
        scaling_factor=scaling_factor)


def _ddim(prediction_type: str):
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type)


def build_random_sd2(tokenizer_dir: str | os.PathLike, size: str = "tiny", seed: int = 0, latent_size: int = 16,
                     prediction_type: str = "epsilon"):
    """A StableDiffusionPipeline shaped like SD 2.x (2.1-base: epsilon, 64; 2.1: v_prediction, 96 latents):
    OpenCLIP-like text encoder (gelu), "!" padding, linear projections, heads per block."""
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    ch, vch, hid, inter, layers, heads, unet_heads, groups = SD2_SIZES[size]
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=latent_size, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=ch, layers_per_block=2, cross_attention_dim=hid, attention_head_dim=unet_heads,
        use_linear_projection=True, norm_num_groups=groups)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=hid, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=heads, max_position_embeddings=77, hidden_act="gelu", projection_dim=512))
    return StableDiffusionPipeline(vae=_vae(vch, groups, latent_size), text_encoder=text_encoder,
                                   tokenizer=_tokenizer(tokenizer_dir, "!"), unet=unet,
                                   scheduler=_ddim(prediction_type), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def build_random_sdxl(tokenizer_dir: str | os.PathLike, size: str = "tiny", seed: int = 0, latent_size: int = 16):
    """A StableDiffusionXLPipeline shaped like SDXL base: CLIPTextModel + CLIPTextModelWithProjection ("!"
    padding on the second), text_time conditioning, attention only on the two lower levels."""
    import torch
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    ch, transformer_layers, unet_heads, vch, encoders, groups = SDXL_SIZES[size]
    torch.manual_seed(seed)
    (h1, m1, l1, a1), (h2, m2, l2, a2) = encoders
    time_dim = 256 if size == "sdxl" else 8
    unet = UNet2DConditionModel(
        sample_size=latent_size, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=ch, layers_per_block=2, transformer_layers_per_block=transformer_layers,
        cross_attention_dim=h1 + h2, attention_head_dim=unet_heads, use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + h2, norm_num_groups=groups)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=h1, intermediate_size=m1, num_hidden_layers=l1, num_attention_heads=a1,
        max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=h1))
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=49408, hidden_size=h2, intermediate_size=m2, num_hidden_layers=l2, num_attention_heads=a2,
        max_position_embeddings=77, hidden_act="gelu", projection_dim=h2))
    return StableDiffusionXLPipeline(vae=_vae(vch, groups, latent_size, 0.13025), text_encoder=text_encoder,
                                     text_encoder_2=text_encoder_2, tokenizer=_tokenizer(tokenizer_dir),
                                     tokenizer_2=_tokenizer(tokenizer_dir, "!"), unet=unet, scheduler=_ddim("epsilon"),
                                     force_zeros_for_empty_prompt=True)


def save_random_family(out_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike, family: str,
                       size: str = "tiny", seed: int = 0, latent_size: int = 16, device: str = "cpu",
                       **kwargs) -> Path:
    """``save_random_model`` for "sd2" or "sdxl" (``prediction_type`` for SD 2). ``device="cuda"`` draws the
    weights there (SDXL's 3.5 B parameters take minutes on a CPU; the GPU's random numbers differ)."""
    import torch

    out_dir = Path(out_dir)
    build = {"sd2": build_random_sd2, "sdxl": build_random_sdxl}[family]
    with torch.device(device):
        pipe = build(tokenizer_dir, size=size, seed=seed, latent_size=latent_size, **kwargs)
    pipe.save_pretrained(out_dir, safe_serialization=True)
    return out_dir
