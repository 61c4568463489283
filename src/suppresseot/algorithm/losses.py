"""ITO attention losses: keep the other tokens' attention, move the negative tokens' away.

All four losses are sums of cosine distances between columns of 16x16 attention maps of the original
branch (reference, constant) and the edited branch (differentiable w.r.t. the edited embedding):
cross-attention columns are tokens, self-attention columns are key pixels. The official code loops
over tokens and pixels in Python; the same sums are written here as weighted column sums, so one
vectorized expression serves every backend. Masks (which pixels belong to which token) depend on the
reference maps only and are computed in float64 numpy.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NEGATIVE_THRESHOLD = 0.85  # mask threshold (fraction of the max) for the negative tokens
RETAIN_THRESHOLD = 0.95  # and for the other tokens (the official ``threshold + .1``)
MASK_UPSAMPLE = 256


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """The (out x in) matrix of 1-D bilinear resampling with align_corners=False and no antialiasing.

    ``W @ A @ W.T`` equals torch's ``F.interpolate(A, mode='bilinear')`` (the official masks use it).
    """
    scale = in_size / out_size
    w = np.zeros((out_size, in_size))
    for o in range(out_size):
        src = max(scale * (o + 0.5) - 0.5, 0.0)
        i0 = int(src)
        i1 = min(i0 + 1, in_size - 1)
        frac = src - i0
        w[o, i0] += 1.0 - frac
        w[o, i1] += frac
    return w


def token_mask(attention: np.ndarray, threshold: float) -> np.ndarray:
    """Binary mask (res x res) of where one token's cross-attention map is near its maximum."""
    res = attention.shape[0]
    up = bilinear_matrix(res, MASK_UPSAMPLE)
    down = bilinear_matrix(MASK_UPSAMPLE, res)
    image = 255.0 * attention / attention.max()
    image = up @ image @ up.T
    image = np.where(image >= image.max() * threshold, 255.0, 0.0)
    return (down @ image @ down.T) > 0


@dataclass
class LossWeights:
    """Per-column weights of the four loss sums (numpy, float64)."""

    cross_retain: np.ndarray  # (77,) 1 for each non-negative word token
    cross_erase: np.ndarray  # (77,) 1 for each negative token
    self_retain: np.ndarray  # (res*res,) how many non-negative tokens' masks hold each pixel
    self_erase: np.ndarray  # (res*res,) how many negative tokens' masks hold each pixel


def loss_weights(cross_reference: np.ndarray, n_tokens: int, token_indices: list[int],
                 need_masks: bool = True) -> LossWeights:
    """Column weights from the reference cross-attention (res x res x 77, float64)."""
    res, _, length = cross_reference.shape
    negative = set(token_indices)
    cross_retain = np.zeros(length)
    cross_erase = np.zeros(length)
    self_retain = np.zeros(res * res)
    self_erase = np.zeros(res * res)
    for i in range(1, n_tokens - 1):
        is_negative = i in negative
        (cross_erase if is_negative else cross_retain)[i] = 1.0
        if need_masks:
            mask = token_mask(cross_reference[:, :, i], NEGATIVE_THRESHOLD if is_negative else RETAIN_THRESHOLD)
            (self_erase if is_negative else self_retain)[:] += mask.reshape(-1)
    return LossWeights(cross_retain, cross_erase, self_retain, self_erase)


def column_cosine_distance(reference, edited):
    """1 - cos between matching columns of two (pixels x columns) matrices, for any backend's tensors."""
    dot = (reference * edited).sum(0)
    norms = (reference * reference).sum(0).sqrt() * (edited * edited).sum(0).sqrt()
    return 1.0 - dot / norms


@dataclass
class Lambdas:
    retain: float = 1.0
    erase: float = -0.5
    self_retain: float = 1.0
    self_erase: float = -0.5

    def any(self) -> bool:
        return bool(self.retain or self.erase or self.self_retain or self.self_erase)


def attention_loss(cross_reference, cross_edited, self_reference, self_edited, weights: dict, lambdas: Lambdas):
    """Total ITO loss and its four unweighted parts (backend scalars).

    Maps are float64 tensors: cross (res, res, 77), self (res, res, res*res). ``weights`` holds the
    four LossWeights arrays as backend float64 tensors (same keys as the dataclass fields).
    """
    res = cross_reference.shape[0]
    pixels = res * res
    cross_distance = column_cosine_distance(cross_reference.reshape(pixels, -1), cross_edited.reshape(pixels, -1))
    # self maps are indexed [query_y, query_x, key]: a column is one key pixel seen from every query
    self_distance = column_cosine_distance(self_reference.reshape(pixels, -1), self_edited.reshape(pixels, -1))
    parts = {
        "cross_retain": (cross_distance * weights["cross_retain"]).sum(),
        "cross_erase": (cross_distance * weights["cross_erase"]).sum(),
        "self_retain": (self_distance * weights["self_retain"]).sum(),
        "self_erase": (self_distance * weights["self_erase"]).sum(),
    }
    total = (lambdas.retain * parts["cross_retain"] + lambdas.erase * parts["cross_erase"]
             + lambdas.self_retain * parts["self_retain"] + lambdas.self_erase * parts["self_erase"])
    return total, parts
