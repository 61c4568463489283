"""Capturing and aggregating the 16x16 attention maps that SuppressEOT compares.

Backends call a recorder from every attention layer with the softmax probabilities laid out as
diffusers' ``head_to_batch_dim`` does: rows = batch * heads (row b*H + h), then query pixels, then keys.
Only the maps at the compared resolution are kept (16x16 at 512 px); nothing is copied, so gradients
flow through the kept maps.
"""
from __future__ import annotations

RESOLUTION = 16
CROSS_REFERENCE_PLACES = ("up", "down")  # the official reference cross maps leave out the mid block
ALL_PLACES = ("up", "down", "mid")


class AttentionRecorder:
    """Keeps the attention probabilities of one UNet pass at one resolution."""

    def __init__(self, resolution: int = RESOLUTION):
        self.resolution = resolution
        self.maps = {"cross": [], "self": []}  # lists of (place, probs)

    def wants(self, query_length: int) -> bool:
        """Backends may skip explicit attention (use fused kernels) on layers this returns False for."""
        return query_length == self.resolution ** 2

    def __call__(self, probs, is_cross: bool, place: str) -> None:
        if self.wants(probs.shape[1]):
            self.maps["cross" if is_cross else "self"].append((place, probs))

    def aggregate(self, is_cross: bool, places=ALL_PLACES, select: int = 0, halves: bool = True,
                  tasks: int | None = None, branches: int = 1):
        """Mean map (res, res, keys) over layers and heads, as the official ``aggregate_attention``.

        The official code splits each layer's rows into two halves and keeps half ``select``. With the
        two branches batched that picks a branch; during ITO (batch 1) it keeps only the first half of the
        heads. ``halves=False`` averages every row instead (all heads of a batch-1 pass).

        Several tasks batched together (``tasks=K``): the pass's batch is ``branches`` blocks of K samples
        (branch-major, as ``cat([originals, edited])``), and each task's own rows get the split above, so
        the result (K, res, res, keys) holds what K separate passes would give.
        """
        res = self.resolution
        k = 1 if tasks is None else tasks
        total, count = None, 0
        entries = self.maps["cross" if is_cross else "self"]
        for place in places:
            for where, probs in entries:
                if where != place:
                    continue
                keys = probs.shape[-1]
                if halves and branches == 2:  # a task's two samples: its branch ``select``
                    maps = probs.reshape(2, k, -1, res, res, keys)[select]
                elif halves:  # one sample per task: half ``select`` of its heads
                    maps = probs.reshape(k, 2, -1, res, res, keys)[:, select]
                else:
                    maps = probs.reshape(k, -1, res, res, keys)
                total = maps.sum(1) if total is None else total + maps.sum(1)
                count += maps.shape[1]
        if total is None:
            raise RuntimeError(f"no {res}x{res} {'cross' if is_cross else 'self'}-attention maps were recorded")
        mean = total / count
        return mean[0] if tasks is None else mean
