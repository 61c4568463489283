"""The web app (`suppress-eot app`) running for real on 127.0.0.1, driven through gradio_client.

The app's results must equal the API's for the same settings; a comparison with a baseline saves both runs and
shows both edits; bad input gives its message in the page and the app stays up; two clients get their own
results; Cancel stops a run (SuppressEOT's or the baseline's) at its next step.
"""
from __future__ import annotations

import csv
import json
import shutil
import socket
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

gradio = pytest.importorskip("gradio", reason="the app extra: pip install 'suppresseot[app]'")
from gradio_client import Client, handle_file  # noqa: E402

from suppresseot.api import SuppressEOT  # noqa: E402
from suppresseot.app import App, launch_options  # noqa: E402
from suppresseot.config import SuppressionSettings  # noqa: E402

pytestmark = pytest.mark.slow
PROMPT = "a man with a beard"
# steps, ITO iterations: the smallest run that still has SWR and ITO steps (tau 0.8 of 3 steps: from step 0)
STEPS, ITERATIONS = 3, 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(small_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("app-runs")
    model = SuppressEOT.from_pretrained(small_model_dir, device="cpu")  # tqdm bars on: the page shows them
    app = App(model, out, max_pixels=600 * 600)
    demo = app.build()
    port = free_port()
    demo.launch(**launch_options(out, port=port), prevent_thread_lock=True, quiet=True)
    try:
        yield app, f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


@pytest.fixture(scope="module")
def client(server):
    return Client(server[1], verbose=False)


def generate_args(prompt=PROMPT, words="beard", seed=2, alpha=1.0, steps=STEPS, iterations=ITERATIONS,
                  compare="none"):
    return (prompt, [], words, seed, alpha, 0.8, iterations, "soft-weight", steps, compare)


def photo_args(photo, compare="none", inversion="npi", steps=2, iterations=0):
    return (handle_file(str(photo)), PROMPT, [], "beard", inversion, 1.0, 0.8, iterations, "soft-weight", steps, compare)


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def check_same_as_api(outputs, result, tmp_path):
    """The page's images and the saved run equal the API's result for the same settings."""
    (original, suppressed), maps, loss, archive, info, run_dir, compare = outputs
    run_dir = Path(run_dir)
    np.testing.assert_array_equal(np.load(run_dir / "final_latents.npy"), result.final_latents)
    np.testing.assert_array_equal(pixels(original), np.asarray(result.original))
    np.testing.assert_array_equal(pixels(suppressed), np.asarray(result.suppressed))
    assert not np.array_equal(pixels(original), pixels(suppressed))
    # the maps: one 160 px cell per chosen token, two rows (original, suppressed)
    assert Image.open(maps).size[1] == 2 * (160 + 18)
    assert [row[0] for row in loss["data"][::5]] == list(range(len(result.ito_log)))
    assert [row[1] for row in loss["data"][::5]] == pytest.approx([r["total"] for r in result.ito_log])
    with zipfile.ZipFile(archive) as z:
        names = {Path(n).name for n in z.namelist()}
    assert {"original.png", "suppressed.png", "run.json", "ito.csv", "final_latents.npy"} <= names
    assert json.loads((run_dir / "run.json").read_text())["token_indices"] == result.token_indices
    assert not compare["visible"] and not compare["value"]  # "compare with: none": SuppressEOT alone, no gallery
    return run_dir


def test_generate_equals_api(server, client, tmp_path):
    app, _ = server
    # a chip's value is the word's token indices; "beard" is token 5 of the prompt
    assert ("beard (5)", "5") in app.chips(PROMPT)
    assert client.predict(PROMPT, api_name="/generate_tokens")["choices"][4] == ["beard (5)", "5"]
    outputs = client.predict(PROMPT, ["5"], "", 2, 1.0, 0.8, ITERATIONS, "soft-weight", STEPS, api_name="/generate")
    result = app.model.generate(PROMPT, "beard", seed=2, steps=STEPS,
                                settings=SuppressionSettings(alpha=1.0, tau=0.8, iterations=ITERATIONS))
    run_dir = check_same_as_api(outputs, result, tmp_path)
    assert run_dir.parent == app.out and "Suppressed **beard**" in outputs[4]


def test_photo_equals_api(server, client, tmp_path):
    app, _ = server
    # a palette photo with transparency, wider than tall: converted and centre-cropped as the CLI does
    photo = tmp_path / "man with a beard.png"
    rgba = np.random.default_rng(0).integers(0, 256, (300, 420, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").convert("P").save(photo, transparency=0)
    outputs = client.predict(handle_file(str(photo)), PROMPT, [], "beard", "nt", 1.0, 0.8, ITERATIONS,
                             "soft-weight", STEPS, api_name="/edit")
    crop, reconstruction, *rest = outputs
    result = app.model.edit(str(photo), PROMPT, "beard", inversion="nt", steps=STEPS,
                            settings=SuppressionSettings(alpha=1.0, tau=0.8, iterations=ITERATIONS))
    np.testing.assert_array_equal(pixels(crop), result.inversion.image)
    np.testing.assert_array_equal(pixels(reconstruction), result.inversion.reconstruction)
    run_dir = check_same_as_api(rest, result, tmp_path)
    assert (run_dir / "input.png").is_file() and (run_dir / "reconstruction.png").is_file()
    null_text = list(csv.DictReader(open(run_dir / "null_text.csv")))
    assert [float(r["loss"]) for r in null_text] == pytest.approx([r["loss"] for r in result.inversion.null_text_log])


def new_runs(out: Path, before: set) -> dict:
    """The run directories made since ``before``, by the approach that made them (run.json)."""
    return {json.loads((d / "run.json").read_text())["approach"]["name"]: d
            for d in set(out.iterdir()) - before if (d / "run.json").is_file()}


def check_compared(outputs, runs: dict, baseline: str):
    """Both runs saved; the gallery shows the original and both edits as saved; the info line and the zip
    name both folders."""
    assert set(runs) == {"suppresseot", baseline}
    archive, info, run_dir, gallery = outputs[3:7]
    assert gallery["visible"]
    gallery = gallery["value"]
    assert Path(run_dir) == runs["suppresseot"]
    assert runs["suppresseot"].name in info and runs[baseline].name in info and f"**{baseline}**" in info
    captions = [item["caption"] for item in gallery]
    assert [c.split(" (")[0] for c in captions[:3]] == ["original", "SuppressEOT", baseline]
    saved = [runs["suppresseot"] / "original.png", runs["suppresseot"] / "suppressed.png",
             runs[baseline] / "suppressed.png"]
    for item, path in zip(gallery, saved):
        np.testing.assert_array_equal(pixels(item["image"]), pixels(path))
    assert not np.array_equal(pixels(saved[1]), pixels(saved[2]))
    with zipfile.ZipFile(archive) as z:
        assert {Path(n).parts[0] for n in z.namelist()} == {run.name for run in runs.values()}
    return [json.loads((runs[name] / "run.json").read_text()) for name in ("suppresseot", baseline)]


def test_generate_compares_with_a_baseline(server, client):
    app, _ = server
    assert app.baselines("generated") == ["none", "swr-only", "ito-only", "negative-prompt", "sega", "sld",
                                          "attention-reweight"]
    before = set(app.out.iterdir())
    outputs = client.predict(*generate_args(steps=2, iterations=0, compare="negative-prompt"), api_name="/generate")
    records = check_compared(outputs, new_runs(app.out, before), "negative-prompt")
    assert [r["seed"] for r in records] == [2, 2] and [r["sampling"]["num_steps"] for r in records] == [2, 2]


@pytest.mark.parametrize("baseline", ["negative-prompt", "ledits++"])
def test_photo_compares_with_a_baseline(server, client, tmp_path, monkeypatch, baseline):
    app, _ = server
    photo = tmp_path / "man with a beard.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (200, 240, 3), dtype=np.uint8)).save(photo)
    inversions = []
    invert_many = app.model.invert_many
    monkeypatch.setattr(app.model, "invert_many", lambda *a, **k: inversions.append(a) or invert_many(*a, **k))
    before = set(app.out.iterdir())
    outputs = client.predict(*photo_args(photo, compare=baseline), api_name="/edit")
    records = check_compared(outputs[2:], new_runs(app.out, before), baseline)
    assert len(inversions) == 1  # this project's inversion ran once: edited twice, or LEDITS++ inverts its own way
    assert [r["inversion"]["image"] for r in records] == [photo.name] * 2
    shared = baseline == "negative-prompt"
    assert (records[0]["inversion"] == records[1]["inversion"]) == shared
    assert ("with the shared inversion" in outputs[6]) == shared


def test_cancel_stops_the_baselines_run_too(server):
    app, url = server
    before, app.step = set(app.out.iterdir()), None
    job = Client(url, verbose=False).submit(*generate_args(steps=6, iterations=0, compare="negative-prompt"),
                                            api_name="/generate")
    deadline = time.monotonic() + 180
    while (app.step or ("",))[0] not in ("sampling_original", "sampling_edited") and time.monotonic() < deadline:
        time.sleep(0.05)  # until SuppressEOT's run is done and the baseline's pipeline runs
    job.cancel()
    while app.lock.locked() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not app.lock.locked()
    with pytest.raises(Exception):
        job.result(timeout=5)
    assert app.step[0] in ("sampling_original", "sampling_edited") and app.step != ("sampling_edited", 5)
    assert set(app.out.iterdir()) == before  # nothing saved: neither SuppressEOT's run nor the baseline's


def test_two_clients_get_their_own_results(server):
    url = server[1]
    clients = [Client(url, verbose=False) for _ in range(2)]
    jobs = [c.submit(*generate_args(seed=seed, steps=2, iterations=0), api_name="/generate")
            for c, seed in zip(clients, (5, 6))]
    results = [job.result(timeout=240) for job in jobs]
    for seed, outputs in zip((5, 6), results):
        assert json.loads((Path(outputs[5]) / "run.json").read_text())["seed"] == seed
    assert not np.array_equal(pixels(results[0][0][1]), pixels(results[1][0][1]))


def bad_photo_files(tmp_path) -> dict:
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    large = tmp_path / "large.png"
    Image.new("L", (700, 700)).save(large)  # over the test app's 600x600 pixel limit
    return {"corrupt": corrupt, "large": large}


def test_bad_input_shows_its_message_and_the_app_stays_up(server, client, tmp_path):
    cases = [
        (generate_args(prompt="   "), "the prompt is empty"),
        (generate_args(words="glasses"), "'glasses' is not in the prompt's tokens"),
        (generate_args(words=""), "choose what to suppress"),
        (generate_args(alpha="nan"), "alpha must be a finite number"),
        (generate_args(steps=0), "steps must be a whole number of at least 1"),
        (generate_args(compare="ledits++"), "ledits\\+\\+ is for photos only"),
        (generate_args(compare="suppresseot"), "SuppressEOT always runs; compare it with another approach"),
        (generate_args(compare="sega", alpha=-1.0), "sega only suppresses"),
    ]
    for args, message in cases:
        with pytest.raises(Exception, match=message):
            client.predict(*args, api_name="/generate")
    files = bad_photo_files(tmp_path)
    for name, message in (("corrupt", "not an image Pillow can read"), ("large", "the photo is too large")):
        with pytest.raises(Exception, match=message):
            client.predict(handle_file(str(files[name])), PROMPT, [], "beard", "npi", 1.0, 0.8, 0, "soft-weight", 2,
                           api_name="/edit")
    photo = tmp_path / "photo.png"
    Image.new("RGB", (64, 64)).save(photo)
    with pytest.raises(Exception, match="sega is for generated images only"):
        client.predict(*photo_args(photo, compare="sega"), api_name="/edit")
    with pytest.raises(Exception, match="upload a photo first"):
        client.predict(None, PROMPT, [], "beard", "npi", 1.0, 0.8, 0, "soft-weight", 2, api_name="/edit")
    outputs = client.predict(*generate_args(steps=1, iterations=0), api_name="/generate")
    assert (Path(outputs[5]) / "suppressed.png").is_file()


STOP_STEPS = 500


def live_tensors() -> int:
    import gc

    import torch

    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor) and o.numel() >= 1000)


def test_cancel_stops_the_run_at_the_next_step(server, client):
    app, url = server
    before = set(app.out.iterdir())
    tensors = live_tensors()  # the model's weights and buffers
    job = Client(url, verbose=False).submit(*generate_args(steps=STOP_STEPS, iterations=0), api_name="/generate")
    deadline = time.monotonic() + 120
    while not app.busy and time.monotonic() < deadline:
        time.sleep(0.1)
    assert app.busy, "the run did not start"
    progress = []
    while not progress and time.monotonic() < deadline:  # the denoising bar, as the page shows it
        time.sleep(0.2)
        progress = job.status().progress_data or []
    assert progress and progress[-1].desc == "SuppressEOT" and progress[-1].length == STOP_STEPS
    started = time.monotonic()
    job.cancel()
    while app.lock.locked() and time.monotonic() < started + 60:
        time.sleep(0.1)
    # a cancelled run stops at its next step (a second or two), long before its last
    assert not app.lock.locked() and not app.busy, "the run went on after Cancel"
    stage, step = app.step
    assert stage == "swr_ito_sampling" and 0 < step < STOP_STEPS - 1
    with pytest.raises(Exception):
        job.result(timeout=5)
    assert time.monotonic() - started < 30
    assert set(app.out.iterdir()) == before  # nothing saved for the cancelled run
    assert live_tensors() <= tensors  # the stopped run's latents and maps are freed (its memory handed back)
    outputs = client.predict(*generate_args(steps=1, iterations=0), api_name="/generate")
    assert (Path(outputs[5]) / "suppressed.png").is_file()


def test_study_tab_lists_a_batch_and_shows_approaches_and_backends_side_by_side(server, client, tmp_path):
    app, _ = server
    run = Path(client.predict(*generate_args(steps=1, iterations=0), api_name="/generate")[5])  # a run of its own
    batch = app.out / "study-batch"
    batch.mkdir(exist_ok=True)
    rows = []
    for backend, approaches in (("torch", ("suppresseot", "sega")), ("jittor", ("suppresseot",))):
        for approach in approaches:
            shutil.copytree(run, batch / f"t1--{approach}--{backend}", dirs_exist_ok=True)
            rows.append({"task": "t1", "set": "examples", "type": "generated", "approach": approach,
                         "backend": backend, "status": "finished", "run_dir": f"t1--{approach}--{backend}"})
    with open(batch / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert "study-batch" in app.study_folders()
    table, sets, backends, plots, scores, task = client.predict("study-batch", api_name="/study")
    assert [(r[3], r[4]) for r in table["data"]] == [("suppresseot", "torch"), ("sega", "torch"),
                                                      ("suppresseot", "jittor")]
    gallery = client.predict("study-batch", "t1", api_name="/study_task")
    assert [item["caption"] for item in gallery] == ["torch: original", "torch: suppresseot", "torch: sega",
                                                     "jittor: original", "jittor: suppresseot"]
    with pytest.raises(Exception, match="not a batch folder"):
        client.predict("../..", "t1", api_name="/study_task")


def test_cli_rejects_a_bad_auth_before_loading(capsys):
    from suppresseot.cli import main

    assert main(["app", "--auth", "nopassword", "--model", "/nonexistent"]) == 2
    assert "--auth takes USER:PASS" in capsys.readouterr().err


def test_serves_no_other_path_of_the_server(server, tmp_path):
    import httpx

    app, url = server
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the web")
    for path in (secret, Path(__file__)):
        response = httpx.get(f"{url}gradio_api/file={path}")
        assert response.status_code in (403, 404) and "not for the web" not in response.text
    assert launch_options(app.out)["server_name"] == "127.0.0.1" and launch_options(app.out)["share"] is False
