"""`batch --ray` and `eval --ray` on a local Ray (2 CPU workers, loopback only): the same results as the local
commands, nothing lost and nothing twice when a worker or the driver is killed."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("ray")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from suppresseot.cli import main, shipped_tokenizer  # noqa: E402
from suppresseot.ray_pool import LOOPBACK, RayOptions, RaySession  # noqa: E402
from suppresseot.study.batch import BatchOptions  # noqa: E402
from suppresseot.study.manifests import load_manifest  # noqa: E402

TOKENIZER_DIR = Path(__file__).parent / "fixtures" / "clip-tokenizer"
FAST = ["--steps", "1", "--iterations", "1", "--max-step-to-erase", "1", "--null-text-steps", "1", "--no-progress"]
RAY = ["--ray", "--workers", "2", "--no-dashboard"]
GENERATED = [{"id": f"gen-{i}", "type": "generated", "prompt": "a cat sitting on a red car", "token_group": [6],
              "seed": i, "tau": 1.0} for i in range(4)]  # tau 1: SWR and ITO act at the single step
PHOTOS = [{"id": "real-cat", "type": "real", "prompt": "a cat sitting on a red car", "token_group": [2],
           "image": "cat.png", "tau": 1.0},
          {"id": "real-dog", "type": "real", "prompt": "a dog on a sofa", "token_group": [2], "image": "dog.png",
           "tau": 1.0}]  # dog.png does not exist: that task fails
COMPARED = ["original.png", "suppressed.png", "input.png", "reconstruction.png", "final_latents.npy"]


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def run_dirs(out: Path) -> list[str]:
    """Finished run directories (a temporary one being written starts with a dot)."""
    return sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))


def same_results(a: Path, b: Path) -> None:
    """Images, latents and loss logs bitwise equal (times excepted)."""
    for name in COMPARED:
        if (a / name).exists() or (b / name).exists():
            assert (a / name).read_bytes() == (b / name).read_bytes(), f"{a.name}/{name} differs"
    for log, columns in (("ito.csv", 8), ("null_text.csv", 4)):  # every column but the last, seconds
        rows_a, rows_b = read_csv(a / log), read_csv(b / log)
        assert [list(r.values())[:columns] for r in rows_a] == [list(r.values())[:columns] for r in rows_b], log


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for the module, 2 CPUs (one per worker); the commands find it running and use it."""
    with RaySession(RayOptions(dashboard=False), num_cpus=2) as ray:
        yield ray


@pytest.fixture(scope="module")
def study(tmp_path_factory, small_model_dir):
    """A manifest (4 generated tasks, a photo, a task whose photo is missing) and its local batch, one thread as
    each Ray worker has (float sums depend on the thread count)."""
    folder = tmp_path_factory.mktemp("ray-study")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(folder / "cat.png")
    manifest = folder / "tiny.json"
    manifest.write_text(json.dumps({"name": "tiny", "tasks": GENERATED + PHOTOS}))
    (folder / "gen.json").write_text(json.dumps({"name": "gen", "tasks": GENERATED}))
    argv = ["batch", str(manifest), "--model", str(small_model_dir), "--group-size", "2"] + FAST
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(argv + ["--out", str(folder / "local")]) == 1  # real-dog fails
    finally:
        torch.set_num_threads(threads)
    return folder, argv


def test_ray_batch_equals_the_local_batch_and_a_failing_task_does_not_stop_it(ray_session, study, capsys):
    import psutil

    folder, argv = study
    out = folder / "ray"
    assert main(argv + ["--out", str(out)] + RAY) == 1
    err = capsys.readouterr().err
    assert "Ray: 2 worker(s), 0 GPU and 1 CPU each" in err and "FAILED real-dog" in err
    local = folder / "local"
    assert run_dirs(out) == run_dirs(local) == [f"{t}--suppresseot--torch" for t in ("gen-0", "gen-1", "gen-2",
                                                                                    "gen-3", "real-cat")]
    for name in run_dirs(out):
        same_results(local / name, out / name)
        record = json.loads((out / name / "run.json").read_text())
        assert record["ray_worker"]["node"] == LOOPBACK and record["group_size"] == (2 if "gen" in name else 1)
    failures = read_csv(out / "failures.csv")
    assert [(f["task"], f["error"]) for f in failures] == [("real-dog", read_csv(local / "failures.csv")[0]["error"])]
    summary = read_csv(out / "summary.csv")
    assert [(r["task"], r["status"]) for r in summary] == [(t["id"], "finished") for t in GENERATED] + [
        ("real-cat", "finished"), ("real-dog", "failed")]

    # Ray stayed on the loopback address: every TCP socket of its processes (children of this one; one that
    # exits between the listing and the reading of its sockets has none left)
    sockets = []
    for process in psutil.Process().children(recursive=True):
        try:
            sockets += process.net_connections(kind="tcp")
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    assert sockets
    for c in sockets:
        for address in (c.laddr, c.raddr):
            if address:
                assert address.ip in ("127.0.0.1", "::ffff:127.0.0.1", "::1"), c


