"""The algorithm's repeated steps replayed as CUDA graphs (PyTorch backend, CUDA only).

SuppressEOT runs the same UNet pass hundreds of times on same-shaped tensors (500 null-text steps,
100 ITO steps, 50 denoising steps per image). Launched eagerly, one pass is ~2000 kernel launches whose
host cost exceeds the GPU work on an H100 (the GPU idles between kernels); a captured graph launches
them all at once. A replay runs the kernels the eager call ran, on the same inputs: on an H100, whole
SD v1.4-shaped runs (null-text, ITO) came out bitwise equal to eager ones (``benchmarks/bench.py
--only-impl faithful,graphs`` compares them); on the tiny test model a graphed null-text gradient
differed in the last bits (tests/test_cuda_graphs.py).
"""
from __future__ import annotations

import time
import warnings
import weakref

import torch
from torch.utils import _pytree as pytree

WARMUP_CALLS = 2  # eager calls on a side stream before capture (cuBLAS/cuDNN workspaces, autograd)


def pool_bytes(steps) -> int:
    """Device memory held by the memory pools of ``steps``' graphs: what their replays work in, which the
    allocator's statistics do not count as allocated (a replay allocates nothing)."""
    pools = {tuple(step.graph.pool()) for step in steps if step.graph is not None}
    if not pools:
        return 0
    return sum(segment["total_size"] for segment in torch.cuda.memory_snapshot()
               if tuple(segment.get("segment_pool_id", ())) in pools)


def _clone(x):
    return x.clone() if isinstance(x, torch.Tensor) else x


class GraphedStep:
    """Calls ``fn`` through a CUDA graph captured on first use (again when argument shapes change).

    Arguments are pytrees of tensors and Python numbers: tensors are copied into static buffers, numbers
    written into 0-d device tensors (float32, int64 for ints), so the captured graph reads the current
    values. Outputs are cloned after each replay, so callers may keep them across replays. Graphs alive at
    the same time share one memory pool (they are never replayed concurrently and their outputs are cloned
    at once), so a run's graphs together need about the memory of the largest one.
    """

    def __init__(self, fn, device: str, family: "weakref.WeakSet | None" = None, on_replay=None):
        self.fn, self.device = fn, torch.device(device)
        self.on_replay = on_replay  # called after every replay (the backend's memory accounting)
        self.captures = 0
        self.capture_seconds = 0.0  # warm-up calls and capture, until the GPU finished them
        self.family = family if family is not None else weakref.WeakSet()  # steps that may share a pool
        self.family.add(self)
        self.signature = None
        self.graph = self.static_inputs = self.static_outputs = None
        self.failed = False

    def _signature(self, leaves, spec):
        kinds = tuple((tuple(x.shape), x.dtype, x.device) if isinstance(x, torch.Tensor) else type(x)
                      for x in leaves)
        return spec, kinds, torch.is_grad_enabled()

    def _static(self, leaf):
        if isinstance(leaf, torch.Tensor):
            return torch.empty_like(leaf, device=self.device)
        if isinstance(leaf, bool) or not isinstance(leaf, (int, float)):
            raise TypeError(f"a graphed step takes tensors and numbers, not {type(leaf).__name__}")
        return torch.empty((), dtype=torch.int64 if isinstance(leaf, int) else torch.float32, device=self.device)

    def _load(self, leaves) -> None:
        for static, leaf in zip(self.static_inputs, leaves):
            if isinstance(leaf, torch.Tensor):
                static.copy_(leaf)
            else:
                static.fill_(leaf)  # a kernel argument: no host-to-device copy, no synchronization

    def _shared_pool(self):
        """The pool of a live graph of the family, or None (a new pool). A pool id is only reused while a
        graph holds it: PyTorch's allocator asserts when a capture joins a pool whose graphs are all gone."""
        for step in list(self.family):
            if step is not self and step.graph is not None:
                return step.graph.pool()
        return None

    def _capture(self, leaves, spec) -> None:
        self.graph = self.static_inputs = self.static_outputs = None  # free the previous capture first
        self.static_inputs = [self._static(leaf) for leaf in leaves]
        self._load(leaves)
        args = pytree.tree_unflatten(self.static_inputs, spec)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_CALLS):
                self.fn(*args)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._shared_pool(), capture_error_mode="thread_local"):
            outputs = self.fn(*args)
        self.graph, self.static_outputs = graph, outputs
        self.captures += 1

    def __call__(self, *args):
        if self.failed:
            return self.fn(*args)
        leaves, spec = pytree.tree_flatten(args)
        signature = self._signature(leaves, spec)
        if signature != self.signature:
            try:
                started = time.perf_counter()
                self._capture(leaves, spec)
                torch.cuda.synchronize(self.device)
                self.capture_seconds += time.perf_counter() - started
            except Exception as exc:  # an op that cannot be captured: run this step eagerly from now on
                self.failed = True
                self.graph = self.static_inputs = self.static_outputs = None
                warnings.warn(f"CUDA graph capture failed ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
                              "running this step eagerly", RuntimeWarning, stacklevel=2)
                return self.fn(*args)
            self.signature = signature
        else:
            self._load(leaves)
        self.graph.replay()
        if self.on_replay is not None:
            self.on_replay()
        return pytree.tree_map(_clone, self.static_outputs)
