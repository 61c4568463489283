"""`suppress-eot doctor`: the CUDA 13 patches of jittor 1.3.11, on a copy of the jittor package (CPU, no jittor import)."""
from __future__ import annotations

import shutil
import sys
import tarfile
from pathlib import Path

import pytest

from suppresseot.backends.jittor import doctor
from suppresseot.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _jittor_source(tmp_path_factory) -> Path:
    """The installed jittor package folder, else the one inside a jittor sdist under .whl/."""
    installed = doctor.find_jittor_dir()
    if installed is not None and (installed / "compiler.py").is_file():
        return installed
    for sdist in sorted((ROOT / ".whl").glob("jittor-*.tar.gz")):
        out = tmp_path_factory.mktemp("sdist")
        with tarfile.open(sdist) as tar:
            members = [m for m in tar.getmembers() if "/python/jittor/" in m.name or "/python/jittor_utils/" in m.name]
            kwargs = {"filter": "data"} if sys.version_info >= (3, 12) else {}
            tar.extractall(out, members=members, **kwargs)
        found = next(out.glob("*/python/jittor"), None)
        if found is not None:
            return found
    pytest.skip("neither an installed jittor nor a jittor sdist in .whl/")


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    src = _jittor_source(tmp_path_factory)
    if doctor.jittor_version(src) not in doctor.SUPPORTED_VERSIONS:
        pytest.skip(f"jittor {doctor.jittor_version(src)} is not the version the patches target")
    if doctor.patched_files(src):
        pytest.skip(f"{src} is already patched; the tests need a stock copy")
    return src


