"""The study commands: manifests built from the shipped lists, and a batch that survives kills and failures."""
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

from suppresseot.cli import main, shipped_tokenizer
from suppresseot.study.batch import BatchOptions, make_groups, select_tasks
from suppresseot.study.manifests import Task, load_manifest
from suppresseot.study.memory import MemorySampler
from suppresseot.study.pairs import Plan
from suppresseot.tokens import token_table

TOKENIZER_DIR = Path(__file__).parent / "fixtures" / "clip-tokenizer"

SHIPPED = {"unsplash": 10, "examples": 8, "vangogh": 20, "tyler": 10, "coco-car-gen": 12}


def read_json(path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def one_line_error(capsys, argv, expected):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert expected in err[0], err[0]


# --- prepare --------------------------------------------------------------------------------------
def test_prepare_writes_the_shipped_sets_with_tokenizer_checked_indices(tmp_path, capsys):
    assert main(["prepare", *SHIPPED, "--out", str(tmp_path)]) == 0
    tokenizer = shipped_tokenizer()
    manifests = {name: read_json(tmp_path / f"{name}.json") for name in SHIPPED}
    assert {name: len(m["tasks"]) for name, m in manifests.items()} == SHIPPED
    for name, manifest in manifests.items():
        assert manifest["skipped"] == [], name
        for task in manifest["tasks"]:
            table = token_table(tokenizer, task["prompt"])
            assert [table.words[i] for i in task["token_group"]] == task["target_tokens"], task["id"]
            if task["type"] == "real":  # shipped photos are copied next to the manifest
                assert (tmp_path / task["image"]).is_file() and not Path(task["image"]).is_absolute()
            else:
                assert isinstance(task["seed"], int)
        load_manifest(tmp_path / f"{name}.json", tokenizer, check_images=True)  # what batch accepts

    by_id = {t["id"]: t for m in manifests.values() for t in m["tasks"]}
    for set_name, artist in (("vangogh", "Van Gogh"), ("tyler", "Tyler Edlin")):  # the artist's own tokens
        for task in manifests[set_name]["tasks"]:
            ids = token_table(tokenizer, task["prompt"]).ids
            assert [ids[i] for i in task["token_group"]] == tokenizer.encode_words(artist), task["id"]
            assert task["mode"] == "suppress" and task["alpha"] == 1.0 and task["tau"] == 0.8
    assert by_id["vangogh-00"]["seed"] == 2219 and by_id["vangogh-00"]["token_group"] == [10, 11]
    assert by_id["tyler-01"]["target_tokens"] == ["tyler", "ed", "lin"] and by_id["tyler-01"]["seed"] == 3232
    chair = next(t for t in manifests["unsplash"]["tasks"] if "leather chair" in t["prompt"])
    assert chair["token_group"] == [2, 3, 4] and chair["target"] == "brown leather chair"
    # the README examples: cross_retain_steps c -> tau 1 - c; alpha -0.001 -> mode add; iter_each_step -> iterations
    assert by_id["example-elephant-glasses-add-gen"].items() >= {
        "mode": "add", "alpha": -0.001, "tau": 0.8, "seed": 16, "iterations": 0, "target_tokens": ["glasses"]}.items()
    assert by_id["example-jeep-robot-replace-real"]["tau"] == 0.5
    assert [by_id[f"example-man-glasses-real-tok{g}"]["target_tokens"] for g in ("4-5", "7", "9-10")] == [
        ["a", "beard"], ["glasses"], ["a", "hat"]]
    for task in manifests["coco-car-gen"]["tasks"]:
        assert set(task["target_tokens"]) <= {"car", "cars"} and task["seed"] == task["source"]["coco_image_id"]
    out = capsys.readouterr().out
    assert "wrote" in out and "vangogh" in out

    again = tmp_path / "again"
    assert main(["prepare", "coco-car-gen", "--out", str(again)]) == 0  # the sample is fixed
    assert read_json(again / "coco-car-gen.json")["tasks"] == manifests["coco-car-gen"]["tasks"]


def test_prepare_all_says_what_it_cannot_prepare(tmp_path, capsys):
    assert main(["prepare", "--all", "--out", str(tmp_path)]) == 0
    study = read_json(tmp_path / "study.json")
    assert len(study["tasks"]) == 10 + 12 + 20 + 10 and len({t["id"] for t in study["tasks"]}) == 52
    assert [u["set"] for u in study["unavailable"]] == ["coco-car-real"]
    assert "--coco-images" in study["unavailable"][0]["reason"]
    out = capsys.readouterr().out
    assert "coco-car-real" in out and "not preparable" in out and "52 of the study's 64 cases" in out
    # asked for by name, it is an error, and nothing is written
    one_line_error(capsys, ["prepare", "coco-car-real", "--out", str(tmp_path / "x")], "--coco-images")
    assert not (tmp_path / "x").exists()
    one_line_error(capsys, ["prepare", "imagenet", "--out", str(tmp_path)], "unknown set imagenet")
    one_line_error(capsys, ["prepare", "--out", str(tmp_path)], "name the sets")


def test_prepare_coco_from_the_users_captions_and_photos(tmp_path, capsys):
    """A small stand-in for captions_val2017.json + val2017/: sampling, car tokens, skipped entries."""
    images, annotations, folder = [], [], tmp_path / "val2017"
    folder.mkdir()
    captions = [f"A red car parked next to house number {i}" for i in range(11)]
    captions += ["Two cars and a bus", "A cartoon face on a hydrant",  # the last: no car, never sampled
                 "A car " + "and a very long road " * 16]  # too long for CLIP: skipped, with the reason
    for image_id, caption in enumerate(captions, 1):
        images.append({"id": image_id, "file_name": f"{image_id:012d}.jpg"})
        annotations.append({"id": 100 + image_id, "image_id": image_id, "caption": caption})
        Image.new("RGB", (8, 8)).save(folder / f"{image_id:012d}.jpg")
    annotations.append({"id": 1, "image_id": 12, "caption": "A bus on a street"})  # first caption: no car
    (tmp_path / "captions_val2017.json").write_text(json.dumps({"images": images, "annotations": annotations}))
    argv = ["prepare", "coco-car-real", "coco-car-gen", "--coco-captions", str(tmp_path / "captions_val2017.json"),
            "--coco-images", str(folder), "--out", str(tmp_path / "m")]
    assert main(argv) == 0
    real, gen = read_json(tmp_path / "m" / "coco-car-real.json"), read_json(tmp_path / "m" / "coco-car-gen.json")
    assert len(real["tasks"]) == len(gen["tasks"]) == 12
    assert [t["prompt"] for t in real["tasks"]] == [t["prompt"] for t in gen["tasks"]]  # same captions
    assert all(Path(t["image"]).is_absolute() and Path(t["image"]).is_file() for t in real["tasks"])
    assert "Two cars and a bus" in [t["prompt"] for t in gen["tasks"]]
    assert [s["id"] for s in gen["skipped"]] == ["coco-car-gen-14"] and "at most 75" in gen["skipped"][0]["reason"]
    assert "skipped coco-car-gen-14" in capsys.readouterr().out
    assert main(argv) == 0 and read_json(tmp_path / "m" / "coco-car-real.json")["tasks"] == real["tasks"]


# --- batch input checks (no model needed) -----------------------------------------------------------
def test_bad_manifests_and_selections_are_one_line_errors(tmp_path, capsys):
    bad = {"tasks": [
        {"id": "a", "type": "generated", "prompt": "a cat on a car", "token_group": [0]},
        {"id": "b", "type": "generated", "prompt": "a cat on a car", "token_group": [2], "mode": "add", "alpha": 1},
        {"id": "b", "type": "generated", "prompt": "a cat on a car", "token_group": [2]},
        {"id": "c", "type": "real", "prompt": "a cat on a car", "tokens": [2]},
        {"id": "d", "type": "generated", "prompt": "a cat on a car", "token_group": [2],
         "target_tokens": ["dog"]},
    ]}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    out = ["--out", str(tmp_path / "out")]
    one_line_error(capsys, ["batch", str(path)] + out, "5 problem(s)")
    for expected in ("index 0 is the start token", "mode add needs alpha < 0", "used by an earlier task",
                     "unknown field(s) tokens", "not target_tokens"):
        assert main(["batch", str(path)] + out) == 2 and expected in capsys.readouterr().err
    one_line_error(capsys, ["batch", str(tmp_path / "nope.json")] + out, "does not exist")
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"tasks": bad["tasks"][2:3]}))
    one_line_error(capsys, ["batch", str(good), "--only", "bb"] + out, "did you mean b?")
    one_line_error(capsys, ["batch", str(good), "--shard", "3/2"] + out, "1 <= I <= N")


