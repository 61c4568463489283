"""Soft-weighted regularization (SWR) of the negative-token and EOT embeddings.

The EOT embeddings carry the whole prompt's meaning, the negative tokens' too. Stacking the negative
tokens' and every EOT embedding into one matrix, its large singular values hold the shared (negative)
content; shrinking them by ``exp(-alpha * s)`` suppresses it. SWR runs once per step on a 77xD
embedding and is never differentiated, so it is computed here once, in float64 numpy, for every backend.

Families with several text encoders (SDXL: 768 + 1280 columns) get SWR on each encoder's column block on
its own (an ``EmbeddingLayout``): each block is one encoder's space, with its own singular values.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

POOLED = ("keep", "swr")  # SDXL's pooled embedding: kept as the prompt's, or regularized with encoder 2's EOT


@dataclass(frozen=True)
class EmbeddingLayout:
    """Where things sit in a conditioning tensor: ``tokens`` token rows, SWR'd per column block; with
    ``pooled_block`` (SDXL), row ``tokens`` holds the pooled embedding in those columns."""

    tokens: int = 77
    blocks: tuple[tuple[int, int], ...] | None = None  # None: one block, the whole width
    pooled_block: tuple[int, int] | None = None

    def pooled_columns(self) -> slice | None:
        return None if self.pooled_block is None else slice(*self.pooled_block)

METHODS = ("soft-weight", "alpha", "beta", "delete", "weight")
STRENGTHEN_ALPHA = -0.001  # the official code's special value for adding/strengthening content


def eot_and_negative_rows(token_indices: list[int], n_tokens: int, length: int = 77) -> list[int]:
    """Rows SWR edits: the negative tokens, then the end token and all padding (n-1 .. 76)."""
    return list(token_indices) + list(range(n_tokens - 1, length))


def regularize_matrix(matrix: np.ndarray, alpha: float, method: str = "soft-weight") -> np.ndarray:
    """Rescale the singular values of ``matrix`` (D x k: one column per edited token)."""
    if method == "weight":
        return matrix * alpha
    if method not in METHODS:
        raise ValueError(f"unknown SWR method {method!r}; choose one of {', '.join(METHODS)}")
    k = matrix.shape[1]
    u, s, vh = np.linalg.svd(matrix, full_matrices=False)
    cut = int(k * alpha)
    if method == "soft-weight":
        if alpha == STRENGTHEN_ALPHA:
            s = s * (np.exp(0.001 * s) * 1.2)  # the paper's Appendix F: strengthen instead of suppress
        else:
            s = s * np.exp(-alpha * s)
    elif method == "alpha":  # drop the largest singular values
        s = s.copy()
        s[:cut] = 0
    elif method == "beta":  # keep only the largest
        s = s.copy()
        s[cut:] = 0
    elif method == "delete":  # remove the largest components entirely
        if cut >= k:
            return np.zeros_like(matrix)
        u, s, vh = u[:, cut:], s[cut:], vh[cut:]
    return (u * s) @ vh


def soft_weight_regularize(embedding: np.ndarray, token_indices: list[int], n_tokens: int, alpha: float,
                           method: str = "soft-weight", layout: EmbeddingLayout | None = None,
                           pooled: str = "keep") -> np.ndarray:
    """SWR of a prompt embedding (77 x D or 1 x 77 x D; with a pooled row 78 x D); returns a new array of the
    same shape and dtype. Each of the layout's column blocks is regularized on its own; ``pooled="swr"`` adds
    the pooled embedding as one more column of its block's matrix (it is encoder 2's projected end token)."""
    squeeze = embedding.ndim == 3
    emb = embedding[0] if squeeze else embedding
    layout = layout or EmbeddingLayout(tokens=emb.shape[0])
    rows = eot_and_negative_rows(token_indices, n_tokens, layout.tokens)
    out = np.array(emb, dtype=np.float64, copy=True)
    for start, end in layout.blocks or ((0, emb.shape[1]),):
        edited = rows + ([layout.tokens] if pooled == "swr" and layout.pooled_block == (start, end) else [])
        out[edited, start:end] = regularize_matrix(out[edited, start:end].T, alpha, method).T
    out = out.astype(embedding.dtype)
    return out[None] if squeeze else out