def test_ray_batch_runs_every_approach_as_the_local_batch_names_them(ray_session, study, capsys):
    """The same (task, approach) pairs, groups and run directories as without Ray; a photo sent to a worker as an
    array is recorded by its path; SuppressEOT's runs equal the local batch's."""
    folder, argv = study
    out = folder / "ray-approaches"
    assert main(argv + ["--out", str(out), "--only", "gen-0", "gen-1", "real-cat",
                        "--approaches", "suppresseot,negative-prompt,ledits++"] + RAY) == 0
    err = capsys.readouterr().err
    assert "left out 2 of 9 (task, approach) pairs that cannot run here: ledits++ not for generated images (2)" in err
    expected = [("gen-0", "suppresseot"), ("gen-0", "negative-prompt"), ("gen-1", "suppresseot"),
                ("gen-1", "negative-prompt"), ("real-cat", "suppresseot"), ("real-cat", "negative-prompt"),
                ("real-cat", "ledits++")]
    assert run_dirs(out) == sorted(f"{t}--{a}--torch" for t, a in expected)
    summary = [(r["task"], r["approach"], r["status"]) for r in read_csv(out / "summary.csv")]
    assert summary == [(t["id"], a, "finished" if (t["id"], a) in expected else "pending")  # the manifest's order
                       for t in GENERATED + PHOTOS for a in ("suppresseot", "negative-prompt", "ledits++")
                       if a != "ledits++" or t["type"] == "real"]
    for task, approach in expected:
        record = json.loads((out / f"{task}--{approach}--torch" / "run.json").read_text())
        assert record["approach"]["name"] == approach and record["ray_worker"]["node"] == LOOPBACK
        assert record["group_size"] == (2 if approach == "suppresseot" and task != "real-cat" else 1)
        if task == "real-cat":
            assert record["inversion"]["image"] == str(folder / "cat.png")
        if approach == "suppresseot":
            same_results(folder / "local" / f"{task}--suppresseot--torch", out / f"{task}--{approach}--torch")


def test_a_worker_killed_mid_group_has_its_group_run_once_elsewhere(ray_session, study, small_model_dir, capsys):
    from suppresseot.study.ray_batch import run_batch_ray

    folder, _ = study
    manifest = load_manifest(folder / "gen.json", shipped_tokenizer())
    tasks = manifest.tasks
    out = folder / "killed-worker"
    out.mkdir()
    killed = []

    def kill_first(worker: dict, group) -> None:  # SIGKILL the worker process as it starts its first group
        if not killed:
            killed.append((worker["pid"], [pair.task.id for pair in group]))
            os.kill(worker["pid"], signal.SIGKILL)

    def load_model():
        from suppresseot.api import SuppressEOT

        return SuppressEOT.from_pretrained(str(small_model_dir), progress=False)

    options = BatchOptions(steps=1, iterations=1, max_step_to_erase=1, null_text_steps=1, group_size=2)
    code = run_batch_ray(manifest, tasks, load_model, "torch", out, options, RayOptions(workers=2, dashboard=False),
                         progress=False, on_submit=kill_first)
    assert code == 0 and killed
    err = capsys.readouterr().err
    assert "died" in err and "goes back in the queue" in err
    assert run_dirs(out) == [f"gen-{i}--suppresseot--torch" for i in range(4)]  # each once, no -2 copies
    assert [(r["task"], r["status"]) for r in read_csv(out / "summary.csv")] == [(f"gen-{i}", "finished")
                                                                                   for i in range(4)]
    assert read_csv(out / "failures.csv") == []
    for name in run_dirs(out):
        same_results(folder / "local" / name, out / name)
    pids = {json.loads((out / f"{task}--suppresseot--torch" / "run.json").read_text())["ray_worker"]["pid"]
            for task in killed[0][1]}
    assert killed[0][0] not in pids  # the killed group was computed by a live worker


