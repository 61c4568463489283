"""SD 2.x (epsilon and v) and SDXL on the PyTorch backend: detection from configs, equality with diffusers'
own pipelines with suppression off, null-text against DDIM inversion, tokens, SWR per encoder."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from conftest import TOKENIZER_DIR

pytest.importorskip("diffusers")

from suppresseot.algorithm.ddim import DDIMSchedule  # noqa: E402
from suppresseot.algorithm.swr import EmbeddingLayout, regularize_matrix, soft_weight_regularize  # noqa: E402
from suppresseot.errors import SuppressEOTError  # noqa: E402
from suppresseot.families import detect_family  # noqa: E402

STEPS = 4
PROMPT = "a cat wearing a red hat"


class _Lazy(dict):
    """Built on first use (under pytest-xdist a worker builds only the models its tests need)."""

    def __init__(self, make):
        super().__init__()
        self.make = make

    def __missing__(self, name):
        self[name] = self.make(name)
        return self[name]


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory) -> dict[str, Path]:
    from suppresseot.random_model import save_random_family

    base = tmp_path_factory.mktemp("families")
    kinds = {"sd2": ("sd2", {}), "sd2-v": ("sd2", {"prediction_type": "v_prediction"}), "sdxl": ("sdxl", {})}

    def make(name):
        folder = save_random_family(base / name, TOKENIZER_DIR, kinds[name][0], **kinds[name][1])
        if name == "sd2-v":  # as SD 2.1 (768): attention scores in float32 whatever the weights' dtype
            _edit(folder / "unet" / "config.json", upcast_attention=True)
        return folder

    return _Lazy(make)


@pytest.fixture(scope="module")
def models(family_dirs):
    from suppresseot import SuppressEOT

    return _Lazy(lambda name: SuppressEOT.from_pretrained(family_dirs[name], device="cpu", progress=False))


def test_detection_from_configs(family_dirs, tiny_model_dir):
    sd1, sd2, sd2v, xl = (detect_family(p) for p in (tiny_model_dir, family_dirs["sd2"], family_dirs["sd2-v"],
                                                      family_dirs["sdxl"]))
    assert (sd1.name, sd1.maps_resolution, sd1.prediction_type) == ("sd1", 16, "epsilon")
    assert (sd2.name, sd2.prediction_type, sd2v.prediction_type) == ("sd2", "epsilon", "v_prediction")
    assert (sd2.image_size, sd2.maps_resolution) == (128, 4)  # 1/32 of the side, as SD 1's 16 at 512
    assert xl.name == "sdxl" and xl.time_ids and xl.zero_uncond and xl.context_width == 80 + 128
    assert xl.layout == EmbeddingLayout(77, ((0, 80), (80, 208)), (80, 208))


def _copy_configs(src: Path, dst: Path) -> Path:
    for config in src.rglob("*.json"):
        target = dst / config.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(config.read_text())
    return dst


@pytest.mark.parametrize("change, words", [
    (lambda d: _edit(d / "unet" / "config.json", in_channels=9), "inpainting UNet"),
    (lambda d: (d / "transformer").mkdir(), "transformer-based"),
    (lambda d: _edit(d / "unet" / "config.json", class_embed_type="projection"), "unCLIP"),
    (lambda d: _edit(d / "scheduler" / "scheduler_config.json", _class_name="EDMDPMSolverMultistepScheduler",
                     sigma_data=0.5), "EDM"),  # Playground v2.5: SDXL's architecture, another formulation
    (lambda d: _edit(d / "vae" / "config.json", latents_mean=[0.0] * 4, latents_std=[1.0] * 4), "latents' mean"),
])
def test_unsupported_models_refused(family_dirs, tmp_path, change, words):
    folder = _copy_configs(family_dirs["sd2"], tmp_path / "m")
    change(folder)
    with pytest.raises(SuppressEOTError, match=words) as info:
        detect_family(folder)
    assert "SDXL" in str(info.value) and "\n" not in str(info.value)


def _edit(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.mark.parametrize("name", ["sd2", "sd2-v", "sdxl"])
def test_jittor_runs_each_family_as_the_torch_backend(models, family_dirs, name):
    """SD 2 and SDXL on Jittor (SD 2: OpenCLIP's gelu encoder, linear projections, per-block heads, and for
    sd2-v v-prediction and SD 2.1's upcast attention; SDXL: two encoders, penultimate states, the pooled
    projection, size conditioning, zero unconditional embedding): SWR+ITO, and for sd2-v and SDXL a photo with
    null-text, within SD 1's Jittor tolerance of the PyTorch backend (1e-3 relative)."""
    from suppresseot import SuppressEOT
    from suppresseot.config import InversionSettings

    jittor = SuppressEOT.from_pretrained(family_dirs[name], backend="jittor", device="cpu", progress=False)
    assert {m.upcast for m in jittor.backend.unet_model.attention_modules()} == {name == "sd2-v"}
    ours, theirs = (m.backend.to_numpy(m._embed(PROMPT)) for m in (jittor, models[name]))  # SDXL: (1, 78, D)
    assert ours.shape == theirs.shape and np.abs(ours - theirs).max() <= 1e-5 * np.abs(theirs).max()
    short = dict(steps=3, iterations=2, max_step_to_erase=3, tau=0.7)
    runs = [lambda m: m.generate(PROMPT, "hat", seed=5, **short)]
    if name in ("sd2-v", "sdxl"):
        photo = Path(__file__).parents[1] / "src/suppresseot/data/study/examples/A car near trees.jpg"
        inversion = InversionSettings(inner_steps=2)
        runs.append(lambda m: m.edit(photo, "a car near trees", "car", inversion=inversion, **short))
    for run in runs:
        ours, theirs = run(jittor), run(models[name])
        assert (ours.family, ours.backend_info["backend"]) == (theirs.family, "jittor")
        np.testing.assert_allclose([r["total"] for r in ours.ito_log], [r["total"] for r in theirs.ito_log], rtol=1e-3)
        assert np.linalg.norm(ours.final_latents - theirs.final_latents) <= 1e-3 * np.linalg.norm(theirs.final_latents)