def test_select_tasks_only_shard_limit():
    tasks = [Task(id=f"t{i}", type="generated", prompt="a cat", token_group=[2]) for i in range(7)]
    ids = lambda selected: [t.id for t in selected]  # noqa: E731
    assert ids(select_tasks(tasks, shard=(1, 3))) == ["t0", "t3", "t6"]
    assert ids(select_tasks(tasks, shard=(3, 3))) == ["t2", "t5"]
    assert sorted(ids(select_tasks(tasks, shard=(1, 2)) + select_tasks(tasks, shard=(2, 2)))) == ids(tasks)
    assert ids(select_tasks(tasks, only=["t5", "t1"], limit=1)) == ["t1"]


def test_pairs_are_task_major_and_what_cannot_run_is_left_out():
    tasks = [Task("gen", "generated", "a cat on a car", [2]),
             Task("real", "real", "a cat on a car", [2], image="x.png"),
             Task("add", "generated", "a cat on a car", [2], mode="add"), Task("gen2", "generated", "a cow", [2])]
    plan = Plan.choose("suppresseot,negative-prompt,ledits++", "torch")
    assert not plan.every and Plan.choose(None, "torch").approaches == ["suppresseot"]
    pairs = plan.pairs(tasks)
    assert [(p.task.id, p.approach) for p in pairs] == [
        ("gen", "suppresseot"), ("gen", "negative-prompt"),
        ("real", "suppresseot"), ("real", "negative-prompt"), ("real", "ledits++"),
        ("add", "suppresseot"), ("gen2", "suppresseot"), ("gen2", "negative-prompt")]
    assert pairs[4].name("torch") == "real--ledits++--torch"
    assert plan.left_out(tasks) == ("left out 4 of 12 (task, approach) pairs that cannot run here: ledits++ not for "
                                    "generated images (3); negative-prompt not for add tasks (1)")
    plan.check(tasks)  # each named approach runs something
    # groups: one approach each; the SuppressEOT family batches, baselines run alone
    groups = make_groups(pairs, BatchOptions(group_size=2))
    assert [[(p.task.id, p.approach) for p in g] for g in groups] == [
        [("gen", "suppresseot"), ("gen2", "suppresseot")], [("gen", "negative-prompt")], [("real", "suppresseot")],
        [("real", "negative-prompt")], [("real", "ledits++")], [("add", "suppresseot")], [("gen2", "negative-prompt")]]
    # all: every approach that fits, the rest said in the line; a family known before the load counts too
    every = Plan.choose("all", "torch")
    every.families = {task.id: "sdxl" for task in tasks}
    every.check(tasks)
    assert every.every and {p.approach for p in every.pairs(tasks)} == {"suppresseot", "swr-only", "ito-only",
                                                                        "negative-prompt", "attention-reweight",
                                                                        "ledits++"}
    assert "sega, sld not for sdxl models (8)" in every.left_out(tasks)
    jittor = Plan.choose("all", "jittor")
    assert {p.approach for p in jittor.pairs(tasks)} == {"suppresseot", "swr-only", "ito-only"}
    assert "negative-prompt, sega, sld, attention-reweight, ledits++ not on jittor (20)" in jittor.left_out(tasks)


