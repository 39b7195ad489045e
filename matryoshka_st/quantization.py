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
- :class:`BinaryCalibration`: per dim, whether the sign bits are taken after a random rotation of the whole prefix
  (float scores at that dim unchanged), decided on the training texts by how many float neighbours the Hamming
  neighbours recover; the rotations are saved next to the model (``binary_rotations.safetensors``).
- :func:`rescore_binary`: the asymmetric search of sentence-transformers' quantization docs: shortlist the documents
  by Hamming distance, then rescore the shortlist with the float query against the stored +-1 codes.

Example:
    >>> rng = np.random.default_rng(0)
    >>> x = truncate_numpy(rng.normal(size=(500, 64)).astype(np.float32), 64)
    >>> calibration = Int8Calibration.fit(x, dims=[64, 32])
    >>> codes = calibration.quantize(x, 64)  # (500, 64) int8
    >>> error = np.abs(calibration.dequantize(codes, 64) - x)  # half a step, except the 0.1% clipped values
    >>> bool(np.quantile(error, 0.999) < 0.002)
    True
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sentence_transformers.util import quantize_embeddings

from matryoshka_st.dims import truncate_numpy

# a shell's scale is this quantile of |x| on its widest axis: at most 0.1% of any axis' values are clipped to +-127
INT8_QUANTILE = 0.999
# documents per query rescored with the float query: 4x the 10 that nDCG@10 reads, as sentence-transformers'
# ``semantic_search_faiss(rescore_multiplier=4)`` does for top 10
RESCORE_K = 40
BINARY_ROTATIONS_NAME = "binary_rotations.safetensors"


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


