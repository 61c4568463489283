"""``suppress-eot doctor``: diagnose the Jittor install and patch stock jittor 1.3.11 for CUDA 13.

Stock jittor 1.3.11.0 (the latest on PyPI) does not build or run with a CUDA 13 toolkit. The patches
below are small, named text substitutions in the installed jittor package; each one

- checks that the exact original text is there (else it reports "already applied" or "not applicable"),
- keeps the file's original once as ``<file>.suppresseot-orig`` before its first change, so that
  ``--revert-jittor`` restores every patched file byte for byte,
- works with CUDA 11/12 too (nothing in them depends on the toolkit version).

Nothing here imports jittor (importing it compiles its core). jittor's compile cache needs no
clearing: its keys include the full compiler command line and the content of every source and
header included, so patched files and flags are recompiled on the next import. See docs/jittor.md,
"GPUs with CUDA 13".
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import SuppressEOTError

BACKUP_SUFFIX = ".suppresseot-orig"
SUPPORTED_VERSIONS = ("1.3.11.0",)


@dataclass(frozen=True)
class Edit:
    """Replace ``old`` by ``new`` in ``file`` (relative to the jittor package dir), exactly ``count`` times."""

    file: str
    old: str
    new: str
    count: int = 1


@dataclass(frozen=True)
class Patch:
    name: str
    summary: str
    edits: tuple[Edit, ...]


@dataclass
class Result:
    name: str
    state: str  # "applied" | "already applied" | "not applicable" | "reverted" | "not applied" | "partly applied"
    detail: str = ""
    files: list[str] = field(default_factory=list)

    def line(self) -> str:
        extra = f" ({self.detail})" if self.detail else ""
        return f"  {self.name:<22} {self.state}{extra}"


# --- (a) CUDA 13 removed cudaDeviceProp::computeMode and ::clockRate ------------------------------------------------
_HELPER = "extern/cuda/inc/helper_cuda.h"
_ATTR_FN = ("#ifdef __CUDA_RUNTIME_H__\n"
            "// suppresseot doctor: CUDA 13 removed cudaDeviceProp::computeMode and ::clockRate; ask the runtime.\n"
            "inline int _sdeot_device_attr(cudaDeviceAttr attr, int dev) {\n"
            "  int value = 0;\n"
            "  cudaDeviceGetAttribute(&value, attr, dev);\n"
            "  return value;\n"
            "}\n"
            "// General GPU Device CUDA Initialization\n")
HELPER_CUDA = Patch(
    "helper-cuda-13",
    "helper_cuda.h: read compute mode and clock rate with cudaDeviceGetAttribute (the cudaDeviceProp fields "
    "are gone in CUDA 13; the core does not compile otherwise)",
    (
        Edit(_HELPER, "#ifdef __CUDA_RUNTIME_H__\n// General GPU Device CUDA Initialization\n", _ATTR_FN),
        Edit(_HELPER, "deviceProp.computeMode == cudaComputeModeProhibited",
             "_sdeot_device_attr(cudaDevAttrComputeMode, devID) == cudaComputeModeProhibited"),
        Edit(_HELPER, "deviceProp.computeMode != cudaComputeModeProhibited",
             "_sdeot_device_attr(cudaDevAttrComputeMode, current_device) != cudaComputeModeProhibited", 2),
        Edit(_HELPER, "sm_per_multiproc * deviceProp.clockRate;",
             "sm_per_multiproc * _sdeot_device_attr(cudaDevAttrClockRate, current_device);"),
    ),
)

# --- (b) -std=c++14 -> c++17 (CUDA 13's CUB/Thrust/libcu++ refuse anything older) -----------------------------------
CXX17 = Patch(
    "cxx17",
    "compile with -std=c++17: the host flags in compiler.py, and the nvcc >= 11.4 rewrite that turned "
    "-std=c++17 back into '-std=c++14 -Xcompiler -std:c++14' (every JIT-compiled CUDA op, softmax included, "
    "got its -std=c++14 from there); also compile_extern.py's oneDNN self-test commands",
    (
        Edit("compiler.py", 'cc_flags += " -Wall -Wno-unknown-pragmas -std=c++14 -fPIC "',
             'cc_flags += " -Wall -Wno-unknown-pragmas -std=c++17 -fPIC "'),
        Edit("compiler.py", 'nvcc_flags = nvcc_flags.replace("-std=c++17", "-std=c++14 -Xcompiler -std:c++14")',
             'pass  # suppresseot doctor: keep -std=c++17 (nvcc hands it to the host compiler)'),
        Edit("compile_extern.py", "{cc_path} -std=c++14 cnn_inference_f32.cpp",
             "{cc_path} -std=c++17 cnn_inference_f32.cpp", 2),
    ),
)

# --- (c) CCCL 3 (CUDA 13) removed cub::Max, cub::LaneId, cub::CountingInputIterator, cub::TransformInputIterator -------
CUB_MAX = Patch(
    "cccl3-softmax",
    "jittor's CUDA softmax (other/code_softmax.py, used for every last-dim softmax on the GPU) reduces with "
    "cub::Max(), which CUDA 13 removed: use a lambda with the same (a < b ? b : a) semantics",
    (Edit("other/code_softmax.py", "BlockReduce(temp_storage).Reduce(v1, cub::Max());",
          "BlockReduce(temp_storage).Reduce(v1, [](float a, float b) {{ return a < b ? b : a; }});"),),
)
CUB_LANE = Patch(
    "cccl3-depthwise",
    "depthwise_conv.py's backward uses cub::LaneId(), removed in CUDA 13: read %laneid directly",
    (Edit("depthwise_conv.py", "    if (cub::LaneId() == 0) \n",
          "    unsigned int sdeot_lane; asm(\"mov.u32 %0, %%laneid;\" : \"=r\"(sdeot_lane));\n"
          "    if (sdeot_lane == 0) \n"),),
)
_WHERE = "extern/cuda/cub/ops/cub_where_op.cc"
CUB_WHERE = Patch(
    "cccl3-where",
    "cub_where_op.cc (jt.where/nonzero on the GPU) uses cub::CountingInputIterator and "
    "cub::TransformInputIterator, removed in CUDA 13: use the thrust iterators they were aliases of",
    (
        Edit(_WHERE, "#include <thrust/transform.h>\n",
             "#include <thrust/transform.h>\n#include <thrust/iterator/counting_iterator.h>\n"
             "#include <thrust/iterator/transform_iterator.h>\n"),
        Edit(_WHERE, "cub::CountingInputIterator<To> counting_itr(0);",
             "thrust::counting_iterator<To> counting_itr(0);"),
        Edit(_WHERE, "cub::TransformInputIterator<bool, NonZeroOp<Ti>, Ti*> itr(cond->ptr<Ti>(), NonZeroOp<Ti>());",
             "thrust::transform_iterator<NonZeroOp<Ti>, Ti*, bool> itr(cond->ptr<Ti>(), NonZeroOp<Ti>());"),
    ),
)

# --- (d) cuDNN 9 ------------------------------------------------------------------------------------------------------
_CUDNN9_FN = '''def _suppresseot_setup_cudnn9(extra_flags):
    # Added by `suppress-eot doctor --fix-jittor` (suppresseot): use cuDNN >= 9, e.g. from the pip package
    # nvidia-cudnn-cu13, which stock jittor cannot find (it wants cuDNN 8 file names in the CUDA dirs) nor
    # link (pip ships libcudnn.so.9 only). cuDNN 9 removed the RNN API jittor's cudnn_rnn ops use, so those
    # are left out (nn.LSTM/GRU on CUDA do not work then). Returns False where the first cuDNN found is
    # older than 9: jittor's own search runs as before.
    import glob, re, ctypes
    arch = "x86_64" if platform.machine() in ["x86_64", "AMD64"] else "aarch64"
    incs = [cuda_include, os.path.abspath(os.path.join(cuda_include, "..", f"targets/{arch}-linux/include")),
            "/usr/include", f"/usr/include/{arch}-linux-gnu"]
    for p in sys.path:
        for pat in ("nvidia/cudnn/include", "nvidia/cu*/include"):
            incs += sorted(glob.glob(os.path.join(p or ".", pat)))
    major = 0
    for inc in incs:
        try:
            with open(os.path.join(inc, "cudnn_version.h")) as f:
                m = re.search(r"#define\\s+CUDNN_MAJOR\\s+(\\d+)", f.read())
        except OSError:
            continue
        if m and os.path.isfile(os.path.join(inc, "cudnn.h")):
            major = int(m.group(1))
            break
    if major < 9:
        return False
    base = os.path.dirname(inc)
    libdirs = [os.path.join(base, "lib"), os.path.join(base, "lib64"), cuda_lib,
               os.path.abspath(os.path.join(cuda_lib, "..", f"targets/{arch}-linux/lib")),
               f"/usr/lib/{arch}-linux-gnu", "/usr/lib"]
    libdir = next((d for d in libdirs if os.path.isfile(os.path.join(d, f"libcudnn.so.{major}"))), None)
    if libdir is None:
        LOG.w(f"cuDNN {major} headers in {inc} but no libcudnn.so.{major} in {libdirs}")
        return False
    pending = [os.path.join(libdir, f"libcudnn_{s}.so.{major}") for s in
               ("graph", "ops", "cnn", "adv", "engines_precompiled", "engines_runtime_compiled", "heuristic")]
    pending = [p for p in pending if os.path.isfile(p)]
    for _ in range(2):  # a second pass for load-order dependencies
        failed = []
        for p in pending:
            try:
                ctypes.CDLL(p, dlopen_flags)
            except OSError as e:
                failed.append((p, e))
        pending = [p for p, _e in failed]
    for p, e in failed:
        LOG.w(f"cuDNN: could not preload {p}: {e}")
    ctypes.CDLL(os.path.join(libdir, f"libcudnn.so.{major}"), dlopen_flags)
    linkdir = libdir
    if not os.path.exists(os.path.join(libdir, "libcudnn.so")):
        linkdir = os.path.join(cache_path, "suppresseot_cudnn")
        os.makedirs(linkdir, exist_ok=True)
        link, target = os.path.join(linkdir, "libcudnn.so"), os.path.join(libdir, f"libcudnn.so.{major}")
        if os.path.realpath(link) != os.path.realpath(target):
            tmp = f"{link}.{os.getpid()}"
            os.symlink(target, tmp)
            os.replace(tmp, link)
    src_dir = os.path.join(jittor_path, "extern", "cuda", "cudnn")
    files = [os.path.join(r, n) for r, _d, names in os.walk(src_dir) for n in names
             if "rnn" not in n and not n.endswith(".suppresseot-orig")]
    jt_cuda_include = os.path.join(jittor_path, "extern", "cuda", "inc")
    culib = compile_custom_ops(files, return_module=True,
        extra_flags=f" -I\\"{jt_cuda_include}\\" -I\\"{src_dir}/inc\\" -I\\"{inc}\\" -lcudnn -L\\"{linkdir}\\" {extra_flags} ")
    globals()["cudnn_ops"] = culib.ops
    globals()["cudnn"] = culib
    LOG.i(f"cuDNN {major} from {libdir} (suppresseot patch; cudnn RNN ops left out)")
    return True

def setup_cuda_lib(lib_name, link=True, extra_flags=""):
    if lib_name == "cudnn" and link and _suppresseot_setup_cudnn9(extra_flags):
        return
    arch_key = "x86_64"
'''
CUDNN9 = Patch(
    "cudnn9",
    "compile_extern.py: find cuDNN >= 9 (CUDA dirs, /usr, or the nvidia-cudnn-cu* pip package), preload its "
    "libraries, link it through a libcudnn.so symlink in jittor's cache, and build jittor's cuDNN conv ops "
    "against it (without the cudnn RNN ops, whose API cuDNN 9 removed); a cuDNN 8 setup is left to stock jittor",
    (Edit("compile_extern.py", 'def setup_cuda_lib(lib_name, link=True, extra_flags=""):\n    arch_key = "x86_64"\n',
          _CUDNN9_FN),),
)

PATCHES: tuple[Patch, ...] = (HELPER_CUDA, CXX17, CUB_MAX, CUB_LANE, CUB_WHERE, CUDNN9)


# --- finding jittor ---------------------------------------------------------------------------------------------------
def find_jittor_dir() -> Path | None:
    """The installed jittor package folder, found without importing it (importing compiles its core)."""
    try:
        spec = importlib.util.find_spec("jittor")
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    return Path(spec.origin).parent if spec.origin else None


def jittor_version(jittor_dir: Path) -> str | None:
    try:
        text = (jittor_dir / "__init__.py").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    m = re.search(r"""^__version__\s*=\s*['"]([^'"]+)['"]""", text, re.M)
    return m.group(1) if m else None


def _resolve(jittor_dir: Path | str | None) -> Path:
    path = Path(jittor_dir) if jittor_dir else find_jittor_dir()
    if path is None:
        raise SuppressEOTError("jittor is not installed (nothing to patch): pip install 'suppresseot[jittor]'")
    if not (path / "compiler.py").is_file() or not (path / "__init__.py").is_file():
        raise SuppressEOTError(f"{path} is not a jittor package folder (no __init__.py/compiler.py)")
    return path


# --- patch engine -----------------------------------------------------------------------------------------------------
def _read(path: Path) -> str:
    # newline="" keeps the file's line endings as they are, so a patched file differs only where we edit it
    with open(path, encoding="utf-8", newline="") as f:
        return f.read()


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".suppresseot-tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    shutil.copymode(path, tmp)
    os.replace(tmp, path)


def patch_state(jittor_dir: Path, patch: Patch) -> tuple[str, str]:
    """("not applied" | "already applied" | "partly applied" | "not applicable", detail) of one patch."""
    todo, done, missing = [], [], []
    texts: dict[str, str | None] = {}
    for edit in patch.edits:
        if edit.file not in texts:
            try:
                texts[edit.file] = _read(jittor_dir / edit.file)
            except (OSError, UnicodeDecodeError):
                texts[edit.file] = None
        text = texts[edit.file]
        if text is None:
            missing.append(f"{edit.file} missing")
        elif text.count(edit.new) >= edit.count and (edit.old in edit.new or edit.old not in text):
            done.append(edit)  # (an edit may keep its original text inside the new one, e.g. an added #include)
        elif text.count(edit.old) == edit.count:
            todo.append(edit)
        else:
            missing.append(f"{edit.file}: expected text found {text.count(edit.old)}x, not {edit.count}x: "
                           f"{edit.old.strip()[:60]!r}")
    if missing:
        if done and not todo:
            return "partly applied", "; ".join(missing)
        return "not applicable", "; ".join(missing)
    if todo and done:
        return "partly applied", f"{len(done)} of {len(patch.edits)} edits present"
    if todo:
        return "not applied", ""
    return "already applied", ""


def apply_patches(jittor_dir=None, patches=PATCHES) -> list[Result]:
    """Apply every patch that is not applied yet; keeps ``<file>.suppresseot-orig`` before a file's first change."""
    root = _resolve(jittor_dir)
    results = []
    for patch in patches:
        state, detail = patch_state(root, patch)
        if state != "not applied":
            results.append(Result(patch.name, state, detail))
            continue
        changed: dict[str, str] = {}
        for edit in patch.edits:
            text = changed.get(edit.file)
            if text is None:
                text = _read(root / edit.file)
            changed[edit.file] = text.replace(edit.old, edit.new)
        for rel, text in changed.items():
            path = root / rel
            backup = path.with_name(path.name + BACKUP_SUFFIX)
            if not backup.exists():
                shutil.copy2(path, backup)
            _write(path, text)
        results.append(Result(patch.name, "applied", patch.summary, sorted(changed)))
    return results


