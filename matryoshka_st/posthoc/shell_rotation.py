"""Rotations inside each Matryoshka shell: balanced sign bits without changing any trained prefix.

A PCA rotation (and Matryoshka training) orders coordinates by variance, which is what float prefixes want and what
sign codes do not: Hamming distance weighs every bit the same, so a bit on a low-variance axis counts as much as one
on the leading axis (the reason ITQ, Gong & Lazebnik 2011, rotates before taking signs). Here one orthogonal
rotation per shell ``[d_{k-1}, d_k)`` of the trained dims mixes coordinates only *within* a shell. Every prefix that
ends on a shell boundary then spans the same subspace as before and keeps its norm, so float scores at every
trained dim are unchanged (to float rounding), while inside each shell the variance is spread over the bits.

Two rotations per shell: ``"itq"`` (iterative quantization: alternate ``B = sign(V R)`` and the orthogonal
Procrustes fit of ``R`` to ``B``; fitted on the model's embeddings of domain texts) and ``"hadamard"`` (random signs
times a normalised Hadamard matrix; needs no data, shells of a power-of-two size). The block-diagonal rotation is
composed into the model's own rotation ``Dense`` (or added as one), so ``SentenceTransformer(path).encode`` returns
the rotated space and nothing else is needed to serve it.

Example:
    >>> model = add_pca_rotation(model, texts=texts)
    >>> model = add_shell_rotation(model, dims=[384, 256, 128, 64, 32], texts=texts, method="itq")
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import numpy as np
from scipy.linalg import hadamard
from sentence_transformers import SentenceTransformer

from matryoshka_st.dims import full_embedding_dim
from matryoshka_st.posthoc.pca import check_embeddings, encode_full, fold_rotation
from matryoshka_st.quantization import shells

logger = logging.getLogger(__name__)

SHELL_ROTATIONS = ("itq", "hadamard")


def _itq(block: np.ndarray, iterations: int, rng: np.random.Generator) -> np.ndarray:
    """ITQ on ``block`` ``(N, m)``: an orthogonal ``(m, m)`` ``R`` (apply as ``block @ R``) reducing ``|sign(VR) - VR|``."""
    m = block.shape[1]
    rotation, _ = np.linalg.qr(rng.normal(size=(m, m)))
    for _ in range(iterations):
        codes = np.where(block @ rotation > 0, 1.0, -1.0)
        u, _, vt = np.linalg.svd(block.T @ codes)  # Procrustes: argmax_R tr(R^T V^T B)
        rotation = u @ vt
    return rotation


def _hadamard(m: int, rng: np.random.Generator) -> np.ndarray:
    if m & (m - 1):
        raise ValueError(f"A Hadamard rotation needs shells of a power-of-two size, got a shell of {m} coordinates.")
    return (rng.choice([-1.0, 1.0], size=m)[:, None] * hadamard(m)) / np.sqrt(m)


def fit_shell_rotation(
    embeddings: np.ndarray | None,
    dims: Sequence[int],
    method: Literal["itq", "hadamard"] = "itq",
    iterations: int = 50,
    seed: int = 0,
) -> np.ndarray:
    """A block-diagonal orthogonal ``(D, D)`` matrix, one block per Matryoshka shell; apply as ``x @ rotation.T``.

    Args:
        embeddings: ``(N, D)`` embeddings of domain texts at full size (needed for ``"itq"``; ignored otherwise,
            where ``D`` is then ``max(dims)``).
        dims: the trained dims; their largest is the full size ``D`` and they are the shell boundaries.
        method: ``"itq"`` or ``"hadamard"`` (see the module docstring).
        iterations: ITQ iterations per shell.
        seed: the random start of ITQ and the signs of the Hadamard rotation.
    """
    if method not in SHELL_ROTATIONS:
        raise ValueError(f"Unknown shell rotation {method!r}: use one of {list(SHELL_ROTATIONS)}.")
    full = max(dims)
    if method == "itq":
        if embeddings is None:
            raise ValueError("ITQ is fitted on embeddings: pass the model's embeddings of a few thousand texts.")
        embeddings = check_embeddings(embeddings, dim=full).astype(np.float64)
    rng = np.random.default_rng(seed)
    rotation = np.eye(full)
    for start, end in shells(dims, full):
        if end - start < 2:
            continue
        if method == "itq":
            block = _itq(embeddings[:, start:end], iterations, rng)  # x_block @ block
        else:
            block = _hadamard(end - start, rng)
        rotation[start:end, start:end] = block.T  # rows act on x: (x @ rotation.T)[start:end] = x_block @ block
    return rotation.astype(np.float32)


def add_shell_rotation(
    model: SentenceTransformer,
    dims: Sequence[int],
    texts: Sequence[str] | None = None,
    embeddings: np.ndarray | None = None,
    method: Literal["itq", "hadamard"] = "itq",
    seed: int = 0,
    batch_size: int = 32,
) -> SentenceTransformer:
    """Fit :func:`fit_shell_rotation` on the model's embeddings of ``texts`` (or on ``embeddings``) and compose it
    into the model's last rotation ``Dense`` (added before ``Normalize`` when there is none), in place.

    Float scores of every prefix that ends on one of ``dims`` are unchanged.
    """
    dim = full_embedding_dim(model)
    if dim is not None and max(dims) != dim:
        raise ValueError(f"The largest of dims {sorted(dims)} must be the model's dimension {dim}.")
    if method == "itq" and (texts is None) == (embeddings is None):
        raise ValueError("Pass exactly one of texts (to encode with the model) or embeddings (already encoded).")
    if method == "itq" and texts is not None:
        embeddings = encode_full(model, texts, batch_size=batch_size)
    fold_rotation(model, fit_shell_rotation(embeddings, dims, method=method, seed=seed))
    logger.info("Composed a %s rotation inside the shells of %s into the model.", method, sorted(dims, reverse=True))
    return model


__all__ = ["SHELL_ROTATIONS", "add_shell_rotation", "fit_shell_rotation"]
