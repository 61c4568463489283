"""benchmarks/ray_gpu.sh's report (REPORT_ONLY=1) on made-up output folders whose figures are known."""
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "ray_gpu.sh"
T0 = 1_800_000_000.0
GROUP_SECONDS = 10.0


def fake_config(w: Path, config: str, label: str, workers: int, share, plan: dict, busy: dict, wall: float = 100.0):
    """plan: worker pid (or None: the local batch) -> save times of its groups of 4 runs (seconds after T0)."""
    out = w / config
    out.mkdir()
    rows = []
    for pid, times in plan.items():
        for g, t in enumerate(times):
            ids = [f"{config}-{pid}-{g}-{i}" for i in range(4)]
            for i, task in enumerate(ids):
                run = out / f"{task}--suppresseot--torch"
                run.mkdir()
                record = {"task": {"id": task}, "approach": {"name": "suppresseot"}, "task_seconds": GROUP_SECONDS,
                          "group": ids}
                if pid is not None:
                    record["ray_worker"] = {"pid": pid, "node": "127.0.0.1", "gpus": ["0"]}
                (run / "run.json").write_text(json.dumps(record))
                os.utime(run / "run.json", (T0 + t + i * 0.01, T0 + t + i * 0.01))
                rows.append({"task": task, "status": "finished", "run_dir": run.name,
                             "nvml_peak_used_bytes": str(6 * 2**30)})
    rows.append({"task": "never", "status": "failed", "run_dir": "", "nvml_peak_used_bytes": ""})
    with open(out / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    meta = dict(config=config, kind="batch", folder=config, workers=workers, share=share,
                gpus=workers * share if share else None, label=label, start=T0, end=T0 + wall, rc=0,
                command=f"timeout python3 tools/driver.py {config}.cpu.json batch ... --out {config}")
    (w / f"{config}.meta.json").write_text(json.dumps(meta))
    (w / f"{config}.cpu.json").write_text(json.dumps({"user": 20.0, "sys": 5.0, "children_user": 3.0,
                                                       "children_sys": 1.0, "rc": 0}))
    with open(w / f"{config}.nvml.csv", "w") as f:
        f.write("time,gpu,util_gpu,util_memory,memory_used_mib\n")
        for k in range(int(wall * 2) + 1):
            for gpu, (before, during) in busy.items():  # `before` up to the first save, `during` after
                t = k / 2
                f.write(f"{T0 + t:.3f},{gpu},{before if t < min(min(v) for v in plan.values()) else during},0,0\n")


@pytest.fixture
def workdir(tmp_path):
    w = tmp_path / "w"
    w.mkdir()
    (w / "setup.json").write_text(json.dumps({"gpus": "GPU 0: fake;GPU 1: fake", "n": 2, "mode": "GPU workers, N=2",
                                              "nvml_interval": 0.5, "pythonpath": "src", "commands": ["# setup"],
                                              "notes": []}))
    # ray1: one worker, 6 groups 10 s apart: 20 runs after its first group over 50 s: 24 runs a minute
    fake_config(w, "ray1", "1 x 1 GPU", 1, 1.0, {100: [30, 40, 50, 60, 70, 80]}, {0: (0, 90), 1: (0, 0)})
    # rayN: two workers at ray1's pace: 48 a minute, 2.0 x ray1; the old saved-span rate overstates it
    fake_config(w, "rayN", "2 x 1 GPU", 2, 1.0, {200: [30, 40, 50], 201: [30, 40, 50]},
                {0: (0, 90), 1: (0, 80)}, wall=70.0)
    # ray2N: four workers, two with a single group (counted at the others' mean): 4 x (4 runs / 12 s) = 80 a minute
    fake_config(w, "ray2N", "4 x 0.5 GPU", 4, 0.5, {300: [30, 42], 301: [30, 42], 302: [31], 303: [32]},
                {0: (0, 100), 1: (0, 100)}, wall=60.0)
    fake_config(w, "local", "no Ray", 0, None, {None: [30, 40]}, {0: (0, 90), 1: (0, 0)})
    (w / "eval").mkdir()
    (w / "eval" / "clipscores.csv").write_text("run\n" + "".join(f"r{i}\n" for i in range(24)))
    (w / "eval.meta.json").write_text(json.dumps(dict(
        config="eval", kind="eval", folder="rayN", workers=2, share=1.0, gpus=2.0, label="2 x 1 GPU",
        start=T0 + 200, end=T0 + 230, rc=0, command="timeout python3 tools/driver.py eval.cpu.json eval ...",
        clip="random", csv=str(w / "eval" / "clipscores.csv"))))
    return w


def report(w: Path) -> str:
    if not shutil.which("bash"):
        pytest.skip("no bash")
    env = {**os.environ, "REPORT_ONLY": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(["bash", str(SCRIPT), str(w)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return (w / "ray.md").read_text()


def row(text: str, first: str) -> list[str]:
    """The cells of the first table row whose first cell is ``first``, after a given header cell."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == first:
            return cells
    raise AssertionError(f"no row {first!r} in\n{text}")


def test_batch_table(workdir):
    text = report(workdir)
    ray1 = row(text, "ray1")
    assert ray1[1:3] == ["1 x 1 GPU", "24/25"]  # the failed task counts in the total
    assert ray1[3] == "100.0" and ray1[6] == "14.4"  # wall; 24 runs over 100 s
    assert ray1[7] == "24.0"  # steady
    assert ray1[8] == "24" and ray1[9] == "100%"  # one worker busy from its first group's start on
    assert ray1[10] == "25.0 (20.0 + 5.0)" and ray1[11] == "25" and ray1[12] == "4.0"
    assert ray1[13] == "63 0" and ray1[14] == "90 0"  # over the wall (idle the first 30 s), over the saves
    assert ray1[15] == "6.0"
    rayn = row(text, "rayN")
    assert rayn[7] == "48.0" and rayn[8] == "12 + 12"
    assert float(rayn[5]) > 60  # the saved-span rate counts the second worker's first group
    assert row(text, "ray2N")[7] == "80.0"
    assert row(text, "local")[7] == "24.0"  # the local batch's groups, 'local' as its worker


def test_scaling_table(workdir):
    text = report(workdir)
    # config | GPUs used | x steady | x saved span | x wall | goal | met
    rayn = [c for c in text.splitlines() if c.startswith("| rayN | 2.0 |")]
    assert len(rayn) == 1
    cells = [c.strip() for c in rayn[0].strip("|").split("|")]
    assert cells[2] == "2.00" and cells[5] == "1.90" and cells[6] == "yes"
    ray2n = [c for c in text.splitlines() if c.startswith("| ray2N | 2.0 |")][0]
    assert "| 3.33 |" in ray2n and ray2n.rstrip().endswith("| yes |")
    assert not [c for c in text.splitlines() if c.startswith("| local | ")][1:]  # no scaling row for local


def test_eval_table_and_commands(workdir):
    text = report(workdir)
    cells = row(text, "rayN")  # the batch row comes first; the eval row is the last table's
    evals = [line for line in text.splitlines() if line.startswith("| rayN | 2 x 1 GPU | random |")]
    assert cells and len(evals) == 1
    assert "| 24 | 30.0 | 48.0 |" in evals[0]
    assert "timeout python3 tools/driver.py eval.cpu.json eval ..." in text
    assert "# setup" in text


def test_no_ray1_no_scaling(workdir):
    for path in workdir.glob("ray1*"):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    assert "No finished ray1 in this folder" in report(workdir)
