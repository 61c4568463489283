"""Approaches (``suppresseot.approaches``): each diffusers baseline run through this tool equals the same pipeline
called directly with the same seed; attention reweighting; SuppressEOT's ablations; one-line refusals.

The models are the tiny random SD 1 and SDXL at 16x16 latents (128 px): the pipelines' arithmetic is what is
compared, not what the images show."""
import inspect
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

from suppresseot import SuppressEOT, SuppressEOTError  # noqa: E402
from suppresseot import approaches  # noqa: E402
from suppresseot.algorithm.attention import AttentionRecorder  # noqa: E402
from suppresseot.cli import main  # noqa: E402
from suppresseot.images import load_square  # noqa: E402

PROMPT = "A man with a beard wearing glasses and a hat in blue shirt"
PHOTO = Path(__file__).parents[1] / "src/suppresseot/data/study/examples" / f"{PROMPT}.jpg"
STEPS, SEED, GLASSES = 4, 3, 7
TOLERANCE = 1e-5  # the bound on final latents; on the CPU they come out bitwise equal


@pytest.fixture(scope="module")
def sd1_dir(tmp_path_factory, tokenizer_dir):
    from suppresseot.random_model import save_random_model

    return save_random_model(tmp_path_factory.mktemp("sd1-16") / "model", tokenizer_dir, size="tiny", seed=0,
                             latent_size=16)


@pytest.fixture(scope="module")
def sdxl_dir(tmp_path_factory, tokenizer_dir):
    from suppresseot.random_model import save_random_family

    return save_random_family(tmp_path_factory.mktemp("sdxl-16") / "model", tokenizer_dir, "sdxl", size="tiny",
                              latent_size=16)


@pytest.fixture(scope="module")
def sd1(sd1_dir):
    return SuppressEOT.from_pretrained(sd1_dir, device="cpu", progress=False)


@pytest.fixture(scope="module")
def sdxl(sdxl_dir):
    return SuppressEOT.from_pretrained(sdxl_dir, device="cpu", progress=False)


def direct(name: str, folder, scheduler=None):
    """The pipeline as a user loads it from the folder (the DDIM every approach samples with, unless given)."""
    cls = getattr(diffusers, name)
    scheduler = scheduler or diffusers.DDIMScheduler.from_pretrained(folder, subfolder="scheduler")
    absent = {"safety_checker": None, "requires_safety_checker": False}
    accepted = inspect.signature(cls.__init__).parameters
    pipe = cls.from_pretrained(folder, scheduler=scheduler, **{k: v for k, v in absent.items() if k in accepted})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generator():
    return torch.Generator().manual_seed(SEED)


def sampled(**kwargs) -> dict:
    return dict(num_inference_steps=STEPS, guidance_scale=7.5, generator=generator(), output_type="latent", **kwargs)


def close(ours: np.ndarray, theirs) -> float:
    difference = float(np.abs(ours - np.asarray(theirs, np.float32)).max())
    assert difference <= TOLERANCE, difference
    return difference


def edited_differs(result) -> None:
    assert np.abs(result.final_latents[0] - result.final_latents[1]).max() > 1e-3  # the edit did something


# --- each diffusers baseline equals diffusers' pipeline called directly ---------------------------------------
@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_negative_prompt_is_diffusers_negative_prompt(family, request):
    model, folder = request.getfixturevalue(family), request.getfixturevalue(f"{family}_dir")
    result = model.generate(PROMPT, "glasses", seed=SEED, steps=STEPS, approach="negative-prompt")
    pipe = direct("StableDiffusionXLPipeline" if family == "sdxl" else "StableDiffusionPipeline", folder)
    close(result.final_latents[0], pipe(PROMPT, **sampled()).images[0])
    close(result.final_latents[1], pipe(PROMPT, negative_prompt="glasses", **sampled()).images[0])
    edited_differs(result)
    assert result.approach_settings["words"] == "glasses" and result.seed == SEED


def test_sega_is_diffusers_semantic_guidance(sd1, sd1_dir):
    result = sd1.generate(PROMPT, "glasses", seed=SEED, steps=STEPS, approach="sega",
                          approach_options={"edit_warmup_steps": 1})
    pipe = direct("SemanticStableDiffusionPipeline", sd1_dir)
    close(result.final_latents[0], pipe(PROMPT, **sampled()).images[0])
    edit = dict(editing_prompt=["glasses"], reverse_editing_direction=[True], edit_warmup_steps=[1])
    close(result.final_latents[1], pipe(PROMPT, **sampled(**edit)).images[0])
    edited_differs(result)
    assert result.approach_settings["settings"]["edit_warmup_steps"] == 1  # the override, recorded
    assert result.approach_settings["settings"]["edit_guidance_scale"] == 5.0  # the documented default