def patched_files(jittor_dir: Path) -> list[Path]:
    return sorted(p for p in jittor_dir.rglob("*" + BACKUP_SUFFIX) if p.is_file())


def revert_patches(jittor_dir=None) -> list[Result]:
    """Restore every file that has a ``.suppresseot-orig`` backup, byte for byte, and remove the backup."""
    root = _resolve(jittor_dir)
    results = []
    for backup in patched_files(root):
        original = backup.with_name(backup.name[: -len(BACKUP_SUFFIX)])
        os.replace(backup, original)
        results.append(Result(str(original.relative_to(root)), "reverted"))
    return results


# --- diagnosis --------------------------------------------------------------------------------------------------------
def find_nvcc() -> str | None:
    env = os.environ.get("nvcc_path")
    if env is not None:
        return env or None  # nvcc_path="" switches CUDA off
    for candidate in (shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if candidate and os.path.isfile(candidate):
            return candidate
    return None


def nvcc_version(nvcc: str | None) -> str | None:
    if not nvcc:
        return None
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"release (\d+\.\d+)", out)
    return m.group(1) if m else None


def find_cudnn(nvcc: str | None = None) -> list[dict]:
    """Every cuDNN this machine shows (CUDA dirs, /usr, nvidia-cudnn-* pip packages): version, include and lib dir."""
    import glob

    arch = "x86_64"
    cuda_home = Path(nvcc).resolve().parent.parent if nvcc else Path("/usr/local/cuda")
    incs = [cuda_home / "include", cuda_home / f"targets/{arch}-linux/include", Path("/usr/include"),
            Path(f"/usr/include/{arch}-linux-gnu")]
    for p in sys.path:
        for pat in ("nvidia/cudnn/include", "nvidia/cu*/include"):
            incs += [Path(x) for x in sorted(glob.glob(os.path.join(p or ".", pat)))]
    found, seen = [], set()
    for inc in incs:
        ver = inc / "cudnn_version.h"
        try:
            key = ver.resolve()
            if key in seen:
                continue
            seen.add(key)
            text = ver.read_text(errors="replace")
        except OSError:
            continue
        nums = [re.search(rf"#define\s+CUDNN_{k}\s+(\d+)", text) for k in ("MAJOR", "MINOR", "PATCHLEVEL")]
        if not nums[0]:
            continue
        version = ".".join(m.group(1) for m in nums if m)
        libs = []
        for d in (inc.parent / "lib", inc.parent / "lib64", cuda_home / "lib64", Path(f"/usr/lib/{arch}-linux-gnu")):
            libs += [str(x) for x in sorted(d.glob("libcudnn.so*"))] if d.is_dir() else []
        cudnn8_names = any(Path(x).name.startswith("libcudnn_ops_infer") for d in
                           (inc.parent / "lib", cuda_home / "lib64", Path(f"/usr/lib/{arch}-linux-gnu"))
                           if d.is_dir() for x in d.glob("libcudnn_ops_infer.so*"))
        found.append({"version": version, "include": str(inc), "libs": libs[:3], "cudnn8_layout": cudnn8_names})
    return found


