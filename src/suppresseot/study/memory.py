"""Device memory as the driver sees it, sampled in a background thread over a whole task.

The framework's allocator peaks (per stage, in ``result.memory``) miss what the allocator does not
own: the CUDA context, cuDNN/cuBLAS workspaces, Jittor's own pools, other processes. NVML reports
the device's used memory; polling it at 50 Hz over the whole task means a peak is never missed
between stage boundaries. Without ``pynvml`` (``pip install nvidia-ml-py``) or a GPU, sampling is
disabled and the reason is recorded instead of a number.
"""
from __future__ import annotations

import csv
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..runs import open_nvml

DEFAULT_INTERVAL = 0.02  # seconds: 50 Hz


@dataclass
class MemoryTrace:
    status: str  # "sampled" or "disabled: why"
    samples: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, used bytes)
    seconds: float = 0.0

    @property
    def peak(self) -> int | None:
        return max(used for _, used in self.samples) if self.samples else None

    @property
    def baseline(self) -> int | None:
        """Used memory when the task started (model weights, other processes)."""
        return self.samples[0][1] if self.samples else None

    @property
    def rate_hz(self) -> float | None:
        return len(self.samples) / self.seconds if self.samples and self.seconds > 0 else None

    def summary(self) -> dict:
        rate = self.rate_hz
        return {"status": self.status, "peak_used_bytes": self.peak, "baseline_used_bytes": self.baseline,
                "samples": len(self.samples), "rate_hz": None if rate is None else round(rate, 1)}

    def write_csv(self, path: Path) -> None:
        """Written under a temporary name, then renamed: a kill never leaves half a trace."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["seconds", "nvml_used_bytes"])
            writer.writerows((f"{t:.4f}", used) for t, used in self.samples)
        os.replace(tmp, path)


class MemorySampler:
    """``with MemorySampler(device) as sampler: ...``; then ``sampler.trace``.

    ``reader`` (a callable returning used bytes) replaces NVML, e.g. to sample something else.
    """

    def __init__(self, device: str = "", interval: float = DEFAULT_INTERVAL, reader=None):
        self.interval = interval
        if reader is None:
            reader, why = open_nvml(device)
            self.disabled = None if reader is not None else why
        else:
            self.disabled = None
        self.reader = reader
        self.trace = MemoryTrace(status="sampled" if reader else f"disabled: {self.disabled}")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self, started: float) -> None:
        while True:
            try:
                self.trace.samples.append((time.perf_counter() - started, self.reader()))
            except Exception as exc:  # the driver went away mid-task: keep what was sampled
                self.trace.status = f"stopped early ({type(exc).__name__}: {exc})"
                return
            if self._stop.wait(self.interval):
                return

    def start(self) -> "MemorySampler":
        self._started = time.perf_counter()
        if self.reader is not None:
            self._thread = threading.Thread(target=self._run, args=(self._started,), name="nvml-sampler",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self) -> MemoryTrace:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            if self.trace.status == "sampled":
                try:
                    self.trace.samples.append((time.perf_counter() - self._started, self.reader()))  # end state
                except Exception:
                    pass
        self.trace.seconds = time.perf_counter() - self._started
        return self.trace

    def __enter__(self) -> "MemorySampler":
        return self.start()

    def __exit__(self, *exc) -> bool:
        self.stop()
        return False