def test_sld_is_diffusers_safe_latent_diffusion(sd1, sd1_dir):
    result = sd1.generate(PROMPT, "glasses", seed=SEED, steps=STEPS, approach="sld",
                          approach_options={"sld_warmup_steps": 1})
    pipe = direct("StableDiffusionPipelineSafe", sd1_dir)
    pipe.safety_concept = "glasses"
    for branch, scale in ((0, 0.0), (1, 1000.0)):
        steps = []
        pipe(PROMPT, sld_guidance_scale=scale, sld_warmup_steps=1, callback=lambda i, t, x: steps.append(x),
             **{**sampled(), "output_type": "np"})
        close(result.final_latents[branch], steps[-1][0])
    edited_differs(result)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_ledits_pp_is_diffusers_ledits_pp(family, request):
    model, folder = request.getfixturevalue(family), request.getfixturevalue(f"{family}_dir")
    result = model.edit(PHOTO, PROMPT, "glasses", steps=STEPS, approach="ledits++", seed=SEED)
    name = "LEditsPPPipelineStableDiffusionXL" if family == "sdxl" else "LEditsPPPipelineStableDiffusion"
    scheduler = diffusers.DPMSolverMultistepScheduler.from_pretrained(folder, subfolder="scheduler",
                                                                      algorithm_type="sde-dpmsolver++", solver_order=2)
    pipe = direct(name, folder, scheduler)
    from PIL import Image

    pipe.invert(image=Image.fromarray(load_square(PHOTO, model.backend.image_size)), source_prompt=PROMPT,
                num_inversion_steps=STEPS, generator=generator())
    close(result.final_latents[0], pipe(output_type="latent").images[0])
    edit = dict(editing_prompt=["glasses"], reverse_editing_direction=[True])
    close(result.final_latents[1], pipe(output_type="latent", **edit).images[0])
    edited_differs(result)
    assert result.inversion.method == "ledits++" and result.inversion.source == str(PHOTO)
    assert result.inversion.image.shape == (model.backend.image_size,) * 2 + (3,)


# --- attention reweighting ---------------------------------------------------------------------------------
def test_attention_reweight_with_scale_1_is_plain_generation(sd1):
    result = sd1.generate(PROMPT, "glasses", seed=SEED, steps=STEPS, approach="attention-reweight",
                          approach_options={"scale": 1.0})
    np.testing.assert_array_equal(result.final_latents[1], result.final_latents[0])
    zero = sd1.generate(PROMPT, "glasses", seed=SEED, steps=STEPS, approach="attention-reweight")
    np.testing.assert_array_equal(zero.final_latents[0], result.final_latents[0])  # the same original
    edited_differs(zero)


def test_attention_reweight_with_scale_0_makes_the_tokens_maps_zero(sd1):
    backend = sd1.backend
    with torch.no_grad():
        context = backend.cat([sd1._embed(PROMPT)] * 2)
        weights = np.ones((2, 77), np.float32)
        weights[1, GLASSES] = 0.0  # the second sample's "glasses" out of every layer's cross-attention
        recorder = AttentionRecorder(16, batch=2)
        with backend.reweighted_cross_attention(weights):
            backend.unet(backend.cat([backend.initial_latent(SEED)] * 2), 500, context, recorder=recorder)
    cross = [sums for (kind, _), (sums, _) in recorder.totals.items() if kind == "cross"]
    assert cross
    for sums in cross:  # (batch, head halves, pixels, keys)
        assert float(sums[1, :, :, GLASSES].abs().max()) == 0.0
        assert float(sums[0, :, :, GLASSES].min()) > 0.0  # the other sample keeps it
        assert float(sums[1, :, :, GLASSES + 1:].min()) > 0.0  # and the other tokens keep theirs


# --- the SuppressEOT family and photos ------------------------------------------------------------------------
def test_swr_only_runs_no_ito_and_ito_only_has_nothing_to_push(sd1):
    short = dict(seed=SEED, steps=3, iterations=2, max_step_to_erase=3, tau=0.7)
    swr = sd1.generate(PROMPT, "glasses", approach="swr-only", **short)
    assert swr.ito_log == [] and swr.settings.iterations == 0 and swr.approach == "swr-only"
    edited_differs(swr)
    ito = sd1.generate(PROMPT, "glasses", approach="ito-only", **short)
    assert ito.settings.alpha == 0.0 and len(ito.ito_log) == 2 * 2  # ITO ran at steps 1 and 2
    # its losses compare the edited branch's maps with the original's: without SWR they start equal, and every
    # loss is a distance, so every gradient is zero: ITO alone leaves the image as it was
    np.testing.assert_array_equal(ito.final_latents[1], ito.final_latents[0])