def diagnose(jittor_dir=None) -> dict:
    from .env import nvidia_gpu_present

    path = Path(jittor_dir) if jittor_dir else find_jittor_dir()
    nvcc = find_nvcc()
    info = {
        "jittor_dir": str(path) if path else None,
        "jittor_version": jittor_version(path) if path else None,
        "nvcc": nvcc,
        "nvcc_version": nvcc_version(nvcc),
        "gpu": nvidia_gpu_present(),
        "cudnn": find_cudnn(nvcc),
        "patches": {},
        "backups": [],
    }
    if path and (path / "compiler.py").is_file():
        for patch in PATCHES:
            info["patches"][patch.name] = patch_state(path, patch)
        info["backups"] = [str(p.relative_to(path)) for p in patched_files(path)]
    info["speed"] = speed_features(info)
    return info


def speed_features(info: dict) -> list[tuple[str, str]]:
    """What the Jittor backend's GPU speed depends on, as it would run here (docs/jittor.md, "Speed on the GPU"
    and "Closing the gap"): (feature, state) pairs, read from the diagnosis and the environment, no import."""
    from .env import DOWNLOAD_FLAGS

    cuda = bool(info["gpu"] and info["nvcc"] and os.environ.get("use_cuda", "1") != "0")
    if not cuda:
        return [("device", "CPU (no NVIDIA GPU, or no nvcc for jittor): no GPU speed features apply")]
    major = int(info["nvcc_version"].split(".")[0]) if info["nvcc_version"] else 0
    cudnn = [c for c in info["cudnn"] if c["libs"]]
    cudnn9 = [c for c in cudnn if int(c["version"].split(".")[0]) >= 9]
    patched = info["patches"].get("cudnn9", ("", ""))[0] == "already applied"
    if os.environ.get("conv_opt", "0") not in ("", "0"):
        conv = "off (conv_opt is set): jittor's own convolution kernels, ~100x slower than cuDNN's"
    elif not cudnn:
        conv = "off: no cuDNN found; jittor's own convolution kernels, ~100x slower"
    elif cudnn9 and not patched and (major >= 13 or not [c for c in cudnn if c not in cudnn9]):
        conv = "off until `suppress-eot doctor --fix-jittor` (stock jittor 1.3.11 finds cuDNN 8 files only)"
    else:
        conv = f"cuDNN {(cudnn9 or cudnn)[0]['version']}, algorithm cache widened to 10000 shapes on import"
    cutt = os.environ.get("use_cutt", DOWNLOAD_FLAGS["use_cutt"]) != "0"
    return [("device", f"CUDA {info['nvcc_version'] or '?'}"),
            ("convolutions", conv),
            ("transposes", "cuTT (use_cutt=1)" if cutt else
             "fused into GPU kernels by layers.permute (cuTT off: it would be downloaded at build time)"),
            ("guidance", "both halves in one UNet pass while sampling (one_pass_guidance)"),
            ("attention", "scores in float32; without gradients in chunks of queries where a layer's scores would "
                          "pass the chunk budget (1 GiB; $SUPPRESSEOT_JITTOR_ATTENTION_CHUNK_MIB)"),
            ("attention backward", "stores the probabilities (JittorBackend(recompute_attention=True): recompute)"),
            ("static graphs", "on (jittor.vcompiler records each step once and replays it, for later images too; "
                              "--no-static-graphs: eager; docs/jittor.md)"),
            ("GroupNorm", "statistics, and with gradients the backward, in kernels of their own, a group over "
                          "several CUDA blocks (layers.normalize_groups)"),
            ("CUDA graphs", "none: jittor exposes no stream to capture")]


