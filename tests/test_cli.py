"""The command line: every bad input is one line and exit 2; end-to-end runs write every file."""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from suppresseot.cli import main
from suppresseot.runs import PHOTO_FILES, RUN_FILES

pytest.importorskip("diffusers")
PROMPT = "A man with a beard wearing glasses and a hat in blue shirt"
# 3 steps, ITO at steps 1 and 2 ((1 - 0.7) * 3 = 0.9), one iteration each
FAST = ["--steps", "3", "--iterations", "1", "--max-step-to-erase", "3", "--tau", "0.7", "--no-progress"]


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("photos") / "A man with a beard wearing glasses and a hat in blue shirt.png"
    Image.fromarray(rng.integers(0, 255, (300, 400, 4), dtype=np.uint8), "RGBA").save(path)  # odd input: RGBA
    return path


def one_line_error(capsys, argv, expected):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert expected in err[0], err[0]


def test_bad_inputs_exit_2_with_one_line(capsys, tmp_path, tiny_model_dir, photo):
    model = ["--model", str(tiny_model_dir), "--out", str(tmp_path / "runs")]
    gen = ["generate", PROMPT] + model
    cases = [
        (gen + ["--suppress-tokens", "0"], "index 0 is the start token"),
        (gen + ["--suppress-tokens", "14"], "past the prompt's last word"),
        (gen + ["--suppress-tokens", "80"], "outside 1..13"),
        (gen + ["--suppress-tokens", "4,x"], "not a token group"),
        (gen + ["--suppress-words", "cat"], "'cat' is not in the prompt's tokens"),
        (["generate", " ".join(["dog"] * 80), "--suppress-tokens", "1"] + model, "at most 75"),
        (gen + ["--suppress-tokens", "7", "--alpha", "nan"], "'nan' is not a finite number"),
        (gen + ["--suppress-tokens", "7", "--alpha", "inf"], "'inf' is not a finite number"),
        (gen + ["--suppress-tokens", "7", "--steps", "0"], "steps must be between 1 and 999"),
        (gen + ["--suppress-tokens", "7", "--steps", "1000"], "steps must be between 1 and 999"),
        (gen + ["--suppress-tokens", "7", "--tau", "1.5"], "tau must be in [0, 1]"),
        (gen + ["--suppress-tokens", "7", "--iterations", "-1"], "ITO iterations must be >= 0"),
        (gen, "name what to suppress"),
        (["generate", PROMPT, "--suppress-tokens", "7", "--model", str(tmp_path / "nope")], "does not exist"),
        (["generate", PROMPT, "--suppress-tokens", "7", "--model", str(tmp_path)], "is not a Stable Diffusion folder"),
        (["edit", str(tmp_path / "missing.jpg"), "--suppress-tokens", "7"] + model, "does not exist"),
        (["edit", str(photo), "--suppress-tokens", "7", "--inversion", "ddim"] + model, "invalid choice: 'ddim'"),
        (["edit", str(photo), "--suppress-tokens", "7", "--null-text-steps", "0"] + model, "null-text steps"),
        (["generate", PROMPT, "--suppress-tokens", "7", "--backend", "tensorflow"] + model[:2], "invalid choice"),
    ]
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("hello")
    cases.append((["edit", str(not_an_image), "--suppress-tokens", "7"] + model, "cannot read"))
    a_file = tmp_path / "file"
    a_file.write_text("x")
    cases.append((["generate", PROMPT, "--suppress-tokens", "7", "--model", str(tiny_model_dir),
                   "--out", str(a_file / "sub")], "cannot write to the output folder"))
    for argv, expected in cases:
        one_line_error(capsys, argv, expected)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_unreachable_hub_is_one_line(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    one_line_error(capsys, ["generate", PROMPT, "--suppress-tokens", "7", "--model", "nobody-here/no-such-model",
                            "--out", str(tmp_path)], "could not get nobody-here/no-such-model from the Hugging Face hub")


def test_console_script_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "suppresseot.cli", "edit", str(tmp_path / "x.png"),
                           "--suppress-tokens", "1"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"suppress-eot: error: image {tmp_path / 'x.png'} does not exist: check the path"
    debug = subprocess.run([sys.executable, "-m", "suppresseot.cli", "edit", str(tmp_path / "x.png"),
                            "--suppress-tokens", "1", "--debug"], capture_output=True, text=True)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_tokens_command(capsys):
    assert main(["tokens", PROMPT]) == 0
    out = capsys.readouterr().out
    assert "    7  glasses" in out and "14..76" in out


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def check_run_dir(path, photo_run):
    names = set(os.listdir(path))
    assert set(RUN_FILES) <= names, set(RUN_FILES) - names
    assert set(PHOTO_FILES) <= names if photo_run else not set(PHOTO_FILES) & names
    latents = np.load(path / "final_latents.npy")
    assert latents.shape == (2, 4, 32, 32)  # small_model_dir: 256 px
    assert latents.dtype == np.float32 and np.isfinite(latents).all()
    record = json.loads((path / "run.json").read_text())
    for png in ["original.png", "suppressed.png", "cross_attention.png", "self_attention.png"]:
        Image.open(path / png).verify()
    return record


@pytest.mark.slow
def test_generate_end_to_end(tmp_path, small_model_dir):
    out = tmp_path / "runs"
    argv = ["generate", PROMPT, "--suppress-tokens", "4,5", "--suppress-words", "glasses", "--alpha", "1", "2",
            "--seed", "7", "--model", str(small_model_dir), "--out", str(out), "--device", "cpu"] + FAST
    assert main(argv) == 0
    runs = sorted(out.iterdir())
    assert len(runs) == 4  # 2 token groups x 2 alphas, one directory each
    records = [check_run_dir(r, photo_run=False) for r in runs]
    assert {tuple(r["token_indices"]) for r in records} == {(7,), (4, 5)}
    assert {r["settings"]["alpha"] for r in records} == {1.0, 2.0}
    record = records[0]
    assert record["seed"] == 7 and record["kind"] == "generated" and record["ito_steps"] == [1, 2]
    assert record["tokens"][7]["token"] == "glasses" and record["command"].startswith("suppress-eot generate")
    assert {"text_encoding", "swr_ito_sampling", "vae_decode"} <= set(record["seconds"])
    ito = read_csv(runs[0] / "ito.csv")
    assert [int(r["step"]) for r in ito] == [1, 2] and all(np.isfinite(float(r["total"])) for r in ito)
    assert read_csv(runs[0] / "null_text.csv") == []
    assert {r["stage"] for r in read_csv(runs[0] / "memory.csv")} == set(record["seconds"])
    # the same run again never overwrites: a new directory with a suffix, and the seed reproduces it
    repeat = ["generate", PROMPT, "--suppress-tokens", "4,5", "--seed", "7"] + argv[argv.index("--model"):]
    assert main(repeat) == 0
    assert len(list(out.iterdir())) == 5
    assert runs[0].name.endswith("tok4-5-a1-tau0.7-seed7")
    again = out / (runs[0].name + "-2")
    assert json.loads((again / "run.json").read_text())["prompt"] == PROMPT
    np.testing.assert_allclose(np.load(again / "final_latents.npy"), np.load(runs[0] / "final_latents.npy"),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("inversion,null_text_rows", [("nt", 3), ("npi", 0)])
def test_edit_end_to_end(tmp_path, small_model_dir, photo, inversion, null_text_rows):
    out = tmp_path / "runs"
    argv = ["edit", str(photo), "--suppress-words", "glasses", "--inversion", inversion, "--null-text-steps", "1",
            "--model", str(small_model_dir), "--out", str(out)] + FAST
    assert main(argv) == 0
    (run,) = out.iterdir()
    record = check_run_dir(run, photo_run=True)
    assert record["prompt"] == PROMPT  # from the file name
    assert record["kind"] == "real" and record["step_scale"] == 5.0
    assert record["inversion"]["method"] == inversion
    rows = read_csv(run / "null_text.csv")
    assert len(rows) == null_text_rows and all(float(r["loss"]) >= 0 for r in rows)
    assert ("null_text" in record["seconds"]) == (inversion == "nt")
    # the inversion's stages keep their own names next to the edit's
    assert {"inversion_text_encoding", "vae_encode", "ddim_inversion", "text_encoding"} <= set(record["seconds"])
    assert Image.open(run / "input.png").size == (256, 256)  # the small model's size (SD v1: 512)


@pytest.mark.slow
def test_python_api(tiny_model_dir, tmp_path):
    from suppresseot import SuppressEOT
    from suppresseot.errors import SuppressEOTError

    model = SuppressEOT.from_pretrained(tiny_model_dir, progress=False)
    result = model.generate(PROMPT, "glasses", seed=3, steps=2, iterations=1, max_step_to_erase=2, tau=0.5)
    assert result.token_indices == [7] and result.original.size == (512, 512)
    assert result.cross_attention.shape == (2, 16, 16, 77) and result.self_attention.shape == (2, 16, 16, 256)
    assert len(result.ito_log) == 1 and result.ito_log[0]["step"] == 1
    # ITO moves the suppressed branch only: the original branch equals a run without any suppression
    plain = model.generate(PROMPT, "glasses", seed=3, steps=2, iterations=0, tau=0.0, alpha=0.0, method="weight",
                           decode=False)
    np.testing.assert_allclose(result.final_latents[0], plain.final_latents[0], rtol=1e-5, atol=1e-5)
    assert not np.allclose(result.final_latents[1], result.final_latents[0])
    # decode=False: latents only, and no run directory from them
    assert plain.original is None and plain.suppressed is None and "vae_decode" in result.seconds
    assert "vae_decode" not in plain.seconds
    with pytest.raises(SuppressEOTError, match="latents only .*decode=True"):
        plain.save(tmp_path)


@pytest.mark.slow
def test_fast_mode_keeps_algorithm_state_in_float32(small_model_dir):
    """--fast: bf16 weights and fused attention, but latents, embeddings and null-text state stay float32."""
    from suppresseot import SuppressEOT

    fast = SuppressEOT.from_pretrained(small_model_dir, device="cpu", fast=True, progress=False)
    assert fast.backend.info()["dtype"] == "bfloat16" and fast.backend.info()["fused_attention"]
    short = dict(seed=3, steps=2, iterations=1, max_step_to_erase=2, tau=0.5)
    result = fast.generate(PROMPT, "glasses", **short)
    assert result.final_latents.dtype == np.float32 and np.isfinite(result.final_latents).all()
    assert result.cross_attention.shape == (2, 16, 16, 77)
    exact = SuppressEOT.from_pretrained(small_model_dir, device="cpu", progress=False).generate(PROMPT, "glasses",
                                                                                                 **short)
    diff = np.linalg.norm(result.final_latents - exact.final_latents) / np.linalg.norm(exact.final_latents)
    assert 0 < diff < 0.05  # bf16 rounding, not a different computation
    # the text embedding (the null-text optimization's parameter) leaves the bf16 encoder as float32
    assert str(fast.backend.encode_text(fast.tokenizer.padded_ids("")).dtype) == "torch.float32"
