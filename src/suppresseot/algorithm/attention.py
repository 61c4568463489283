"""Capturing and aggregating the 16x16 attention maps that SuppressEOT compares.

Backends call a recorder from every attention layer with the softmax probabilities laid out as
diffusers' ``head_to_batch_dim`` does: rows = batch * heads (row b*H + h), then query pixels, then keys.
Only the maps at the compared resolution are kept (16x16 at 512 px), summed over layers as they arrive;
nothing is detached, so gradients flow through the sums.
"""
from __future__ import annotations

RESOLUTION = 16
CROSS_REFERENCE_PLACES = ("up", "down")  # the official reference cross maps leave out the mid block
ALL_PLACES = ("up", "down", "mid")
FORWARD_ORDER = ("down", "mid", "up")  # the UNet's blocks in the order a pass runs them


class AttentionRecorder:
    """Sums the attention probabilities of one UNet pass at one resolution, layer by layer.

    Each recorded layer is reduced as it arrives to per-sample sums over each half of its heads (the finest
    split ``aggregate`` reads), added to a running total per place: a pass holds a few (batch, 2, res, res,
    keys) tensors instead of every layer's probabilities (SDXL's 32x32 level has 60 self-attention layers of
    20 heads: 4.7 GiB of bf16 probabilities at batch 2). Gradients flow through the totals. ``batch``: the
    samples in the pass (rows = batch * heads). ``places``: the UNet blocks whose maps it keeps (ITO's
    ``ito_blocks``); a pass may end after the last of them (``last_place``). ``skip``: samples at the start of
    the pass that are not recorded (guidance's unconditional half, where a backend runs both halves in one
    pass: ``one_pass_guidance``).
    """

    def __init__(self, resolution: int = RESOLUTION, batch: int = 1, places=ALL_PLACES, skip: int = 0):
        self.resolution, self.batch, self.places, self.skip = resolution, batch, tuple(places), skip
        self.totals = {}  # (kind, place) -> [sum (batch, halves, res*res, keys), heads summed per sample]

    def wants(self, query_length: int, place: str) -> bool:
        """Backends may skip explicit attention (use fused kernels) on layers this returns False for."""
        return query_length == self.resolution ** 2 and place in self.places

    @property
    def last_place(self) -> str:
        """The last block of a pass ("down", "mid" or "up") that holds maps this recorder keeps."""
        return max(self.places, key=FORWARD_ORDER.index)

    def reduce(self, probs):
        """(batch, 2, queries, keys): each sample's sum over the first and over the second half of its heads
        ((batch, 1, ...) over all heads where a layer's head count is odd). Backends that recompute
        attention in the backward pass call this inside the recomputed function, then ``add``."""
        heads = self.heads(probs.shape[0])
        if self.skip:
            probs = probs[self.skip * heads:]
        _, queries, keys = probs.shape
        halves = 2 if heads % 2 == 0 else 1
        return probs.reshape(self.batch, halves, heads // halves, queries, keys).sum(2)

    def recorded_part(self) -> "AttentionRecorder":
        """This recorder for a layer's recorded samples alone, for a backend that computes the skipped ones apart
        (fused): it adds to the same totals."""
        part = AttentionRecorder(self.resolution, self.batch, self.places)
        part.totals = self.totals
        return part

    def heads(self, rows: int) -> int:
        """Attention heads of a layer whose probabilities have ``rows`` rows (all samples of the pass)."""
        return rows // (self.skip + self.batch)

    def add(self, reduced, heads: int, is_cross: bool, place: str) -> None:
        key = ("cross" if is_cross else "self", place)
        if key in self.totals:
            total, count = self.totals[key]
            self.totals[key] = [total + reduced, count + heads]
        else:
            self.totals[key] = [reduced, heads]

    def __call__(self, probs, is_cross: bool, place: str) -> None:
        if self.wants(probs.shape[1], place):
            self.add(self.reduce(probs), self.heads(probs.shape[0]), is_cross, place)

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
        if k * branches != self.batch:
            raise ValueError(f"{k} tasks x {branches} branches is not the recorded batch of {self.batch}")
        kind = "cross" if is_cross else "self"
        total, count = None, 0
        for place in places:
            if (kind, place) not in self.totals:
                continue
            sums, heads = self.totals[(kind, place)]
            if halves and branches == 2:  # a task's two samples: its branch ``select``, all heads
                maps, n = sums.reshape(2, k, -1, res, res, sums.shape[-1])[select].sum(1), heads
            elif halves:  # one sample per task: half ``select`` of its heads
                if sums.shape[1] != 2:
                    raise ValueError("a layer with an odd number of heads has no halves: aggregate with halves=False")
                maps, n = sums[:, select].reshape(k, res, res, sums.shape[-1]), heads // 2
            else:
                maps, n = sums.sum(1).reshape(k, res, res, sums.shape[-1]), heads
            total = maps if total is None else total + maps
            count += n
        if total is None:
            raise RuntimeError(f"no {res}x{res} {kind}-attention maps were recorded")
        mean = total / count
        return mean[0] if tasks is None else mean