def test_approaches_are_recorded_by_prepare_and_checked_before_any_work(tmp_path, capsys, monkeypatch):
    """A name that is no approach, or a named approach that cannot run here (the backend, the model's family,
    none of the tasks): one line, exit 2, nothing written and no weights loaded."""
    pytest.importorskip("diffusers")
    from suppresseot.api import SuppressEOT
    from suppresseot.random_model import save_random_family

    assert main(["prepare", "examples", "--approaches", "suppresseot,sega", "--out", str(tmp_path / "m")]) == 0
    assert read_json(tmp_path / "m" / "examples.json")["approaches"] == ["suppresseot", "sega"]
    assert main(["prepare", "examples", "--approaches", "all", "--out", str(tmp_path / "m")]) == 0
    assert read_json(tmp_path / "m" / "examples.json")["approaches"] == ["all"]
    assert load_manifest(tmp_path / "m" / "examples.json", shipped_tokenizer()).approaches == ["all"]
    one_line_error(capsys, ["prepare", "examples", "--approaches", "sega,nope", "--out", str(tmp_path / "p")],
                   "unknown approach 'nope'")
    assert not (tmp_path / "p").exists()

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(SuppressEOT, "from_pretrained", no_load)
    sdxl = save_random_family(tmp_path / "sdxl", TOKENIZER_DIR, "sdxl", size="tiny", latent_size=16)
    capsys.readouterr()
    gen = {"id": "gen", "type": "generated", "prompt": "a cat sitting on a red car", "token_group": [6]}
    real = {"id": "real", "type": "real", "prompt": "a cat sitting on a red car", "token_group": [2],
            "image": "cat.png"}
    (tmp_path / "gen.json").write_text(json.dumps({"tasks": [gen]}))
    (tmp_path / "real.json").write_text(json.dumps({"tasks": [real], "approaches": ["suppresseot"]}))
    (tmp_path / "bad.json").write_text(json.dumps({"tasks": [gen], "approaches": ["nope"]}))
    out = tmp_path / "out"
    for argv, expected in (
            (["gen.json", "--approaches", "nope"], "unknown approach 'nope'"),
            (["bad.json"], "bad.json: unknown approach 'nope'"),
            (["gen.json", "--approaches", "sega", "--model", str(sdxl)], "sega has no pipeline for sdxl models"),
            (["gen.json", "--approaches", "suppresseot,sega", "--backend", "jittor", "--model", str(tmp_path / "none")],
             "sega runs on the torch backend"),
            (["real.json", "--approaches", "sega", "--model", str(tmp_path / "none")],  # over the manifest's
             "none of the 1 selected task(s) can be run by sega: sega is for generated images only")):
        one_line_error(capsys, ["batch", str(tmp_path / argv[0]), "--out", str(out), *argv[1:]], expected)
        assert not out.exists()