def prefix_rotation(dim: int, seed: int = 0) -> np.ndarray:
    """A random orthogonal ``(dim, dim)`` matrix (QR of a Gaussian, signs fixed by ``R``'s diagonal); apply as
    ``x @ rotation.T``. It mixes every axis of a prefix, so float scores at that dim are unchanged."""
    q, r = np.linalg.qr(np.random.default_rng([seed, dim]).normal(size=(dim, dim)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


def _neighbour_recall(prefixes: np.ndarray, codes: np.ndarray, n_queries: int, k: int = 10) -> float:
    """How many of each query's float top ``k`` among the other rows the codes' Hamming top ``k`` finds."""
    queries, docs = prefixes[:n_queries], prefixes[n_queries:]
    exact = np.argpartition(-(queries @ docs.T), k - 1, axis=1)[:, :k]
    hamming = np.argpartition(-(codes[:n_queries] @ codes[n_queries:].T), k - 1, axis=1)[:, :k]
    return float(np.mean([len(np.intersect1d(a, b)) / k for a, b in zip(exact, hamming)]))


def _pair_mrr(anchor_codes: np.ndarray, positive_codes: np.ndarray, k: int = 10) -> float:
    """MRR@10 of each anchor's own positive (row ``i``) among all positives, by the codes' Hamming similarity."""
    scores = anchor_codes @ positive_codes.T  # (P, P)
    own = np.diag(scores)[:, None]
    ranks = (scores > own).sum(axis=1) + 0.5 * ((scores == own).sum(axis=1) - 1) + 1  # ties: their mean rank
    return float(np.where(ranks <= k, 1.0 / ranks, 0.0).mean())


@dataclass
class BinaryCalibration:
    """Which dims take their sign bits after a random rotation of the whole prefix, and those rotations.

    In a space ordered by variance (PCA, Matryoshka training) the signs of the many low-variance tail axes are noisy
    yet count as much in Hamming distance as the leading ones; a random rotation of the prefix (a random-hyperplane
    hash) spreads the variance over every bit. At small dims the leading axes' own signs can do better. :meth:`fit`
    decides per dim on training data: the codes that rank each training anchor's own positive higher (or, without
    pairs, whose Hamming top 10 recover more of the float top 10) win. The rotations change no float score; they
    apply to the codes only.

    Attributes:
        rotations: ``{dim: (dim, dim) orthogonal matrix}`` for the dims whose codes are rotated.
        recall: ``{dim: {"axes": r, "rotated": r}}``, the neighbour recall@10 each choice had on the fit texts.
    """

    rotations: dict[int, np.ndarray]
    recall: dict[int, dict[str, float]]

    @classmethod
    def fit(
        cls,
        embeddings: np.ndarray,
        dims: Sequence[int],
        n_queries: int = 500,
        seed: int = 0,
        pairs: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> BinaryCalibration:
        """Decide per dim on full-size embeddings ``(N, D)`` of domain texts (the first ``n_queries`` rows query
        the rest: which codes' Hamming top 10 recover more of the float top 10).

        With ``pairs`` (full-size embeddings of training anchors and their positives, ``(P, D)`` each) the decision
        is the retrieval the model was trained for instead: the codes whose Hamming ranking puts each anchor's own
        positive higher (MRR@10 among all the positives) win. ``recall`` then holds those MRRs.
        """
        embeddings = np.asarray(embeddings, dtype=np.float32)
        n_queries = min(n_queries, len(embeddings) // 2)
        if n_queries < 10:
            raise ValueError(f"Need at least 20 embeddings to fit binary codes, got {len(embeddings)}.")
        rotations, recall = {}, {}
        for dim in sorted({int(d) for d in dims}, reverse=True):
            rotation = prefix_rotation(dim, seed)
            if pairs is not None:
                anchors, positives = (truncate_numpy(np.asarray(x, dtype=np.float32), dim) for x in pairs)
                axes = _pair_mrr(binary_codes(anchors), binary_codes(positives))
                rotated = _pair_mrr(binary_codes(anchors @ rotation.T), binary_codes(positives @ rotation.T))
            else:
                prefixes = truncate_numpy(embeddings, dim)
                axes = _neighbour_recall(prefixes, binary_codes(prefixes), n_queries)
                rotated = _neighbour_recall(prefixes, binary_codes(prefixes @ rotation.T), n_queries)
            recall[dim] = {"axes": round(axes, 4), "rotated": round(rotated, 4)}
            if rotated > axes:
                rotations[dim] = rotation
        return cls(rotations=rotations, recall=recall)

    def codes(self, prefixes: np.ndarray, dim: int) -> np.ndarray:
        """+-1 codes ``(N, dim)`` of renormalised ``dim``-prefixes (rotated first where :meth:`fit` chose so)."""
        return binary_codes(self.rotate(prefixes, dim))

    def rotate(self, prefixes: np.ndarray, dim: int) -> np.ndarray:
        """The prefixes in the space their codes are taken in (the float query rescores there)."""
        rotation = self.rotations.get(dim)
        return prefixes if rotation is None else np.asarray(prefixes, dtype=np.float32) @ rotation.T

    def save(self, folder: str | os.PathLike) -> dict[str, Any]:
        """Write the rotations to ``binary_rotations.safetensors`` in ``folder``; returns the JSON part for
        ``matryoshka_config.json``."""
        from safetensors.numpy import save_file

        if self.rotations:
            save_file(
                {str(d): np.ascontiguousarray(r) for d, r in self.rotations.items()},
                str(Path(folder) / BINARY_ROTATIONS_NAME),
            )
        return {
            "method": "prefix-rotation",
            "rotated_dims": sorted(self.rotations, reverse=True),
            "file": BINARY_ROTATIONS_NAME if self.rotations else None,
            "recall_at_10": {str(d): r for d, r in self.recall.items()},
        }

    @classmethod
    def load(cls, folder: str | os.PathLike, data: dict[str, Any]) -> BinaryCalibration:
        """Read what :meth:`save` wrote (``data`` is its JSON part)."""
        if data.get("method") != "prefix-rotation":
            raise ValueError(f"Unknown binary calibration method {data.get('method')!r}: expected 'prefix-rotation'.")
        rotations = {}
        if data.get("rotated_dims"):
            from safetensors.numpy import load_file

            path = Path(folder) / (data.get("file") or BINARY_ROTATIONS_NAME)
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path} is missing: matryoshka_config.json says dims {data['rotated_dims']} "
                    "take rotated binary codes. Copy it from the training output."
                )
            rotations = {int(d): r for d, r in load_file(str(path)).items()}
        recall = {int(d): r for d, r in (data.get("recall_at_10") or {}).items()}
        return cls(rotations=rotations, recall=recall)


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


def rescore_binary(
    queries: np.ndarray,
    codes: np.ndarray,
    k: int = RESCORE_K,
    rescore_with: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Scores ``(Q, N)`` of float queries against +-1 document codes: the ``k`` documents nearest in Hamming
    distance to each query's own code, rescored by ``query . code``, rank above all others (which keep their
    Hamming order).

    Args:
        queries: ``(Q, dim)`` float queries (unit rows) or, for symmetric tasks, +-1 codes (then this is Hamming).
        codes: ``(N, dim)`` +-1 document codes from :func:`binary_codes`.
        k: shortlist length per query.
        rescore_with: ``(query_vectors, document_vectors)``, ``(Q, d)`` and ``(N, d)``: rescore the shortlist by
            their cosine instead (e.g. the float query against the documents' int8 codes, dequantised); the
            shortlist still comes from the codes.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> docs = truncate_numpy(rng.normal(size=(50, 16)).astype(np.float32), 16)
        >>> scores = rescore_binary(docs[:2], binary_codes(docs), k=5)
        >>> scores.argmax(axis=1).tolist()  # each document finds itself
        [0, 1]
    """
    queries = np.asarray(queries, dtype=np.float32)
    codes = np.asarray(codes, dtype=np.float32)
    dim = codes.shape[1]
    hamming = np.where(queries > 0, 1.0, -1.0).astype(np.float32) @ codes.T / dim  # (Q, N) in [-1, 1]
    scores = hamming - 3.0  # below every rescored score
    k = min(k, codes.shape[0])
    shortlist = np.argpartition(-hamming, k - 1, axis=1)[:, :k]  # (Q, k)
    if rescore_with is None:
        rescored = np.einsum("qd,qkd->qk", queries, codes[shortlist]) / np.sqrt(dim)  # (Q, k) in [-1, 1]
    else:
        query_vectors, doc_vectors = (np.asarray(x, dtype=np.float32) for x in rescore_with)
        query_vectors = query_vectors / np.maximum(np.linalg.norm(query_vectors, axis=1, keepdims=True), 1e-12)
        doc_norms = np.maximum(np.linalg.norm(doc_vectors, axis=1), 1e-12)
        rescored = np.einsum("qd,qkd->qk", query_vectors, doc_vectors[shortlist]) / doc_norms[shortlist]
    np.put_along_axis(scores, shortlist, rescored, axis=1)
    return scores


__all__ = [
    "BINARY_ROTATIONS_NAME",
    "BinaryCalibration",
    "INT8_QUANTILE",
    "RESCORE_K",
    "Int8Calibration",
    "binary_codes",
    "int8_per_axis",
    "prefix_rotation",
    "rescore_binary",
    "shells",
]