@pytest.fixture()
def jt_copy(source, tmp_path) -> Path:
    dst = tmp_path / "jittor"
    shutil.copytree(source, dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_stock_copy_needs_every_patch(jt_copy):
    for patch in doctor.PATCHES:
        assert doctor.patch_state(jt_copy, patch) == ("not applied", ""), patch.name


def test_fix_changes_the_expected_text_and_keeps_backups(jt_copy):
    results = doctor.apply_patches(jt_copy)
    assert [r.state for r in results] == ["applied"] * len(doctor.PATCHES)
    helper = (jt_copy / "extern/cuda/inc/helper_cuda.h").read_text()
    assert "deviceProp.computeMode" not in helper and "deviceProp.clockRate" not in helper
    assert helper.count("cudaDevAttrComputeMode") == 3 and "cudaDevAttrClockRate" in helper
    for name in ("compiler.py", "compile_extern.py"):
        text = (jt_copy / name).read_text()
        code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        code = code.replace('.replace("-std=c++14", "-std=c++17")', "")  # MSVC branch: already c++17
        assert "-std=c++14" not in code and "std:c++14" not in code, name
    assert '-std=c++17 -fPIC' in (jt_copy / "compiler.py").read_text()
    assert "cub::Max()" not in (jt_copy / "other/code_softmax.py").read_text()
    assert "cub::LaneId" not in (jt_copy / "depthwise_conv.py").read_text()
    where = (jt_copy / "extern/cuda/cub/ops/cub_where_op.cc").read_text()
    assert "CountingInputIterator" not in where and "TransformInputIterator" not in where
    extern = (jt_copy / "compile_extern.py").read_text()
    assert extern.count("def setup_cuda_lib(") == 1 and "_suppresseot_setup_cudnn9(extra_flags)" in extern
    # the patched Python files still parse (the f-string braces of the softmax kernel included)
    for name in ("compiler.py", "compile_extern.py", "other/code_softmax.py", "depthwise_conv.py"):
        compile((jt_copy / name).read_text(), name, "exec")
    backups = {str(p.relative_to(jt_copy)) for p in doctor.patched_files(jt_copy)}
    assert backups == {f + doctor.BACKUP_SUFFIX for f in (
        "extern/cuda/inc/helper_cuda.h", "compiler.py", "compile_extern.py", "other/code_softmax.py",
        "depthwise_conv.py", "extern/cuda/cub/ops/cub_where_op.cc")}


def test_fix_twice_is_a_no_op_and_revert_restores_bytes(jt_copy):
    before = _snapshot(jt_copy)
    doctor.apply_patches(jt_copy)
    after_first = _snapshot(jt_copy)
    again = doctor.apply_patches(jt_copy)
    assert [r.state for r in again] == ["already applied"] * len(doctor.PATCHES)
    assert _snapshot(jt_copy) == after_first
    reverted = doctor.revert_patches(jt_copy)
    assert len(reverted) == 6
    assert _snapshot(jt_copy) == before
    assert doctor.revert_patches(jt_copy) == []


def test_unexpected_text_is_not_applicable(jt_copy):
    path = jt_copy / "other/code_softmax.py"
    path.write_text(path.read_text().replace("cub::Max()", "cub::Maximum()"))
    results = {r.name: r for r in doctor.apply_patches(jt_copy)}
    assert results["cccl3-softmax"].state == "not applicable"
    assert not (jt_copy / ("other/code_softmax.py" + doctor.BACKUP_SUFFIX)).exists()
    assert results["helper-cuda-13"].state == "applied"


def test_cli(jt_copy, capsys):
    assert main(["doctor", "--fix-jittor", "--jittor-dir", str(jt_copy)]) == 0
    out = capsys.readouterr().out
    assert "helper-cuda-13" in out and "applied" in out
    assert main(["doctor", "--jittor-dir", str(jt_copy)]) == 0
    out = capsys.readouterr().out
    assert "jittor:  1.3.11.0" in out and "cxx17                  already applied" in out
    assert main(["doctor", "--revert-jittor", "--jittor-dir", str(jt_copy)]) == 0
    assert "reverted" in capsys.readouterr().out
    assert main(["doctor", "--fix-jittor", "--jittor-dir", str(jt_copy / "nope")]) == 2
    assert "not a jittor package folder" in capsys.readouterr().err


def test_cudnn_algorithm_cache_is_widened_where_jittor_has_cudnn():
    """On a GPU the backend raises jittor's 100-shape cuDNN algorithm cache (SD v1 needs more); the call
    it relies on is declared by the installed jittor, and a jittor without cuDNN is left alone."""
    from types import SimpleNamespace

    from suppresseot.backends.jittor.env import _widen_cudnn_algorithm_cache

    sizes = []
    fake_jt = SimpleNamespace(cudnn=SimpleNamespace(set_algorithm_cache_size=sizes.append))
    assert _widen_cudnn_algorithm_cache(fake_jt) == 10000 and sizes == [10000]
    assert _widen_cudnn_algorithm_cache(SimpleNamespace()) is None
    installed = doctor.find_jittor_dir()
    if installed is None:
        pytest.skip("jittor is not installed")
    header = installed / "extern" / "cuda" / "cudnn" / "inc" / "cudnn_wrapper.h"
    assert "@pyjt(set_algorithm_cache_size)" in header.read_text()


def test_speed_features_say_what_the_gpu_path_would_use(monkeypatch):
    """`doctor` lists the Jittor backend's speed features as they would run here, without importing jittor."""
    monkeypatch.delenv("conv_opt", raising=False)
    monkeypatch.delenv("use_cutt", raising=False)
    cudnn9 = {"version": "9.19.0", "libs": ["libcudnn.so.9"], "include": "/usr/include", "cudnn8_layout": False}
    cudnn8 = {"version": "8.9.7", "libs": ["libcudnn.so.8"], "include": "/usr/include", "cudnn8_layout": True}

    def features(gpu=True, version="13.0", cudnn=(cudnn9,), patch="already applied"):
        info = {"gpu": gpu, "nvcc": "/usr/local/cuda/bin/nvcc" if version else None, "nvcc_version": version,
                "cudnn": list(cudnn), "patches": {"cudnn9": (patch, "")}}
        return dict(doctor.speed_features(info))

    assert list(features(gpu=False)) == ["device"] and "CPU" in features(gpu=False)["device"]
    on = features()
    assert on["device"] == "CUDA 13.0" and on["convolutions"].startswith("cuDNN 9.19.0")
    assert "layers.permute" in on["transposes"] and "--no-static-graphs" in on["static graphs"]
    assert "one UNet pass" in on["guidance"] and "SUPPRESSEOT_JITTOR_ATTENTION_CHUNK_MIB" in on["attention"]
    assert "--fix-jittor" in features(patch="not applied")["convolutions"]
    assert features(version="12.4", cudnn=(cudnn8,), patch="not applied")["convolutions"].startswith("cuDNN 8.9.7")
    assert "no cuDNN" in features(cudnn=())["convolutions"]
    monkeypatch.setenv("conv_opt", "1")
    assert "conv_opt" in features()["convolutions"]
    monkeypatch.setenv("use_cutt", "1")
    assert features()["transposes"].startswith("cuTT")