@pytest.mark.parametrize("name", ["sd2", "sd2-v", "sdxl"])
def test_generate_matches_diffusers(models, family_dirs, name):
    """Suppression off: our DDIM sampling (v converted to noise in ``as_noise``, SDXL's pooled and size
    conditioning, zeroed unconditional embedding) is diffusers' pipeline with DDIMScheduler, and the seed's
    noise is what diffusers draws with a CPU generator."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    result = models[name].generate(PROMPT, "hat", seed=3, steps=STEPS, alpha=0.0, iterations=0, decode=False)
    pipe = (StableDiffusionXLPipeline if name == "sdxl" else StableDiffusionPipeline).from_pretrained(family_dirs[name])
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    reference = pipe(PROMPT, num_inference_steps=STEPS, guidance_scale=7.5, output_type="latent",
                     generator=torch.Generator().manual_seed(3)).images[0].numpy()
    for branch in result.final_latents:  # alpha 0: the suppressed branch is the original
        assert np.abs(branch - reference).max() <= 1e-5 * np.abs(reference).max()


@pytest.mark.parametrize("name", ["sd2-v", "sdxl"])
def test_null_text_beats_ddim_inversion(models, name):
    model = models[name]
    side = model.backend.image_size
    y, x = np.mgrid[0:side, 0:side] / side
    photo = (np.stack([x, y, 0.5 + 0.5 * np.sin(6 * x * y)], -1) * 255).astype(np.uint8)
    inverted = model.invert(photo, PROMPT, "nt", steps=STEPS)
    target = model.backend.to_numpy(model.backend.vae_encode(inverted.image))[0]
    plain = replace(inverted, uncond_per_step=[model._uncond()] * STEPS)  # DDIM inversion alone

    def error(inversion):
        latents = model.edit(inversion, suppress="hat", alpha=0.0, iterations=0, decode=False).final_latents
        return float(np.mean((latents[1] - target) ** 2))

    assert error(inverted) < 0.9 * error(plain)  # 4 steps on random weights: SD 2 v measured 0.65x


def test_token_tables_and_padding(models):
    sd2, xl = models["sd2"], models["sdxl"]
    table = sd2.tokens(PROMPT)
    assert table.words[1:-1] == ["a", "cat", "wearing", "a", "red", "hat"] and table.n == 8
    ids = sd2.tokenizer.padded_ids(PROMPT)
    assert ids[:8] == table.ids and ids[8:] == [sd2.tokenizer.hf.convert_tokens_to_ids("!")] * 69
    assert "'!' padding" in table.format()
    first, second = (t.padded_ids(PROMPT) for t in xl.tokenizers)
    assert first[:8] == second[:8] == table.ids
    assert first[8:] == [table.ids[-1]] * 69 and second[8:] == ids[8:]  # end token vs "!" padding
    assert xl.resolve(PROMPT, "red hat") == [[5, 6]]


def test_swr_per_encoder_block_and_pooled():
    rng = np.random.default_rng(0)
    layout = EmbeddingLayout(77, ((0, 80), (80, 208)), (80, 208))
    embedding = rng.standard_normal((1, 78, 208)).astype(np.float32)
    kept = soft_weight_regularize(embedding, [3], 6, 1.0, layout=layout)
    rows = [3] + list(range(5, 77))
    for start, end in layout.blocks:  # each encoder's block on its own
        expected = regularize_matrix(embedding[0, rows, start:end].astype(np.float64).T, 1.0).T
        np.testing.assert_allclose(kept[0, rows, start:end], expected, rtol=1e-5, atol=1e-6)
    untouched = [i for i in range(78) if i not in rows]
    np.testing.assert_array_equal(kept[0, untouched], embedding[0, untouched])  # words, start, pooled row
    regularized = soft_weight_regularize(embedding, [3], 6, 1.0, layout=layout, pooled="swr")
    assert not np.allclose(regularized[0, 77, 80:], embedding[0, 77, 80:])
    np.testing.assert_array_equal(regularized[0, 77, :80], embedding[0, 77, :80])


def test_sdxl_suppression_runs_and_records_family(models, tmp_path):
    result = models["sdxl"].generate(PROMPT, "hat", seed=1, steps=3, iterations=1)
    assert result.ito_log and np.isfinite([row["total"] for row in result.ito_log]).all()
    assert result.cross_attention.shape == (2, 4, 4, 77)
    assert not np.allclose(result.final_latents[0], result.final_latents[1])
    record = json.loads((result.save(tmp_path) / "run.json").read_text())
    assert (record["family"], record["prediction_type"]) == ("sdxl", "epsilon")


@pytest.mark.parametrize("config", [
    {"timestep_spacing": "trailing", "prediction_type": "v_prediction"},
    {"timestep_spacing": "linspace", "set_alpha_to_one": True, "steps_offset": 0},
    {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02},
])
def test_schedule_from_config_is_diffusers_ddim(config):
    """Timesteps and alphas as DDIMScheduler computes them from the same config (missing keys: its defaults)."""
    from diffusers import DDIMScheduler

    from suppresseot.families import ScheduleConfig

    full = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "steps_offset": 1,
            "set_alpha_to_one": False, **config}
    ours = ScheduleConfig.from_json(full)
    schedule = DDIMSchedule.from_config(7, ours)
    reference = DDIMScheduler(**full)
    reference.set_timesteps(7)
    assert list(schedule.timesteps) == reference.timesteps.tolist()
    np.testing.assert_allclose(schedule.alphas_cumprod, reference.alphas_cumprod.numpy(), rtol=1e-5)  # cumprod order
    assert schedule.alpha(-1) == pytest.approx(float(reference.final_alpha_cumprod), rel=1e-5)


@pytest.mark.parametrize("blocks, skipped", [(("down", "mid"), "up_blocks"), (("down",), "mid_block")])
def test_ito_blocks_end_sdxl_map_passes_early_with_the_same_maps_and_gradient(family_dirs, blocks, skipped):
    """--ito-blocks without up (SDXL's cheaper choice): map-only passes end before the up blocks (before the
    mid block for down alone); the kept maps and their gradient are those of the whole pass."""
    import torch

    from suppresseot.algorithm.attention import AttentionRecorder
    from suppresseot.backends.torch_backend import TorchBackend

    backend = TorchBackend(family_dirs["sdxl"], device="cpu")
    calls = {"up_blocks": 0, "mid_block": 0}
    for name in calls:  # the first resnet of each: the block's own pre-hooks run before it
        module = getattr(backend.unet_model, name)
        (module[0] if name == "up_blocks" else module).resnets[0].register_forward_hook(
            lambda *args, name=name: calls.__setitem__(name, calls[name] + 1))
    torch.manual_seed(0)
    latent = torch.randn(1, 4, backend.latent_size, backend.latent_size)
    embedding = torch.randn(1, 78, backend.family.context_width)  # 77 tokens and the pooled row

    places = []

    def maps_loss(run):
        def loss(x):
            recorder = AttentionRecorder(backend.family.maps_resolution, places=blocks)
            run(latent, 501, x, recorder)
            places.append({place for _, place in recorder.totals})
            cross = recorder.aggregate(True, ("down",), halves=False)
            self_ = recorder.aggregate(False, blocks, halves=False)
            return cross.square().sum() + self_.square().sum(), {"cross": cross, "self": self_}
        return backend.value_and_grad(loss, embedding)

    (value, aux, grad) = maps_loss(lambda *args: backend.unet(*args[:3], recorder=args[3]))
    assert calls == {"up_blocks": 1, "mid_block": 1}
    (value_cut, aux_cut, grad_cut) = maps_loss(backend.record_attention)
    assert calls[skipped] == 1, f"record_attention ran {skipped} though no kept map is there"
    assert places == [set(blocks), set(blocks)]
    assert torch.equal(aux_cut["cross"], aux["cross"]) and torch.equal(aux_cut["self"], aux["self"])
    torch.testing.assert_close(grad_cut, grad, rtol=1e-6, atol=1e-9)
    assert grad.abs().sum() > 0


def test_ito_blocks_setting_cli_and_run(models, tmp_path, capsys):
    """--ito-blocks: checked in one line; a run without up reads other maps (other losses) and records it."""
    from suppresseot.cli import main
    from suppresseot.config import SuppressionSettings

    assert SuppressionSettings(ito_blocks=["up", "mid", "down"]).validate().ito_blocks == ("up", "down", "mid")
    for bad, message in ((("mid",), "must include down or up"), (("up", "up"), "each once"),
                         (("side",), "some of down, mid, up"), ((), "got none")):
        with pytest.raises(SuppressEOTError, match=message):
            SuppressionSettings(ito_blocks=bad).validate()
    model = models["sdxl"]
    whole = model.generate(PROMPT, "hat", seed=1, steps=3, iterations=2)
    cut = model.generate(PROMPT, "hat", seed=1, steps=3, iterations=2, ito_blocks=("down", "mid"))
    assert len(cut.ito_log) == len(whole.ito_log) > 0
    assert not np.allclose([r["total"] for r in cut.ito_log], [r["total"] for r in whole.ito_log])
    record = json.loads((cut.save(tmp_path) / "run.json").read_text())
    assert record["settings"]["ito_blocks"] == ["down", "mid"]
    no_maps = replace(model.family, map_places=("up",))  # a model whose maps are in the up blocks only
    model.family, family = no_maps, model.family
    try:
        with pytest.raises(SuppressEOTError, match=r"no 4x4 attention maps in the down,mid block\(s\).*maps are in up"):
            model.generate(PROMPT, "hat", seed=1, steps=3, ito_blocks=("down", "mid"))
    finally:
        model.family = family
    assert main(["generate", PROMPT, "--suppress-words", "hat", "--ito-blocks", "down,side"]) == 2
    assert "--ito-blocks: 'down,side' is not a comma list of down, mid, up" in capsys.readouterr().err


def test_sdxl_float16_runs_its_vae_in_float32_as_its_pipeline(family_dirs, tmp_path):
    """SDXL's VAE overflows in float16; with force_upcast in its config (AutoencoderKL's default) diffusers'
    SDXL pipeline decodes in float32, and so does the backend. A VAE config that sets it false keeps float16."""
    import shutil

    import torch
    from diffusers import AutoencoderKL

    from suppresseot.backends.torch_backend import TorchBackend

    backend = TorchBackend(family_dirs["sdxl"], device="cpu", dtype="float16")
    assert backend.unet_model.dtype == torch.float16 and backend.vae.dtype == torch.float32
    latents = torch.randn(2, 4, backend.latent_size, backend.latent_size, generator=torch.Generator().manual_seed(0))
    vae = AutoencoderKL.from_pretrained(family_dirs["sdxl"], subfolder="vae")  # float32
    with torch.no_grad():
        expected = ((vae.decode(latents / vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1) * 255)
    expected = expected.permute(0, 2, 3, 1).numpy().astype(np.uint8)
    assert np.abs(backend.vae_decode(latents).astype(int) - expected).max() <= 1  # (1/s)*x vs x/s: 8-bit rounding

    fixed = shutil.copytree(family_dirs["sdxl"], tmp_path / "sdxl-fp16-vae")  # like madebyollin/sdxl-vae-fp16-fix
    config = json.loads((fixed / "vae" / "config.json").read_text())
    (fixed / "vae" / "config.json").write_text(json.dumps({**config, "force_upcast": False}))
    assert TorchBackend(fixed, device="cpu", dtype="float16").vae.dtype == torch.float16
    assert TorchBackend(family_dirs["sd2"], device="cpu", dtype="float16").vae.dtype == torch.float16  # SD 2's pipeline

    from suppresseot.api import load_backend

    jittor = load_backend("jittor", family_dirs["sdxl"], "cpu", dtype="float16")  # the Jittor backend likewise
    assert {str(p.dtype) for p in jittor.vae.parameters()} == {"float32"}
    assert {str(p.dtype) for p in jittor.unet_model.parameters()} == {"float16"}
    decoded = jittor.vae_decode(jittor.jt.array(latents.numpy()))
    assert np.abs(decoded.astype(int) - expected).max() <= 1