def test_memory_sampler_sees_a_short_peak(tmp_path):
    used = [1000]
    with MemorySampler(reader=lambda: used[0], interval=0.01) as sampler:
        time.sleep(0.2)
        used[0] = 9000  # a peak that lasts 0.1 s, between any stage boundaries
        time.sleep(0.1)
        used[0] = 2000
        time.sleep(0.2)
    trace = sampler.trace
    assert trace.status == "sampled" and trace.peak == 9000 and trace.baseline == 1000
    assert trace.rate_hz >= 10
    trace.write_csv(tmp_path / "memory_trace.csv")
    rows = read_csv(tmp_path / "memory_trace.csv")
    assert len(rows) == len(trace.samples) and max(int(r["nvml_used_bytes"]) for r in rows) == 9000
    assert MemorySampler("cpu").trace.status.startswith("disabled: ")


# --- batch on the tiny model ---------------------------------------------------------------------
FAST = ["--steps", "1", "--iterations", "1", "--max-step-to-erase", "1", "--null-text-steps", "1", "--no-progress"]


def run_dirs(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.is_dir() and p.name != ".failed")


@pytest.mark.slow
def test_batch_survives_a_kill_and_a_failing_task(tmp_path, small_model_dir, capsys):
    pytest.importorskip("diffusers")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(tmp_path / "cat.png")
    manifest = tmp_path / "tiny.json"  # tau 1: SWR and ITO act at the single step
    manifest.write_text(json.dumps({"name": "tiny", "tasks": [
        {"id": "gen-cat", "type": "generated", "prompt": "a cat sitting on a red car", "token_group": [6],
         "seed": 3, "tau": 1.0},
        {"id": "real-cat", "type": "real", "prompt": "a cat sitting on a red car", "token_group": [2],
         "image": "cat.png", "tau": 1.0},
        {"id": "real-dog", "type": "real", "prompt": "a dog on a sofa", "token_group": [2], "image": "dog.png",
         "tau": 1.0},
    ]}))
    out = tmp_path / "out"
    argv = ["batch", str(manifest), "--model", str(small_model_dir), "--out", str(out)] + FAST

    # 1. killed with SIGKILL while the second task runs
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "suppresseot.cli"] + argv, stderr=err, stdout=err)
    deadline = time.monotonic() + 300
    while not (out / "gen-cat--suppresseot--torch").exists():
        assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()
        assert time.monotonic() < deadline, "the first task did not finish in 5 minutes"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert run_dirs(out) == ["gen-cat--suppresseot--torch"]
    first_run = (out / "gen-cat--suppresseot--torch" / "run.json").stat().st_mtime_ns
    stale = out / f".real-cat--suppresseot--torch.tmp-{proc.pid}"  # what a kill during save_run leaves
    stale.mkdir()
    (stale / "original.png").write_bytes(b"")

    # 2. rerun: the finished task is skipped, the photo runs, the task without a photo fails and is listed
    assert main(argv) == 1
    assert not stale.exists()
    assert run_dirs(out) == ["gen-cat--suppresseot--torch", "real-cat--suppresseot--torch"]
    assert (out / "gen-cat--suppresseot--torch" / "run.json").stat().st_mtime_ns == first_run
    failures = read_csv(out / "failures.csv")
    assert [(f["task"], f["approach"], f["backend"]) for f in failures] == [("real-dog", "suppresseot", "torch")]
    assert "dog.png does not exist" in failures[0]["error"]
    summary = {row["task"]: row for row in read_csv(out / "summary.csv")}
    assert {t: row["status"] for t, row in summary.items()} == {
        "gen-cat": "finished", "real-cat": "finished", "real-dog": "failed"}
    assert "dog.png" in summary["real-dog"]["error"]
    for task in ("gen-cat", "real-cat"):
        row = summary[task]
        assert row["backend"] == "torch" and row["approach"] == "suppresseot"
        assert float(row["seconds_swr_ito_sampling"]) > 0
        assert float(row["final_ito_total_loss"]) == pytest.approx(
            float(read_csv(out / row["run_dir"] / "ito.csv")[-1]["total"]))
        assert row["nvml_status"].startswith("disabled: ")  # CPU: recorded as such, not as a number
        for column in ("original", "suppressed", "memory_trace"):
            assert (out / row[column]).is_file()
    assert float(summary["real-cat"]["seconds_null_text"]) > 0 and summary["real-cat"]["mean_null_text_loss"]
    assert (out / summary["real-cat"]["input"]).is_file() and summary["gen-cat"]["input"] == ""
    assert read_json(out / "real-cat--suppresseot--torch" / "run.json")["task"]["id"] == "real-cat"

    # 3. the photo appears: the rerun runs only that task, and it leaves failures.csv
    Image.fromarray(np.full((40, 40, 3), 128, dtype=np.uint8)).save(tmp_path / "dog.png")
    assert main(argv + ["--inversion", "npi"]) == 0
    assert run_dirs(out) == ["gen-cat--suppresseot--torch", "real-cat--suppresseot--torch",
                             "real-dog--suppresseot--torch"]  # each task exactly once
    assert read_csv(out / "failures.csv") == []
    assert [row["status"] for row in read_csv(out / "summary.csv")] == ["finished"] * 3
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]
    err = capsys.readouterr().err
    assert "2 of 3 runs already finished" in err and "3 of 3 runs finished" in err


