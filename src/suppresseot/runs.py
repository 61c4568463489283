"""Run directories: every edit writes its own folder, atomically (a temporary name renamed when complete)."""
from __future__ import annotations

import csv
import json
import os
import platform
import re
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image

from .errors import SuppressEOTError
from .images import cross_attention_grid, self_attention_grid

ITO_COLUMNS = ["step", "timestep", "iteration", "cross_retain", "cross_erase", "self_retain", "self_erase", "total",
               "seconds"]
NULL_TEXT_COLUMNS = ["step", "timestep", "iteration", "loss", "seconds"]
MEMORY_COLUMNS = ["stage", "seconds", "peak_allocated_bytes", "peak_reserved_bytes", "nvml_used_bytes"]
RUN_FILES = ["original.png", "suppressed.png", "cross_attention.png", "self_attention.png", "run.json", "ito.csv",
             "null_text.csv", "final_latents.npy", "memory.csv"]
PHOTO_FILES = ["input.png", "reconstruction.png"]


def slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].rstrip("-") or "prompt"


def default_run_name(result) -> str:
    tokens = "-".join(str(i) for i in result.token_indices)
    name = f"{result.kind}-{slug(result.prompt)}-tok{tokens}"
    if result.settings is not None:
        name += f"-a{result.settings.alpha:g}-tau{result.settings.tau:g}"
    if result.approach != "suppresseot":
        name += f"-{result.approach}"
    if result.seed is not None:
        name += f"-seed{result.seed}"
    if result.inversion is not None and result.inversion.method != result.approach:
        name += f"-{result.inversion.method}"
    return name


def check_writable(out_dir: str | os.PathLike) -> Path:
    """Create ``out_dir`` if needed and make sure files can be written there, before hours of work."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise SuppressEOTError(f"cannot write to the output folder {out_dir} ({exc.strerror or exc}); "
                               f"choose another with --out") from exc
    return out_dir


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _device_index(device: str) -> int:
    return int(device.split(":", 1)[1]) if ":" in device else 0


def open_nvml(device: str):
    """An NVML reader for the GPU a backend runs on (``cuda``, ``cuda:1``), or (None, why not)."""
    if not device or not device.startswith("cuda"):
        return None, f"the model runs on {device or 'the CPU'}, not an NVIDIA GPU"
    try:
        import pynvml
    except ImportError:
        return None, "pynvml is not installed (pip install nvidia-ml-py)"
    try:
        pynvml.nvmlInit()
        index = _device_index(device)
        # NVML numbers all GPUs; CUDA only the visible ones, in CUDA_VISIBLE_DEVICES order
        visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
        if index < len(visible) and not visible[index].isdigit():
            handle = pynvml.nvmlDeviceGetHandleByUUID(visible[index])
        else:
            handle = pynvml.nvmlDeviceGetHandleByIndex(int(visible[index]) if index < len(visible) else index)
        pynvml.nvmlDeviceGetMemoryInfo(handle)
    except Exception as exc:  # no driver, MIG without access, ...: record why, do not fail the run
        return None, f"NVML unavailable ({type(exc).__name__}: {exc})"
    return (lambda: int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)), None


def nvml_used_bytes(device: str) -> int | None:
    """Memory in use on ``device``'s GPU as the driver sees it (all processes), or None without NVML there."""
    reader, _ = open_nvml(device)
    return None if reader is None else reader()


def run_record(result, extra: dict | None = None) -> dict:
    from . import __version__

    inv, settings = result.inversion, result.settings
    record = {
        "suppresseot": __version__,
        "kind": result.kind,
        "prompt": result.prompt,
        "token_indices": result.token_indices,
        "suppressed_tokens": [result.tokens.words[i] for i in result.token_indices],
        "tokens": result.tokens.as_rows(),
        "seed": result.seed,
        "model": result.model,
        "loras": result.loras,
        "family": result.family.get("family", "sd1"),
        "prediction_type": result.family.get("prediction_type", "epsilon"),
        "model_family": result.family,
        # the approach that made the edit (SuppressEOT, an ablation, a baseline), its settings, what ran it
        "approach": {"name": result.approach, **{k: v for k, v in result.approach_settings.items() if k != "name"}},
        "settings": None if settings is None else asdict(settings),  # SuppressEOT's (None for a baseline)
        "sampling": asdict(result.sampling),
        "step_scale": result.step_scale,
        "first_swr_step": None if settings is None else settings.first_step(result.sampling.num_steps),
        "ito_steps": [] if settings is None else list(settings.ito_steps(result.sampling.num_steps)),
        "inversion": None if inv is None else {**(inv.settings if isinstance(inv.settings, dict) else
                                                  asdict(inv.settings)), "image": inv.source,
                                               "group_size": inv.group_size},
        "group_size": result.group_size,  # tasks run together: seconds and memory are the whole group's
        "seconds": result.seconds,
        "memory": result.memory,
        "final_ito_total_loss": result.ito_log[-1]["total"] if result.ito_log else None,
        "mean_null_text_loss": (float(np.mean([r["loss"] for r in inv.null_text_log]))
                                if inv is not None and inv.null_text_log else None),
        "backend": result.backend_info,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }
    record.update(extra or {})
    return record


def save_run(result, out_dir: str | os.PathLike, name: str | None = None, extra: dict | None = None) -> Path:
    """Write a run directory under ``out_dir``; never overwrites: a taken name gets a -2, -3, ... suffix."""
    out_dir = check_writable(out_dir)
    base = name or default_run_name(result)
    tmp = out_dir / f".{base}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        result.original.save(tmp / "original.png")
        result.suppressed.save(tmp / "suppressed.png")
        if result.inversion is not None:
            Image.fromarray(result.inversion.image).save(tmp / "input.png")
            Image.fromarray(result.inversion.reconstruction).save(tmp / "reconstruction.png")
        words = result.tokens.words
        if result.cross_attention is not None:
            labels = [f"{i}:{words[i]}" + ("*" if i in result.token_indices else "") for i in range(result.tokens.n)]
            grid = cross_attention_grid(result.cross_attention[:, :, :, :result.tokens.n], labels,
                                        ["original", "suppressed"])
            grid.save(tmp / "cross_attention.png")
            self_attention_grid(result.self_attention[1]).save(tmp / "self_attention.png")
        np.save(tmp / "final_latents.npy", result.final_latents.astype(np.float32))
        write_csv(tmp / "ito.csv", ITO_COLUMNS, result.ito_log)
        write_csv(tmp / "null_text.csv", NULL_TEXT_COLUMNS,
                  result.inversion.null_text_log if result.inversion is not None else [])
        nvml = nvml_used_bytes(str(result.backend_info.get("device", "")))
        write_csv(tmp / "memory.csv", MEMORY_COLUMNS, [
            {"stage": stage, "seconds": f"{result.seconds.get(stage, float('nan')):.4f}",
             "peak_allocated_bytes": mem.get("allocated"), "peak_reserved_bytes": mem.get("reserved"),
             "nvml_used_bytes": nvml}
            for stage, mem in result.memory.items()])
        with open(tmp / "run.json", "w") as f:
            json.dump(run_record(result, extra), f, indent=1, default=str)
        final = out_dir / base
        suffix = 2
        while True:
            try:
                os.rename(tmp, final)  # atomic; fails if a non-empty folder of that name exists
                break
            except OSError:
                if not final.exists():
                    raise
                final = out_dir / f"{base}-{suffix}"
                suffix += 1
        return final
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
