"""``adapt``: load a model, add a PCA rotation or a Matryoshka-Adaptor fitted on texts, save it. The library
function behind ``matryoshka-st adapt``."""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from sentence_transformers import SentenceTransformer

from matryoshka_st._atomic import write_folder_atomically
from matryoshka_st.dims import full_embedding_dim, validate_dims
from matryoshka_st.posthoc.adaptor import add_adaptor, resolve_config
from matryoshka_st.posthoc.pca import add_pca_rotation
from matryoshka_st.readers import check_model_folder

logger = logging.getLogger(__name__)

METHODS = ("pca", "adaptor")


def adapt(
    model_name_or_path: str | SentenceTransformer,
    texts: Sequence[str],
    method: Literal["pca", "adaptor"] = "pca",
    output_dir: str | Path | None = None,
    dims: Sequence[int] | None = None,
    max_texts: int | None = None,
    overwrite: bool = False,
    batch_size: int = 32,
    seed: int = 0,
    show_progress_bar: bool = True,
    **kwargs: Any,
) -> SentenceTransformer:
    """Make a model's embeddings truncatable without training its encoder, and save the result.

    Args:
        model_name_or_path: a model folder, a Hub id, or a loaded SentenceTransformer (modified in place).
        texts: texts of the target domain to fit on (the corpus to be searched, sample queries, ...).
        method: ``"pca"`` (an orthogonal rotation; full-dim similarities unchanged) or ``"adaptor"`` (a trained
            Matryoshka-Adaptor; better prefixes, full-dim similarities approximately kept).
        output_dir: where to save the adapted model (``None``: do not save).
        dims: the nested dimensions, validated against the model; the adaptor is trained on them (PCA orders all
            coordinates and needs none).
        max_texts: fit on a seeded random sample of at most this many texts.
        overwrite: allow writing into a non-empty ``output_dir``.
        batch_size: encoding batch size.
        seed: seeds the text sample and the adaptor.
        show_progress_bar: tqdm bars while encoding and fitting.
        **kwargs: for ``"pca"``: ``center``; for ``"adaptor"``: :class:`~matryoshka_st.posthoc.AdaptorConfig` fields.

    Returns:
        The adapted model.

    Example:
        >>> model = adapt("all-MiniLM-L6-v2", texts, method="adaptor", output_dir="minilm-adaptor", dims=[384, 64])
        >>> SentenceTransformer("minilm-adaptor", truncate_dim=64).encode(["a query"]).shape
        (1, 64)
    """
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}: use one of {', '.join(METHODS)}.")
    if isinstance(texts, str) or not all(isinstance(text, str) for text in texts):
        raise ValueError("texts must be a list of strings.")
    texts = [text for text in texts if text.strip()]
    if not texts:
        raise ValueError("texts has no non-empty text: pass texts of the target domain to fit on.")
    if max_texts is not None:
        if max_texts < 2:
            raise ValueError(f"max_texts must be >= 2, got {max_texts}.")
        if len(texts) > max_texts:
            texts = random.Random(seed).sample(texts, max_texts)
    if output_dir is not None:
        output_dir = Path(output_dir)
        if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())) and not overwrite:
            raise ValueError(
                f"Output folder {str(output_dir)!r} exists and is not empty: choose a new folder or pass overwrite."
            )
    if method == "pca" and set(kwargs) - {"center"}:
        raise ValueError(f"Unknown PCA setting(s) {sorted(set(kwargs) - {'center'})}: only 'center' is accepted.")
    if method == "adaptor":
        kwargs.setdefault("seed", seed)
        resolve_config(None, kwargs)  # unknown or invalid settings fail here, before the model is loaded

    if not isinstance(model_name_or_path, SentenceTransformer):
        check_model_folder(model_name_or_path)
    model = (
        model_name_or_path
        if isinstance(model_name_or_path, SentenceTransformer)
        else SentenceTransformer(model_name_or_path)
    )
    full_dim = full_embedding_dim(model)
    if dims is not None:
        dims = validate_dims(dims, full_dim=full_dim)[0]
    logger.info("Fitting %s on %d texts for a %s-d model.", method, len(texts), full_dim)
    if method == "pca":
        add_pca_rotation(model, texts=texts, batch_size=batch_size, show_progress_bar=show_progress_bar, **kwargs)
    else:
        add_adaptor(
            model, texts=texts, dims=dims, batch_size=batch_size, show_progress_bar=show_progress_bar, **kwargs
        )
    if output_dir is not None:
        # a killed run leaves the old folder or none
        write_folder_atomically(output_dir, lambda folder: model.save_pretrained(str(folder)))
        logger.info("Saved the %s-adapted model to %s.", method, output_dir)
    return model
