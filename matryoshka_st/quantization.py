"""Codes for truncated embeddings: int8 with one scale per Matryoshka shell, binary, and binary with rescoring.

sentence-transformers' ``quantize_embeddings`` gives int8 codes with one ``[min, max]`` range *per axis*. On a model
whose coordinates are ordered by variance (a PCA rotation, a Matryoshka model), that stretches the low-variance tail
axes to the same 256 levels as the leading ones, so the codes' dot product weighs every axis alike (it whitens the
space) and drifts away from the float cosine. What this module adds:

- :class:`Int8Calibration`: symmetric int8 codes with **one scale per shell** ``[d_{k-1}, d_k)`` of the trained
  dims, fitted at a trained dim on the renormalised prefixes. Scoring dequantises (``code * scale / 127``), so the
  codes' inner product tracks the float one; the scales are a few floats per dim, saved in ``matryoshka_config.json``.
- :func:`binary_codes`: ``quantize_embeddings(..., "binary")`` unpacked to +-1, whose dot product ranks as the
  Hamming distance of the packed bits does.
- :func:`rescore_binary`: the asymmetric search of sentence-transformers' quantization docs: shortlist the documents
  by Hamming distance, then rescore the shortlist with the float query against the stored +-1 codes.

Example:
    >>> rng = np.random.default_rng(0)
    >>> x = truncate_numpy(rng.normal(size=(500, 64)).astype(np.float32), 64)
    >>> calibration = Int8Calibration.fit(x, dims=[64, 32])
    >>> codes = calibration.quantize(x, 64)  # (500, 64) int8
    >>> bool(np.abs(calibration.dequantize(codes, 64) - x).max() < 0.02)
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sentence_transformers.util import quantize_embeddings

from matryoshka_st.dims import truncate_numpy

# a shell's scale is this quantile of |x| on its widest axis: at most 0.1% of any axis' values are clipped to +-127
INT8_QUANTILE = 0.999
# documents per query rescored with the float query: 4x the 10 that nDCG@10 reads, as sentence-transformers'
# ``semantic_search_faiss(rescore_multiplier=4)`` does for top 10
RESCORE_K = 40


def shells(dims: Sequence[int], dim: int) -> list[tuple[int, int]]:
    """The Matryoshka shells ``[start, end)`` that make up a prefix of ``dim`` coordinates.

    The trained dims at most ``dim`` are the boundaries; a ``dim`` between two trained dims ends with a partial shell.

    Example:
        >>> shells([384, 256, 128, 64, 32], 256)
        [(0, 32), (32, 64), (64, 128), (128, 256)]
    """
    bounds = sorted({d for d in dims if 0 < d < dim} | {dim})
    return list(zip([0, *bounds[:-1]], bounds))


@dataclass
class Int8Calibration:
    """Symmetric int8 codes with one scale per Matryoshka shell, for each calibrated (trained) dim.

    Attributes:
        dims: the trained dims (the shell boundaries), largest first.
        scales: ``{dim: [scale per shell]}``: the ``quantile`` of ``|x|`` on the widest axis of each shell of the
            renormalised ``dim``-prefixes of the calibration embeddings.
        quantile: see :data:`INT8_QUANTILE`.
    """

    dims: list[int]
    scales: dict[int, list[float]]
    quantile: float = INT8_QUANTILE

    @classmethod
    def fit(cls, embeddings: np.ndarray, dims: Sequence[int], quantile: float = INT8_QUANTILE) -> Int8Calibration:
        """Fit the scales on full-size embeddings ``(N, D)`` (a few thousand texts of the domain) at every dim."""
        if not 0 < quantile <= 1:
            raise ValueError(f"quantile must be in (0, 1], got {quantile!r}.")
        embeddings = np.asarray(embeddings, dtype=np.float32)
        dims = sorted({int(d) for d in dims}, reverse=True)
        if not dims or dims[0] > embeddings.shape[1]:
            raise ValueError(f"dims {dims} must be non-empty and at most the embeddings' size {embeddings.shape[1]}.")
        scales = {}
        for dim in dims:
            prefix = truncate_numpy(embeddings, dim)  # (N, dim), unit rows
            per_axis = np.quantile(np.abs(prefix), quantile, axis=0)  # (dim,)
            scales[dim] = [max(float(per_axis[start:end].max()), 1e-12) for start, end in shells(dims, dim)]
        return cls(dims=dims, scales=scales, quantile=quantile)

    def _scale_row(self, dim: int) -> np.ndarray:
        if dim not in self.scales:
            raise ValueError(f"No int8 calibration at dim {dim}: calibrated dims are {sorted(self.scales)}.")
        row = np.empty(dim, dtype=np.float32)  # (dim,): each coordinate's shell scale
        for (start, end), scale in zip(shells(self.dims, dim), self.scales[dim]):
            row[start:end] = scale
        return row

    def quantize(self, prefixes: np.ndarray, dim: int) -> np.ndarray:
        """Renormalised ``dim``-prefixes ``(N, dim)`` -> int8 codes ``(N, dim)`` in ``[-127, 127]``."""
        prefixes = np.asarray(prefixes, dtype=np.float32)
        if prefixes.ndim != 2 or prefixes.shape[1] != dim:
            raise ValueError(f"Expected renormalised {dim}-dim prefixes (N, {dim}), got shape {prefixes.shape}.")
        codes = np.rint(prefixes * (127.0 / self._scale_row(dim)))
        return np.clip(codes, -127, 127).astype(np.int8)

    def dequantize(self, codes: np.ndarray, dim: int) -> np.ndarray:
        """int8 codes ``(N, dim)`` -> float32 ``(N, dim)`` on the scale of the prefixes (what scoring uses)."""
        return codes.astype(np.float32) * (self._scale_row(dim) / 127.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": "shell-absmax",
            "quantile": self.quantile,
            "dims": list(self.dims),
            "scales": {str(dim): [round(s, 8) for s in scales] for dim, scales in self.scales.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Int8Calibration:
        if data.get("method") != "shell-absmax":
            raise ValueError(f"Unknown int8 calibration method {data.get('method')!r}: expected 'shell-absmax'.")
        return cls(
            dims=[int(d) for d in data["dims"]],
            scales={int(dim): [float(s) for s in scales] for dim, scales in data["scales"].items()},
            quantile=float(data.get("quantile", INT8_QUANTILE)),
        )


def int8_per_axis(prefixes: np.ndarray, calibration_prefixes: np.ndarray) -> np.ndarray:
    """sentence-transformers' int8 codes (one ``[min, max]`` range per axis, from ``calibration_prefixes``) as
    float32 ``(N, dim)`` in ``[-128, 127]``: what a model without an :class:`Int8Calibration` is scored with."""
    codes = quantize_embeddings(prefixes, precision="int8", calibration_embeddings=calibration_prefixes)
    return codes.astype(np.float32)


def binary_codes(prefixes: np.ndarray) -> np.ndarray:
    """Sign codes of ``(N, dim)`` prefixes as float32 +-1 ``(N, dim)`` (bit 1 for a positive coordinate)."""
    dim = prefixes.shape[1]
    packed = quantize_embeddings(np.asarray(prefixes, dtype=np.float32), precision="binary")  # (N, ceil(dim/8))
    bits = np.unpackbits((packed.astype(np.int16) + 128).astype(np.uint8), axis=-1)[:, :dim]
    return 2.0 * bits.astype(np.float32) - 1.0


def rescore_binary(queries: np.ndarray, codes: np.ndarray, k: int = RESCORE_K) -> np.ndarray:
    """Scores ``(Q, N)`` of float queries against +-1 document codes: the ``k`` documents nearest in Hamming
    distance to each query's own code, rescored by ``query . code``, rank above all others (which keep their
    Hamming order).

    Args:
        queries: ``(Q, dim)`` float queries (unit rows) or, for symmetric tasks, +-1 codes (then this is Hamming).
        codes: ``(N, dim)`` +-1 document codes from :func:`binary_codes`.
        k: shortlist length per query.
    """
    queries = np.asarray(queries, dtype=np.float32)
    codes = np.asarray(codes, dtype=np.float32)
    dim = codes.shape[1]
    hamming = np.where(queries > 0, 1.0, -1.0).astype(np.float32) @ codes.T / dim  # (Q, N) in [-1, 1]
    scores = hamming - 3.0  # below every rescored score
    k = min(k, codes.shape[0])
    shortlist = np.argpartition(-hamming, k - 1, axis=1)[:, :k]  # (Q, k)
    rescored = np.einsum("qd,qkd->qk", queries, codes[shortlist]) / np.sqrt(dim)  # (Q, k) in [-1, 1]
    np.put_along_axis(scores, shortlist, rescored, axis=1)
    return scores


__all__ = [
    "INT8_QUANTILE",
    "RESCORE_K",
    "Int8Calibration",
    "binary_codes",
    "int8_per_axis",
    "rescore_binary",
    "shells",
]
