"""Nested dimension schedules: defaults, validation, and truncate + renormalise.

sentence-transformers truncates (``encode(truncate_dim=...)``) but has no shared helper that validates a whole
schedule against a model or that renormalises after cutting; that is what this module adds.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from numbers import Integral, Real

import numpy as np
import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

MIN_DEFAULT_DIM = 32


def default_dims(full_dim: int, min_dim: int = MIN_DEFAULT_DIM) -> list[int]:
    """The full dimension followed by the powers of two below it, down to ``min_dim``.

    Example:
        >>> default_dims(384)
        [384, 256, 128, 64, 32]
        >>> default_dims(768, min_dim=64)
        [768, 512, 256, 128, 64]
    """
    if full_dim < 1:
        raise ValueError(f"full_dim must be a positive integer, got {full_dim!r}.")
    dims = [full_dim]
    power = 1 << (full_dim.bit_length() - 1)
    if power == full_dim:
        power //= 2
    while power >= min_dim:
        dims.append(power)
        power //= 2
    return dims


def full_embedding_dim(model: SentenceTransformer) -> int | None:
    """The model's untruncated output dimension, ignoring any ``truncate_dim`` set on the model.

    ``SentenceTransformer.get_embedding_dimension`` reports the truncated size, but the training forward pass
    never truncates, so a loss must validate its dims against the real output size.
    """
    with at_full_size(model):
        return model.get_embedding_dimension()


@contextmanager
def at_full_size(model: SentenceTransformer) -> Iterator[SentenceTransformer]:
    """Within the block, ``model`` encodes at its full output size (its ``truncate_dim`` is set back afterwards).

    Example:
        >>> with at_full_size(model):  # doctest: +SKIP
        ...     full = model.encode(texts)
    """
    truncate_dim = getattr(model, "truncate_dim", None)
    model.truncate_dim = None
    try:
        yield model
    finally:
        model.truncate_dim = truncate_dim


def validate_dims(
    dims: Sequence[int],
    full_dim: int | None = None,
    weights: Sequence[float] | None = None,
    name: str = "matryoshka_dims",
) -> tuple[list[int], list[float]]:
    """Check a dimension schedule (and its weights) and return them sorted from largest to smallest dim; ``name``
    is the argument's name in error messages.

    Raises:
        ValueError: on an empty list, non-integers, values < 1, duplicates, dims larger than ``full_dim``,
            or weights that are not one non-negative number per dim (and not all zero).
    """
    if dims is None or isinstance(dims, str | bytes) or len(dims) == 0:
        raise ValueError(
            f"{name} is empty: pass a non-empty list of positive integers, e.g. [384, 256, 128, 64, 32], got {dims!r}."
        )
    bad = [d for d in dims if isinstance(d, bool) or not isinstance(d, Integral)]
    if bad:
        raise ValueError(f"{name} must be positive integers, got {bad!r} in {list(dims)!r}.")
    dims = [int(d) for d in dims]
    non_positive = [d for d in dims if d < 1]
    if non_positive:
        raise ValueError(f"{name} must be positive, got {non_positive!r} in {dims!r}.")
    duplicates = sorted({d for d in dims if dims.count(d) > 1})
    if duplicates:
        raise ValueError(f"{name} has duplicates {duplicates!r} in {dims!r}: list each dimension once.")
    if full_dim is not None:
        too_large = [d for d in dims if d > full_dim]
        if too_large:
            raise ValueError(
                f"{name} {too_large!r} exceed the model's embedding dimension {full_dim}: "
                f"use dims <= {full_dim}, e.g. {default_dims(full_dim)!r}."
            )
        if full_dim not in dims:
            logger.warning(
                "The model's full dimension %d is not in matryoshka_dims %r, so the untruncated embedding is not "
                "trained. Add %d unless you will always serve truncated embeddings.",
                full_dim,
                dims,
                full_dim,
            )
    if weights is None:
        weights = [1.0] * len(dims)
    else:
        if len(weights) != len(dims):
            raise ValueError(
                f"matryoshka_weights has {len(weights)} values but matryoshka_dims has {len(dims)}: "
                "give one weight per dimension."
            )
        bad = [w for w in weights if isinstance(w, bool) or not isinstance(w, Real) or not np.isfinite(w) or w < 0]
        if bad:
            raise ValueError(f"matryoshka_weights must be finite and >= 0, got {bad!r} in {list(weights)!r}.")
        if not any(weights):
            raise ValueError("matryoshka_weights are all zero: at least one dimension must carry weight.")
        weights = [float(w) for w in weights]
    pairs = sorted(zip(dims, weights), key=lambda pair: pair[0], reverse=True)
    return [d for d, _ in pairs], [w for _, w in pairs]


def truncate(embeddings: torch.Tensor, dim: int) -> torch.Tensor:
    """Keep the first ``dim`` coordinates and L2-renormalise: ``(..., D) -> (..., dim)``, in the input's dtype.

    The norm is computed in float32 and the result cast back: in float16 the sum of squares overflows for values
    above ~256 (and underflows for tiny ones), which would turn a valid embedding into zeros or NaN. A zero vector
    stays a zero vector.

    Example:
        >>> truncate(torch.tensor([[3.0, 4.0, 12.0]], dtype=torch.float16), 2)
        tensor([[0.6001, 0.7998]], dtype=torch.float16)
    """
    if dim > embeddings.shape[-1]:
        raise ValueError(f"Cannot truncate embeddings of dimension {embeddings.shape[-1]} to {dim}.")
    cut = embeddings[..., :dim]
    if cut.dtype in (torch.float16, torch.bfloat16):
        return F.normalize(cut.float(), p=2, dim=-1).to(cut.dtype)
    return F.normalize(cut, p=2, dim=-1)


def truncate_numpy(embeddings: np.ndarray, dim: int) -> np.ndarray:
    """:func:`truncate` for numpy arrays, e.g. stored embeddings: ``(N, D) -> (N, dim)``, unit length rows.

    Always computed in and returned as float32, whatever the input dtype (float16 from ``encode(precision=...)`` or a
    half-precision model included): the norm cannot overflow, zero rows stay zero, and FAISS, which only takes
    float32, can index the result directly.
    """
    if dim > embeddings.shape[-1]:
        raise ValueError(f"Cannot truncate embeddings of dimension {embeddings.shape[-1]} to {dim}.")
    cut = np.asarray(embeddings[..., :dim], dtype=np.float32)
    norms = np.linalg.norm(cut, axis=-1, keepdims=True)
    return cut / np.maximum(norms, 1e-12)
