"""Importing Jittor safely: offline-safe defaults, device choice, and one-sentence errors instead of compiler dumps.

Jittor compiles its core with the system C++ compiler on first import and, unless told otherwise,
downloads oneDNN, NCCL, cutlass and cutt at run time (fatal offline), and picks up any ``nvcc`` on the
PATH even where no GPU (or no CUDA runtime) exists. ``configure_environment`` sets environment
defaults for that *before* jittor is imported, without overriding anything the user set;
``import_jittor`` imports it with its output sent to a log file and turns every failure into
``BackendUnavailable``. See docs/jittor.md.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ...errors import BackendUnavailable

# Jittor features that download third-party code at run time; off unless the user asks for them.
DOWNLOAD_FLAGS = {"use_mkl": "0", "use_nccl": "0", "use_cutlass": "0", "use_cutt": "0"}
ENV_KEYS = ("nvcc_path", "cc_path", "use_mkl", "use_nccl", "use_cutlass", "use_cutt", "use_cuda", "conv_opt",
            "cache_name", "log_silent", "JTCUDA_VERSION")
INSTALL_HINT = "pip install 'suppresseot[jittor]'"

_state: dict = {"env_defaults_set": {}, "log": None, "device": None}


def nvidia_gpu_present() -> bool:
    """True when this machine shows an NVIDIA GPU (a device node, or a working ``nvidia-smi -L``)."""
    if os.path.exists("/dev/nvidia0"):
        return True
    smi = shutil.which("nvidia-smi")
    if not smi:
        return False
    try:
        r = subprocess.run([smi, "-L"], capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0 and b"GPU" in r.stdout


def configure_environment() -> dict:
    """Set offline-safe jittor defaults in ``os.environ`` where unset; returns every default set so far.

    Has no effect on a jittor that is already imported (it reads these variables at import).
    """
    new = {k: v for k, v in DOWNLOAD_FLAGS.items() if k not in os.environ}
    if "nvcc_path" not in os.environ and not nvidia_gpu_present():
        new["nvcc_path"] = ""  # an nvcc without a GPU/libcudart makes the import fail
    os.environ.update(new)
    _state["env_defaults_set"].update(new)
    return dict(_state["env_defaults_set"])


def log_path() -> Path:
    """Where jittor's import/compile output goes (``SUPPRESSEOT_JITTOR_LOG`` overrides)."""
    env = os.environ.get("SUPPRESSEOT_JITTOR_LOG")
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(env) if env else Path(tempfile.gettempdir()) / f"suppresseot-jittor-{uid}.log"


def _core_cached() -> bool:
    root = Path.home() / ".cache" / "jittor"
    return any(p for depth in (7, 8) for p in root.glob("jt*/" + "*/" * (depth - 1) + "jittor_core*.so"))