def format_diagnosis(info: dict) -> str:
    lines = []
    if not info["jittor_dir"]:
        lines.append("jittor:  not installed (pip install 'suppresseot[jittor]')")
    else:
        version = info["jittor_version"] or "unknown version"
        note = "" if info["jittor_version"] in SUPPORTED_VERSIONS else " (the patches were written for 1.3.11.0)"
        lines.append(f"jittor:  {version} at {info['jittor_dir']}{note}")
    lines.append(f"nvcc:    {info['nvcc'] or 'none (CPU only)'}" + (f" (CUDA {info['nvcc_version']})"
                                                                     if info["nvcc_version"] else ""))
    lines.append(f"GPU:     {'NVIDIA GPU present' if info['gpu'] else 'no NVIDIA GPU'}")
    if info["cudnn"]:
        for c in info["cudnn"]:
            layout = ", cuDNN 8 file layout" if c["cudnn8_layout"] else ""
            libs = ", ".join(c["libs"]) or "no libcudnn.so* next to it"
            lines.append(f"cuDNN:   {c['version']}: headers {c['include']}; {libs}{layout}")
    else:
        lines.append("cuDNN:   not found (jittor then needs conv_opt=1: its own, much slower, conv kernels)")
    if info["patches"]:
        lines.append("patches (suppress-eot doctor --fix-jittor / --revert-jittor):")
        for name, (state, detail) in info["patches"].items():
            lines.append(Result(name, state, detail).line())
        if info["backups"]:
            lines.append(f"backups: {len(info['backups'])} file(s) with {BACKUP_SUFFIX}")
    lines.append("speed features (docs/jittor.md):")
    lines += [f"  {name:<21}  {state}" for name, state in info["speed"]]
    major = int(info["nvcc_version"].split(".")[0]) if info["nvcc_version"] else 0
    if info["jittor_dir"] and major >= 13 and info["patches"]:
        states = {s for s, _ in info["patches"].values()}
        if states - {"already applied"}:
            lines.append("advice:  CUDA 13 needs the patches: run `suppress-eot doctor --fix-jittor`")
        cudnn9 = [c for c in info["cudnn"] if int(c["version"].split(".")[0]) >= 9]
        if not cudnn9:
            lines.append("advice:  no cuDNN 9 found: set conv_opt=1 (jittor's own conv kernels)")
    return "\n".join(lines)


