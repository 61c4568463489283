"""Random-weight Stable Diffusion v1 pipelines in the diffusers folder layout.

No weights can be downloaded on CI or on the benchmark GPU, so tests and benchmarks build models
from configs: ``tiny`` keeps the SD v1 block layout (32 attention layers, 16x16 maps at 512 px) with
small widths; ``sd-v1`` is the exact SD v1.4 architecture (for timing and memory only).
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
