"""Soft-weighted regularization (SWR) of the negative-token and EOT embeddings.

The EOT embeddings carry the whole prompt's meaning, the negative tokens' too. Stacking the negative
tokens' and every EOT embedding into one matrix, its large singular values hold the shared (negative)
content; shrinking them by ``exp(-alpha * s)`` suppresses it. SWR runs once per step on a 77xD
embedding and is never differentiated, so it is computed here once, in float64 numpy, for every backend.
"""
from __future__ import annotations

import numpy as np

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
                           method: str = "soft-weight") -> np.ndarray:
    """SWR of a prompt embedding (77 x D or 1 x 77 x D); returns a new array of the same shape and dtype."""
    squeeze = embedding.ndim == 3
    emb = embedding[0] if squeeze else embedding
    rows = eot_and_negative_rows(token_indices, n_tokens, emb.shape[0])
    out = np.array(emb, dtype=np.float64, copy=True)
    out[rows] = regularize_matrix(out[rows].T, alpha, method).T
    out = out.astype(embedding.dtype)
    return out[None] if squeeze else out
