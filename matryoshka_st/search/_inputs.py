"""Query and corpus inputs of a funnel index: float matrices (numpy, torch or a memory map) and encoded texts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from matryoshka_st.dims import truncate_numpy

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer


def as_float_matrix(embeddings, name: str) -> np.ndarray:
    if isinstance(embeddings, torch.Tensor):
        embeddings = embeddings.detach().cpu().float().numpy()
    if not isinstance(embeddings, np.ndarray):  # keeps a np.memmap as it is
        embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2:
        raise ValueError(f"{name} must be a 2-d array (num, dim), got shape {embeddings.shape}.")
    if not np.issubdtype(embeddings.dtype, np.floating):
        raise ValueError(f"{name} must be float embeddings, got dtype {embeddings.dtype}.")
    return embeddings


def encode(model: SentenceTransformer, texts: list[str], batch_size: int, show_progress_bar: bool) -> np.ndarray:
    truncate_dim = getattr(model, "truncate_dim", None)
    try:
        model.truncate_dim = None  # the index truncates itself; it needs the full vectors
        return model.encode(
            texts, batch_size=batch_size, show_progress_bar=show_progress_bar, convert_to_numpy=True
        ).astype(np.float32)
    finally:
        model.truncate_dim = truncate_dim


def query_matrix(
    queries,
    model: SentenceTransformer | None,
    batch_size: int,
    show_progress_bar: bool,
    full_dim: int,
    source_dim: int,
) -> np.ndarray:
    """Queries as ``(Q, full_dim)`` unit-length float32: embeddings of dim ``full_dim`` or ``source_dim``, or texts
    encoded with ``model``."""
    if isinstance(queries, str) or (isinstance(queries, Sequence) and queries and isinstance(queries[0], str)):
        if model is None:
            raise ValueError("Text queries need a model: pass model=... or build the index with from_model.")
        queries = encode(
            model, [queries] if isinstance(queries, str) else list(queries), batch_size, show_progress_bar
        )
    queries = as_float_matrix(queries, "queries")
    if queries.shape[1] not in (full_dim, source_dim):
        raise ValueError(
            f"Queries have dim {queries.shape[1]} but the index was built from {source_dim}-dim embeddings "
            f"(full_dim {full_dim}): encode the queries with the same model."
        )
    return truncate_numpy(queries, full_dim)
