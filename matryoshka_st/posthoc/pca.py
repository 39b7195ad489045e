"""PCA rotation: make an encoder's embeddings truncatable without training, by reordering their coordinates.

An orthogonal rotation ``R`` whose rows are the principal directions of a sample of embeddings, sorted by
decreasing variance, puts the directions that spread the data most into the first coordinates, so a prefix keeps as
much of each embedding's structure as any ``d`` orthogonal directions can. Because ``R`` is orthogonal and has no
bias, ``cos(Rx, Ry) == cos(x, y)``: at full dimension nothing changes.

The rotation is fitted on the (by default centred) covariance of the embeddings, but the module applies only
``R``: shifting by the mean as well would change cosine similarities. It is stored as a plain
sentence-transformers ``Dense`` module (no bias, identity activation), so the rotated model loads with a bare
``SentenceTransformer(path)`` -- no ``trust_remote_code`` and no ``matryoshka_st`` needed to use it -- and works with
``truncate_dim``. What this module adds to numpy/sentence-transformers is only the fit (a symmetric eigensolve in
float64 with a deterministic sign per axis) and the placement of that ``Dense`` in a model.

Example:
    >>> from sentence_transformers import SentenceTransformer
    >>> from matryoshka_st.posthoc import add_pca_rotation
    >>> model = SentenceTransformer("sentence-transformers/all-MiniLM-L6-v2")
    >>> model = add_pca_rotation(model, texts=my_texts)  # a few thousand texts of the target domain
    >>> model.save("minilm-pca")
    >>> SentenceTransformer("minilm-pca", truncate_dim=64).encode(["hello"]).shape
    (1, 64)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Dense, Normalize
from torch import nn

from matryoshka_st.dims import at_full_size, full_embedding_dim

logger = logging.getLogger(__name__)


def check_embeddings(embeddings: np.ndarray, name: str = "embeddings", dim: int | None = None) -> np.ndarray:
    """``embeddings`` as a finite float32 array of shape ``(N, D)`` (``D == dim`` when given), else ``ValueError``."""
    if isinstance(embeddings, torch.Tensor):
        embeddings = embeddings.detach().cpu().numpy()
    array = np.asarray(embeddings)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array of shape (num_texts, dim), got shape {array.shape}.")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise ValueError(f"{name} must hold real numbers, got dtype {array.dtype}.")
    if len(array) == 0:
        raise ValueError(f"{name} is empty: pass at least a few hundred embeddings to fit on.")
    if dim is not None and array.shape[1] != dim:
        raise ValueError(f"{name} have dimension {array.shape[1]}, but {dim} was expected (the model's output size).")
    array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contain NaN or infinite values: drop or re-encode those rows.")
    return array


def fit_pca_rotation(embeddings: np.ndarray, center: bool = True) -> np.ndarray:
    """An orthogonal ``(D, D)`` matrix whose rows are the principal axes of ``embeddings``, by decreasing variance.

    Apply it as ``embeddings @ rotation.T``. Each axis' sign is fixed so that its largest-magnitude entry is positive
    (as scikit-learn's ``svd_flip`` does), so the same data always gives the same rotation.

    Args:
        embeddings: ``(N, D)`` array of embeddings (float32 or float64), e.g. ``model.encode(texts)``.
        center: order the axes by variance around the mean (PCA). ``False`` orders them by the uncentred second
            moment, which puts the mean direction first (useful when embeddings share a large common component
            that should survive truncation).

    Returns:
        ``(D, D)`` float32 orthogonal matrix.

    Example:
        >>> rotation = fit_pca_rotation(np.random.randn(1000, 64))
        >>> np.allclose(rotation @ rotation.T, np.eye(64), atol=1e-5)
        True
    """
    array = check_embeddings(embeddings).astype(np.float64)
    n, d = array.shape
    if n < 2:
        raise ValueError(f"Need at least 2 embeddings to fit a rotation, got {n}.")
    if n < d:
        logger.warning(
            "Fitting a %d-dimensional rotation on only %d embeddings: the last %d axes are arbitrary. "
            "Use at least a few times %d texts.",
            d,
            n,
            d - n + 1,
            d,
        )
    if center:
        array = array - array.mean(axis=0, keepdims=True)
    covariance = array.T @ array / n  # (D, D)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)  # ascending; columns are axes
    order = np.argsort(eigenvalues)[::-1]
    axes = eigenvectors[:, order].T  # (D, D), rows = axes by decreasing variance
    signs = np.sign(axes[np.arange(d), np.abs(axes).argmax(axis=1)])
    axes *= np.where(signs == 0, 1.0, signs)[:, None]
    return axes.astype(np.float32)


def rotation_module(rotation: np.ndarray) -> Dense:
    """A sentence-transformers ``Dense`` module (no bias, identity activation) computing ``x @ rotation.T``.

    Raises:
        ValueError: if ``rotation`` is not square or not orthogonal (then it would change cosine similarities).
    """
    rotation = np.asarray(rotation, dtype=np.float32)
    if rotation.ndim != 2 or rotation.shape[0] != rotation.shape[1]:
        raise ValueError(f"rotation must be a square (D, D) matrix, got shape {rotation.shape}.")
    error = np.abs(rotation.astype(np.float64) @ rotation.T.astype(np.float64) - np.eye(len(rotation))).max()
    if error > 1e-4:
        raise ValueError(
            f"rotation is not orthogonal (max |R R^T - I| = {error:.2g}): it would change cosine similarities. "
            "Pass the output of fit_pca_rotation."
        )
    dim = rotation.shape[0]
    return Dense(
        dim, dim, bias=False, activation_function=nn.Identity(), init_weight=torch.from_numpy(rotation.copy())
    )


def encode_full(
    model: SentenceTransformer, texts: Sequence[str], batch_size: int = 32, show_progress_bar: bool | None = None
) -> np.ndarray:
    """Encode ``texts`` at the model's full output size, even when the model has ``truncate_dim`` set."""
    if isinstance(texts, str) or not all(isinstance(text, str) for text in texts):
        raise ValueError("texts must be a list of strings.")
    if len(texts) == 0:
        raise ValueError("texts is empty: pass the texts (a few thousand of the target domain) to fit on.")
    with at_full_size(model):
        embeddings = model.encode(
            list(texts), batch_size=batch_size, show_progress_bar=show_progress_bar, convert_to_numpy=True
        )
    return np.asarray(embeddings, dtype=np.float32)


def insert_before_normalize(model: SentenceTransformer, modules: Sequence[nn.Module]) -> int:
    """Insert ``modules`` in place before the model's final ``Normalize`` (or at the end if it has none); returns the
    index of the first inserted module."""
    index = len(model) - 1 if isinstance(model[-1], Normalize) else len(model)
    for offset, module in enumerate(modules):
        model.insert(index + offset, module)
    return index


def _last_rotation(model: SentenceTransformer) -> Dense | None:
    """The square, bias-free, identity-activation ``Dense`` right before the final ``Normalize`` (or last), if any."""
    index = len(model) - 2 if isinstance(model[-1], Normalize) else len(model) - 1
    module = model[index] if index >= 0 else None
    if (
        isinstance(module, Dense)
        and module.linear.bias is None
        and isinstance(module.activation_function, nn.Identity)
        and module.linear.in_features == module.linear.out_features
    ):
        return module
    return None


def fold_rotation(model: SentenceTransformer, rotation: np.ndarray) -> SentenceTransformer:
    """Compose the orthogonal ``rotation`` (apply as ``x @ rotation.T``) into the model's last rotation ``Dense``, or
    add it as one before ``Normalize``; in place."""
    existing = _last_rotation(model)
    if existing is None:
        insert_before_normalize(model, [rotation_module(rotation).to(model.device)])
        return model
    weight = existing.linear.weight
    with torch.no_grad():
        weight.copy_(torch.as_tensor(rotation, dtype=weight.dtype, device=weight.device) @ weight)
    return model


def add_pca_rotation(
    model: SentenceTransformer,
    texts: Sequence[str] | None = None,
    embeddings: np.ndarray | None = None,
    center: bool = True,
    batch_size: int = 32,
    show_progress_bar: bool | None = None,
    fold: bool = False,
) -> SentenceTransformer:
    """Fit a PCA rotation on the model's embeddings of ``texts`` (or on ``embeddings`` it produced) and add it to
    the model, in place, as a ``Dense`` module before the final ``Normalize`` (or last, without one).

    Full-dimension cosine similarities are unchanged; prefixes (``truncate_dim``) keep the highest-variance
    directions. Also a starting point for Matryoshka fine-tuning: train the returned model as usual.

    Args:
        model: a SentenceTransformer; modified in place and returned.
        texts: texts of the target domain to fit on (a few thousand is plenty; more than the embedding dim).
        embeddings: instead of ``texts``, embeddings this model already produced at full size, ``(N, D)``.
        center: see :func:`fit_pca_rotation`.
        batch_size: encoding batch size.
        show_progress_bar: show a tqdm bar while encoding (``None``: sentence-transformers' default).
        fold: if the model already ends with a rotation (a square, bias-free, identity-activation ``Dense`` before
            its ``Normalize``, e.g. from an earlier call), compose the new rotation into it instead of adding a
            second module.

    Returns:
        The same model, with the rotation inserted.

    Example:
        >>> model = add_pca_rotation(SentenceTransformer("all-MiniLM-L6-v2"), texts=texts)
        >>> model.save("minilm-pca")  # loads with SentenceTransformer("minilm-pca", truncate_dim=64)
    """
    if (texts is None) == (embeddings is None):
        raise ValueError("Pass exactly one of texts (to encode with the model) or embeddings (already encoded).")
    dim = full_embedding_dim(model)
    if texts is not None:
        embeddings = encode_full(model, texts, batch_size=batch_size, show_progress_bar=show_progress_bar)
    embeddings = check_embeddings(embeddings, dim=dim)
    rotation = fit_pca_rotation(embeddings, center=center)
    if fold and _last_rotation(model) is not None:
        fold_rotation(model, rotation)
        logger.info(
            "Composed a %d x %d PCA rotation into the existing one (%d embeddings).", dim, dim, len(embeddings)
        )
        return model
    index = insert_before_normalize(model, [rotation_module(rotation).to(model.device)])
    logger.info("Added a %d x %d PCA rotation fitted on %d embeddings as module %d.", dim, dim, len(embeddings), index)
    return model