@contextlib.contextmanager
def _output_to(path: Path, mode: str = "a"):
    """Send fd 1/2 (C++ and subprocess output) and Python's sys.stdout/err to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    with open(path, mode, encoding="utf-8", errors="replace") as log:
        saved = []
        try:
            for fd in (1, 2):
                with contextlib.suppress(OSError):
                    saved.append((fd, os.dup(fd)))
                    os.dup2(log.fileno(), fd)
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                yield
        finally:
            log.flush()
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)


def _tail(path: Path | None, n: int = 200_000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - n))
            return f.read().decode("utf-8", "replace")
    except (OSError, TypeError):
        return ""


def explain_failure(exc: BaseException, log: Path | None = None) -> str:
    """One sentence naming why jittor failed (import, core compile, or a JIT op compile) and what to do."""
    text = f"{exc}\n{_tail(log)}"
    where = f" (full log: {log})" if log else ""
    docs = "see docs/jittor.md"
    if "computeMode" in text or "clockRate" in text:
        return ("jittor failed to compile its core against CUDA 13 (its helper_cuda.h uses cudaDeviceProp fields "
                f"CUDA 13 removed): run `suppress-eot doctor --fix-jittor` (reversible), or use a CUDA 11/12 toolkit via "
                f"nvcc_path=..., or the CPU with nvcc_path=''; {docs}{where}")
    if "C++17" in text or "CCCL_IGNORE_DEPRECATED_CPP_DIALECT" in text:
        return ("jittor compiles CUDA code with -std=c++14, which CUDA 13's CUB/Thrust refuse (they need C++17): "
                f"run `suppress-eot doctor --fix-jittor` (reversible), or use a CUDA 11/12 toolkit via nvcc_path=..., "
                f"or the CPU with nvcc_path=''; {docs}{where}")
    if "libcudnn" in text or ("cudnn" in text.lower() and "not found" in text.lower()):
        return ("jittor could not load cuDNN 8 (stock jittor does not use cuDNN 9): run `suppress-eot doctor "
                f"--fix-jittor` (adds cuDNN 9 support), or set conv_opt=1, or use a CUDA 11/12 setup; {docs}{where}")
    if "libcudart" in text or ("cudart" in text and "cannot open" in text):
        return (f"jittor found nvcc but no usable CUDA runtime: set nvcc_path='' to run on the CPU, or fix the CUDA "
                f"install; {docs}{where}")
    if any(s in text for s in ("urlopen", "URLError", "Name or service not known", "download", "Temporary failure")):
        return (f"jittor tried to download a component and could not (offline?): keep use_mkl=0 use_nccl=0 "
                f"use_cutlass=0 use_cutt=0 and set nvcc_path explicitly; {docs}{where}")
    if isinstance(exc, ModuleNotFoundError) and getattr(exc, "name", "") == "jittor":
        return f"jittor is not installed: {INSTALL_HINT}"
    first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    return f"jittor failed ({type(exc).__name__}: {first}); {docs}{where}"


def ensure_jittor():
    """Import jittor (once) with the safe defaults and its output in the log; the device is left alone."""
    configure_environment()
    jt = sys.modules.get("jittor")
    if jt is not None and hasattr(jt, "flags"):
        return jt
    if importlib.util.find_spec("jittor") is None:
        raise BackendUnavailable(f"jittor is not installed: {INSTALL_HINT}")
    log = _state["log"] = log_path()
    if not _core_cached():
        print(f"Compiling jittor's core on first use (minutes; log: {log}) ...", file=sys.stderr, flush=True)
    saved = _python_signal_handlers()
    try:
        with _output_to(log, "w"):
            import jittor as jt
    except (Exception, SystemExit) as exc:
        raise BackendUnavailable(explain_failure(exc, log)) from exc
    finally:
        _restore_signal_handlers(saved)
    return jt


# jittor's core installs C signal handlers on import. Two of them break the programs it lives in:
# SIGCHLD ends the whole process ("Caught SIGCHLD ... quick exit") whenever any child process dies of a
# signal (a killed subprocess, a crashed worker), and SIGINT turns Ctrl-C into an immediate exit, so
# Python's KeyboardInterrupt (and the CLI's clean stop) never happens. Put Python's handlers back.
_RESTORED_SIGNALS = ("SIGCHLD", "SIGINT")


def _python_signal_handlers() -> dict:
    import signal

    return {name: signal.getsignal(getattr(signal, name)) for name in _RESTORED_SIGNALS if hasattr(signal, name)}


def _restore_signal_handlers(saved: dict) -> None:
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return  # signal.signal works only in the main thread
    for name, handler in saved.items():
        if handler is not None:
            signal.signal(getattr(signal, name), handler)


def import_jittor(device: str = "auto"):
    """Import jittor with safe defaults and select the device ("auto" | "cpu" | "cuda"); returns the module."""
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', not {device!r}")
    jt = ensure_jittor()
    has_cuda = bool(getattr(jt, "has_cuda", 0))
    if device == "cuda" and not has_cuda:
        why = "nvcc_path='' is set" if os.environ.get("nvcc_path") == "" else "jittor found no CUDA toolkit/GPU"
        raise BackendUnavailable(f"CUDA was requested but jittor cannot use it here ({why}); use --device cpu")
    use_cuda = device == "cuda" or (device == "auto" and has_cuda)
    try:
        with _output_to(log_path()):
            jt.flags.use_cuda = int(use_cuda)
    except (Exception, SystemExit) as exc:
        raise BackendUnavailable(explain_failure(exc, log_path())) from exc
    _state["device"] = "cuda" if use_cuda else "cpu"
    if use_cuda:
        _state["cudnn_algorithm_cache"] = _widen_cudnn_algorithm_cache(jt)
    return jt


def _widen_cudnn_algorithm_cache(jt, size: int = 10000) -> int | None:
    """Let jittor remember cuDNN's benchmarked algorithm for every convolution shape.

    jittor keeps 100 shapes per direction; SD v1's UNet at batch 1 and 2, its VAE and their gradients
    need more (an H200 run logged "forward_ algorithm cache is full"), after which each new shape gets
    cuDNN's uncached heuristic pick on every call. jittor's own benchmark scripts raise the limit alike.
    """
    cudnn = getattr(jt, "cudnn", None)
    if cudnn is None or not hasattr(cudnn, "set_algorithm_cache_size"):
        return None
    cudnn.set_algorithm_cache_size(size)
    return size


def jittor_info() -> dict:
    """Versions, flags and the environment defaults this module set, for run logs (never imports jittor)."""
    jt = sys.modules.get("jittor")
    info = {
        "version": getattr(jt, "__version__", None),
        "device": _state["device"],
        "env_defaults_set": dict(_state["env_defaults_set"]),
        "env": {k: os.environ[k] for k in ENV_KEYS if k in os.environ},
        "import_log": str(_state["log"]) if _state["log"] else None,
        "cudnn_algorithm_cache": _state.get("cudnn_algorithm_cache"),
    }
    if jt is not None and hasattr(jt, "flags"):
        compiler = getattr(jt, "compiler", None)
        info.update({
            "has_cuda": bool(getattr(jt, "has_cuda", 0)),
            "use_cuda": int(jt.flags.use_cuda),
            "cc_path": getattr(compiler, "cc_path", None),
            "nvcc_path": getattr(compiler, "nvcc_path", None),
            "cache_path": getattr(compiler, "cache_path", None),
        })
    return info


def peak_live_bytes(jt) -> int | None:
    """Bytes of live jittor variables at the moment jittor's allocators held the most, since its memory
    profiler was switched on (``jt.flags.profile_memory_enable = 1``); None while it is off.

    jittor has no allocator peak counter like ``torch.cuda.max_memory_allocated``, and the device-level
    figure (NVML) shows its caching allocators' pools, not what a run needs. The profiler walks the graph at
    every new maximum, so it slows a run: measure memory in a run that is not timed. The maximum cannot be
    reset from Python, so one process measures one thing.
    """
    if not int(jt.flags.profile_memory_enable):
        return None
    head = jt.get_max_memory_info().split("[!@#div1!@#]", 1)[0].strip()
    return int(head) if head.isdigit() else None
