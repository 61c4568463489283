"""Shared fixtures: a tiny random SD v1 model in the diffusers folder layout, the real CLIP tokenizer."""
from __future__ import annotations

import os
from pathlib import Path

# Under pytest-xdist (`-n auto`: one worker process per core) each worker computes on one thread: the tiny
# models' ops are too small to gain from more, and two threads per worker on a busy machine only contend
# (2 cores: 10 minutes against 17 for one process with two threads). Set before torch or jittor start.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
# The tests build their models locally and must never wait for the hub (CI and users' test runs alike).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# tests/test_ray.py starts its own Ray on 127.0.0.1: never join a cluster named in the environment.
os.environ.pop("RAY_ADDRESS", None)

import pytest  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
TOKENIZER_DIR = FIXTURES / "clip-tokenizer"

# Tests that need a CUDA GPU: `@requires_gpu` (the `gpu` marker, registered in pyproject.toml). Where torch sees
# no CUDA they are skipped with GPU_SKIP_REASON (pytest_collection_modifyitems below); on the GPU machine
# benchmarks/gpu_check.sh runs them alone (`pytest -m gpu tests/`).
requires_gpu = pytest.mark.gpu
GPU_SKIP_REASON = "needs a CUDA GPU: run benchmarks/gpu_check.sh on a GPU machine"


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if gpu_items and not _cuda_available():
        skip = pytest.mark.skip(reason=GPU_SKIP_REASON)
        for item in gpu_items:
            item.add_marker(skip)


def load_benchmark(name: str):
    """A script of benchmarks/ ("bench", "probes/probe_conv") as a module: they are run as scripts, not installed."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"suppresseot_{name.replace('/', '_')}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def reference_fixture_dir() -> Path | None:
    """The official code's outputs on a tiny model (../shared/fixtures/reference-tiny), if present."""
    env = os.environ.get("SUPPRESSEOT_REFERENCE_FIXTURE")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "reference-tiny"
    return path if (path / "expected.json").exists() else None


@pytest.fixture(scope="session")
def tokenizer_dir() -> Path:
    return TOKENIZER_DIR


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A random tiny SD v1 pipeline saved once per test session (seeded: the same weights every run)."""
    pytest.importorskip("diffusers")
    from suppresseot.random_model import save_random_model

    return save_random_model(tmp_path_factory.mktemp("tiny-sd") / "model", TOKENIZER_DIR, size="tiny", seed=0)


@pytest.fixture(scope="session")
def small_model_dir(tmp_path_factory) -> Path:
    """``tiny_model_dir``'s weights at 256 px (32x32 latents, the 16x16 maps one level up): the same
    algorithm with a sixteenth of the attention work, for tests that compare two runs with each other
    rather than with recorded numbers."""
    pytest.importorskip("diffusers")
    from suppresseot.random_model import save_random_model

    return save_random_model(tmp_path_factory.mktemp("small-sd") / "model", TOKENIZER_DIR, size="tiny", seed=0,
                             latent_size=32)