def test_negative_prompt_on_a_photo_edits_the_null_text_inversion(sd1):
    from suppresseot.config import InversionSettings

    inverted = sd1.invert(PHOTO, PROMPT, InversionSettings(inner_steps=2), steps=3)
    ours = sd1.edit(inverted, suppress="glasses", approach="suppresseot", iterations=1)
    negative = sd1.edit(inverted, suppress="glasses", approach="negative-prompt")
    # the same original branch: the null-text reconstruction of the same inversion
    np.testing.assert_allclose(negative.final_latents[0], ours.final_latents[0], atol=1e-5)
    edited_differs(negative)
    assert negative.inversion is inverted and negative.approach_settings["settings"] == {"inversion": "nt"}


def test_a_baselines_run_directory(sd1, tmp_path):
    result = sd1.generate(PROMPT, "glasses", seed=SEED, steps=STEPS, approach="negative-prompt")
    path = result.save(tmp_path)
    assert path.name == "generated-a-man-with-a-beard-wearing-glasses-and-a-tok7-negative-prompt-seed3"
    assert {"original.png", "suppressed.png", "run.json", "final_latents.npy"} <= {p.name for p in path.iterdir()}
    record = json.loads((path / "run.json").read_text())
    assert record["approach"]["name"] == "negative-prompt" and record["settings"] is None
    assert record["approach"]["runs_with"] == f"diffusers {diffusers.__version__}"
    assert record["approach"]["pipelines"]["sd1"] == "StableDiffusionPipeline"
    assert record["suppressed_tokens"] == ["glasses"] and record["seed"] == SEED


# --- refusals: one line, before any work ------------------------------------------------------------------------
def test_refusals_say_what_runs_instead():
    with pytest.raises(SuppressEOTError, match=r"unknown approach 'seg' \(did you mean sega\?\)"):
        approaches.get("seg")
    with pytest.raises(SuppressEOTError, match="sega has no pipeline for sdxl models .* choose one of suppresseot"):
        approaches.get("sega").check(family="sdxl")
    with pytest.raises(SuppressEOTError, match="ledits\\+\\+ is for photos only"):
        approaches.get("ledits++").check(kind="generated")
    with pytest.raises(SuppressEOTError, match="runs on the torch backend .* on jittor one of suppresseot, swr-only"):
        approaches.get("negative-prompt").check(backend="jittor")
    with pytest.raises(SuppressEOTError, match="only suppresses"):
        approaches.get("sega").check(mode="add")
    with pytest.raises(SuppressEOTError, match="sega has no setting scale; its settings: edit_guidance_scale"):
        approaches.get("sega").options({"scale": 0})
    assert approaches.get("suppresseot").check(kind="real", family="sdxl", backend="jittor", mode="add")
    assert approaches.parse_list("all") == list(approaches.APPROACHES)
    assert approaches.parse_option("edit_threshold=0.95") == ("edit_threshold", 0.95)


def test_the_api_refuses_an_approach_that_cannot_run(sdxl):
    with pytest.raises(SuppressEOTError, match="sega has no pipeline for sdxl"):
        sdxl.generate(PROMPT, "glasses", approach="sega")
    with pytest.raises(SuppressEOTError, match="for generated images only; for photos choose one of"):
        sdxl.edit(PHOTO, PROMPT, "glasses", approach="attention-reweight")


@pytest.mark.parametrize("argv, message", [
    (["--approach", "sega", "--model", "{sdxl}"], "sega has no pipeline for sdxl models"),
    (["--approach", "sega", "--alpha", "2"], "--alpha: SuppressEOT's options, which sega does not take"),
    (["--approach", "sld", "--ito-blocks", "down", "--lambda-erase", "-1"],
     "--lambda-erase --ito-blocks: SuppressEOT's options, which sld does not take"),
    (["--approach", "negative-prompt", "--backend", "jittor"], "negative-prompt runs on the torch backend"),
    (["--approach", "sld", "--approach-option", "scale=0"], "sld has no setting scale"),
    (["--approach-option", "scale=0"], "suppresseot has no setting scale; its settings: none: it takes SuppressEOT's"),
])
def test_cli_refusals_are_one_line_and_exit_2_before_any_work(argv, message, sdxl_dir, tmp_path, capsys,
                                                               monkeypatch):
    import suppresseot.api

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the refusal")

    monkeypatch.setattr(suppresseot.api, "load_backend", no_load)
    argv = [a.replace("{sdxl}", str(sdxl_dir)) for a in argv]
    out = tmp_path / "runs"
    code = main(["generate", PROMPT, "--suppress-words", "glasses", "--out", str(out), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not out.exists() or not any(out.iterdir())


def test_cli_lists_the_approaches(capsys):
    assert main(["approaches"]) == 0
    listing = capsys.readouterr().out
    for name, approach in approaches.APPROACHES.items():
        assert f"\n{name} " in f"\n{listing}" and ", ".join(approach.families) in listing
    assert main(["baselines"]) == 0 and capsys.readouterr().out == listing