# --- command line -----------------------------------------------------------------------------------------------------
def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "doctor", help="diagnose the Jittor install; --fix-jittor patches jittor 1.3.11 for CUDA 13",
        description="Without options: print what Jittor would use here (version, nvcc, GPU, cuDNN) and which "
                    "CUDA 13 compatibility patches are applied. --fix-jittor applies them to the installed jittor "
                    f"(each patched file keeps its original as FILE{BACKUP_SUFFIX}); --revert-jittor restores "
                    "the originals. See docs/jittor.md, 'GPUs with CUDA 13'.")
    p.set_defaults(command="doctor")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--fix-jittor", action="store_true", help="apply the CUDA 13 patches (idempotent)")
    g.add_argument("--revert-jittor", action="store_true", help="restore every patched jittor file")
    p.add_argument("--jittor-dir", metavar="PATH", help="the jittor package folder to work on (default: the "
                                                        "installed one, found without importing it)")
    p.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")


def run(args) -> int:
    try:
        return _run(args)
    except PermissionError as exc:
        raise SuppressEOTError(f"cannot write {exc.filename}: patching jittor needs write access to its folder "
                               "(run as its owner, or install jittor in a virtual environment / with --user)") from exc


def _run(args) -> int:
    if args.fix_jittor:
        root = _resolve(args.jittor_dir)
        print(f"patching jittor {jittor_version(root) or '?'} at {root}")
        results = apply_patches(root)
        for r in results:
            print(r.line())
            for f in r.files:
                print(f"      changed {f} (original kept as {f}{BACKUP_SUFFIX})")
        print("jittor's compile cache needs no clearing (its keys include the flags and the headers' content); "
              f"undo with `suppress-eot doctor --revert-jittor{' --jittor-dir ' + str(args.jittor_dir) if args.jittor_dir else ''}`")
        bad = [r for r in results if r.state in ("not applicable", "partly applied")]
        return 1 if bad else 0
    if args.revert_jittor:
        root = _resolve(args.jittor_dir)
        results = revert_patches(root)
        if not results:
            print(f"nothing to revert in {root} (no *{BACKUP_SUFFIX} files)")
        for r in results:
            print(r.line())
        return 0
    print(format_diagnosis(diagnose(args.jittor_dir)))
    return 0