def test_a_killed_driver_resumes_with_nothing_twice(ray_session, study, capsys):
    folder, argv = study
    out = folder / "killed-driver"
    manifest = folder / "gen.json"
    argv = ["batch", str(manifest)] + argv[2:] + ["--group-size", "1", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("RAY_ADDRESS", None)
    with open(folder / "driver.txt", "w") as log:  # its own Ray: a session, so its leftovers can be ended
        proc = subprocess.Popen([sys.executable, "-m", "suppresseot.cli"] + argv + ["--ray", "--workers", "1",
                                 "--no-dashboard"], stdout=log, stderr=log, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not (out.exists() and any((out / name / "run.json").is_file() for name in run_dirs(out))):
            assert proc.poll() is None, (folder / "driver.txt").read_text()
            assert time.monotonic() < deadline, "the first task did not finish in 4 minutes"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # Ray's agents outlive a killed driver for a minute
        except ProcessLookupError:
            pass
    first = run_dirs(out)
    assert len(first) < 4, "the driver finished before it was killed"
    stamps = {name: (out / name / "run.json").stat().st_mtime_ns for name in first}
    (out / f".gen-3--suppresseot--torch.tmp-{proc.pid}").mkdir()  # what a kill while saving leaves

    assert main(argv + RAY) == 0  # the rerun (on the module's Ray) resumes
    err = capsys.readouterr().err
    assert f"{len(first)} of 4 runs already finished" in err and "4 of 4 runs finished" in err
    assert run_dirs(out) == [f"gen-{i}--suppresseot--torch" for i in range(4)]
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]
    assert {name: (out / name / "run.json").stat().st_mtime_ns for name in first} == stamps
    assert [(r["task"], r["status"]) for r in read_csv(out / "summary.csv")] == [(f"gen-{i}", "finished")
                                                                                   for i in range(4)]


def test_ray_eval_equals_the_local_eval(ray_session, study, tmp_path, capsys):
    torch.manual_seed(0)
    small = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4)
    config = transformers.CLIPConfig(text_config=dict(vocab_size=49408, max_position_embeddings=77, **small),
                                     vision_config=dict(image_size=32, patch_size=8, **small), projection_dim=16)
    clip = tmp_path / "clip"
    transformers.CLIPModel(config).eval().save_pretrained(clip)
    transformers.CLIPTokenizer(str(TOKENIZER_DIR / "vocab.json"), str(TOKENIZER_DIR / "merges.txt"),
                               model_max_length=77).save_pretrained(clip)
    transformers.CLIPImageProcessor(size={"shortest_edge": 32},
                                    crop_size={"height": 32, "width": 32}).save_pretrained(clip)
    results = study[0] / "local"
    argv = ["eval", str(results), "--clip-model", str(clip), "--no-progress"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(argv + ["--out", str(tmp_path / "local.csv")]) == 0
    finally:
        torch.set_num_threads(threads)
    assert main(argv + ["--out", str(tmp_path / "ray.csv")] + RAY) == 0
    assert (tmp_path / "ray.csv").read_bytes() == (tmp_path / "local.csv").read_bytes()
    assert (tmp_path / "ray.md").read_bytes() == (tmp_path / "local.md").read_bytes()
    assert len(read_csv(tmp_path / "ray.csv")) == 5
    assert all(r["ssim"] and r["clip_image_similarity"] for r in read_csv(tmp_path / "ray.csv"))  # on the workers


def test_ray_options_errors_are_one_line(ray_session, study, capsys):
    folder, argv = study
    argv = ["batch", str(folder / "gen.json")] + argv[2:]
    for extra, expected in ((["--workers", "2"], "--workers needs --ray"),
                            (["--ray", "--gpus-per-worker", "0.5"], "the Ray cluster has no GPU"),
                            (["--ray", "--workers", "3"], "3 workers x 1 CPU need 3 CPUs; the Ray cluster has 2"),
                            (["--ray", "--device", "cuda:1"], "use --device cuda or auto")):
        assert main(argv + ["--out", str(folder / "errors")] + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err
        assert not (folder / "errors").exists() or not list((folder / "errors").iterdir())  # nothing written