@pytest.mark.slow
def test_batch_runs_every_approach_and_a_killed_batch_loses_and_repeats_nothing(tmp_path, small_model_dir, capsys,
                                                                              monkeypatch):
    """Each task by each approach that can run it (task-major, one run directory a pair), the model loaded once;
    killed after its first group, then rerun with a failing pair, then rerun once more: every pair is finished
    exactly once and nothing is left behind."""
    pytest.importorskip("diffusers")
    from suppresseot.api import SuppressEOT

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(tmp_path / "cat.png")
    manifest = tmp_path / "tiny.json"
    manifest.write_text(json.dumps({"name": "tiny", "approaches": ["suppresseot"], "tasks": [
        {"id": "gen-a", "type": "generated", "prompt": "a cat sitting on a red car", "token_group": [6], "seed": 3,
         "tau": 1.0},
        {"id": "gen-b", "type": "generated", "prompt": "a dog sitting on a red car", "token_group": [6], "seed": 4,
         "tau": 1.0},
        {"id": "real-a", "type": "real", "prompt": "a cat sitting on a red car", "token_group": [2],
         "image": "cat.png", "tau": 1.0},
        {"id": "real-b", "type": "real", "prompt": "a dog on a sofa", "token_group": [2], "image": "dog.png",
         "tau": 1.0},  # no dog.png yet: its pairs fail
    ]}))
    out = tmp_path / "out"
    approaches = ("suppresseot", "swr-only", "negative-prompt", "ledits++")  # over the manifest's
    argv = ["batch", str(manifest), "--model", str(small_model_dir), "--out", str(out), "--group-size", "2",
            "--approaches", ",".join(approaches)] + FAST
    expected = [(task, a) for task in ("gen-a", "gen-b") for a in approaches[:3]] + [
        (task, a) for task in ("real-a", "real-b") for a in approaches]
    names = sorted(f"{task}--{approach}--torch" for task, approach in expected)

    def finished() -> list[str]:
        return [name for name in run_dirs(out) if (out / name / "run.json").is_file()]

    # 1. killed with SIGKILL once its first group (gen-a and gen-b by SuppressEOT, together) is saved
    with open(tmp_path / "stderr.txt", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "suppresseot.cli"] + argv, stderr=err, stdout=err)
    deadline = time.monotonic() + 300
    while not (out / "gen-a--suppresseot--torch").exists():
        assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()
        assert time.monotonic() < deadline, "the first group did not finish in 5 minutes"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    first = finished()  # (a group half saved also leaves a .tmp- folder)
    assert first and len(first) < len(names) and set(first) <= set(names)
    stamps = {name: (out / name / "run.json").stat().st_mtime_ns for name in first}
    log = (tmp_path / "stderr.txt").read_text()
    assert "left out 2 of 16 (task, approach) pairs that cannot run here: ledits++ not for generated images (2)" in log
    (out / f".real-a--ledits++--torch.tmp-{proc.pid}").mkdir()  # what a kill during save_run leaves

    # 2. rerun: the rest, on one load of the model; real-b's pairs fail, each recorded once with its approach
    loads, load = [], SuppressEOT.from_pretrained.__func__
    monkeypatch.setattr(SuppressEOT, "from_pretrained", classmethod(lambda cls, *a, **k: loads.append(a) or load(
        cls, *a, **k)))
    assert main(argv) == 1
    assert len(loads) == 1
    err = capsys.readouterr().err
    assert f"{len(first)} of 14 runs already finished" in err and "10 of 14 runs finished, 4 failed" in err
    assert finished() == sorted(n for n in names if not n.startswith("real-b"))
    assert {name: (out / name / "run.json").stat().st_mtime_ns for name in first} == stamps
    failures = read_csv(out / "failures.csv")
    assert [(f["task"], f["approach"], f["backend"]) for f in failures] == [("real-b", a, "torch")
                                                                           for a in sorted(approaches)]
    assert all("dog.png does not exist" in f["error"] for f in failures)
    summary = read_csv(out / "summary.csv")
    assert list(summary[0])[:6] == ["task", "set", "type", "approach", "backend", "status"]
    assert [(r["task"], r["approach"], r["status"]) for r in summary] == [
        (t, a, "failed" if t == "real-b" else "finished") for t, a in expected]

    # 3. the photo appears: only the failed pairs run, and they leave failures.csv; the three approaches that edit
    # this project's inversion share one (ledits++ inverts the photo its own way)
    Image.fromarray(np.full((40, 40, 3), 128, dtype=np.uint8)).save(tmp_path / "dog.png")
    inversions, invert = [], SuppressEOT.invert_many
    monkeypatch.setattr(SuppressEOT, "invert_many", lambda self, *a, **k: inversions.append(a) or invert(self, *a, **k))
    assert main(argv) == 0
    assert len(inversions) == 1
    err = capsys.readouterr().err
    assert "10 of 14 runs already finished" in err and "14 of 14 runs finished, 0 failed" in err
    assert run_dirs(out) == names and not [p for p in out.iterdir() if ".tmp-" in p.name]
    assert {name: (out / name / "run.json").stat().st_mtime_ns for name in first} == stamps
    assert read_csv(out / "failures.csv") == [] and not list((out / ".failed").glob("*.json"))
    summary = read_csv(out / "summary.csv")
    assert [(r["task"], r["approach"], r["status"]) for r in summary] == [(t, a, "finished") for t, a in expected]
    for row in summary:
        record = read_json(out / row["run_dir"] / "run.json")
        assert row["run_dir"] == f"{row['task']}--{row['approach']}--torch"
        assert record["approach"]["name"] == row["approach"] and record["task"]["id"] == row["task"]
        assert (out / row["original"]).is_file() and (out / row["suppressed"]).is_file()
        if row["type"] == "real":  # the approach's own inversion or this project's, the photo recorded alike
            assert record["inversion"]["image"] == str(tmp_path / record["task"]["image"])
            assert record["inversion"]["method"] == ("ledits++" if row["approach"] == "ledits++" else "nt")
    grouped = read_json(out / "gen-b--swr-only--torch" / "run.json")  # SuppressEOT's family batches, per approach
    assert grouped["group"] == ["gen-a", "gen-b"] and grouped["settings"]["iterations"] == 0
    assert read_json(out / "gen-a--negative-prompt--torch" / "run.json")["group_size"] == 1  # baselines alone

    # 4. a fourth run has nothing to do
    assert main(argv) == 0
    assert "14 of 14 runs already finished" in capsys.readouterr().err
    assert run_dirs(out) == names
