"""Serving a Matryoshka model at a small dimension: unit-length truncated vectors, and what a saved model records.

sentence-transformers already truncates (``SentenceTransformer(path, truncate_dim=64)`` or
``encode(texts, truncate_dim=64)``), but a model that ends in a ``Normalize`` module normalises *before* the cut, so
its truncated vectors are shorter than 1 and a dot-product index would score them wrongly. ``encode`` renormalises
after truncating when asked to (``normalize_embeddings=True``); :func:`encode_truncated` always asks. Written here:
that default, and :func:`matryoshka_info`, which gathers what ``matryoshka-st info`` prints from a model folder
without loading the weights.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from numbers import Integral
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sentence_transformers import SentenceTransformer

from matryoshka_st.dims import full_embedding_dim
from matryoshka_st.metadata import read_matryoshka_config
from matryoshka_st.readers import check_model_folder

if TYPE_CHECKING:
    from matryoshka_st.quantization import BinaryCalibration


def encode_truncated(
    model: SentenceTransformer, texts: str | Sequence[str], dim: int, **encode_kwargs: Any
) -> np.ndarray:
    """Embeddings cut to their first ``dim`` coordinates and scaled back to unit length: ``(N, dim)``.

    Use these in a dot-product (inner-product) index. The model's own ``truncate_dim`` is overridden by ``dim``.

    Args:
        model: a sentence-transformers model, ideally trained with ``MatryoshkaLoss`` at ``dim``.
        texts: one text or a list of texts.
        dim: the number of leading coordinates to keep, at most the model's full dimension.
        encode_kwargs: passed to ``model.encode`` (e.g. ``batch_size``, ``prompt_name``, ``convert_to_tensor``).

    Returns:
        A float32 array of unit-length rows (a tensor with ``convert_to_tensor=True``); one row for a single text.

    Raises:
        ValueError: when ``dim`` is not a positive integer or exceeds the model's full dimension.

    Example:
        >>> from sentence_transformers import SentenceTransformer
        >>> model = SentenceTransformer("output/matryoshka-minilm/final")  # doctest: +SKIP
        >>> vectors = encode_truncated(model, ["a cat on a mat", "a dog in a fog"], dim=64)  # doctest: +SKIP
        >>> vectors.shape, np.linalg.norm(vectors, axis=1)  # doctest: +SKIP
        ((2, 64), array([1., 1.], dtype=float32))
    """
    if isinstance(dim, bool) or not isinstance(dim, Integral) or dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim!r}.")
    full_dim = full_embedding_dim(model)
    if full_dim is not None and dim > full_dim:
        raise ValueError(f"dim {dim} exceeds the model's embedding dimension {full_dim}: use a dim <= {full_dim}.")
    for key in ("truncate_dim", "normalize_embeddings"):
        if key in encode_kwargs:
            raise ValueError(f"encode_truncated sets {key} itself; pass dim={dim} instead of {key}.")
    # encode truncates first and normalises after, whatever modules the model ends with
    return model.encode(texts, truncate_dim=int(dim), normalize_embeddings=True, **encode_kwargs)


def encode_codes(
    model: SentenceTransformer,
    folder: str | os.PathLike,
    texts: str | Sequence[str],
    dim: int,
    precision: str,
    **encode_kwargs: Any,
) -> np.ndarray:
    """The codes a model trained by ``matryoshka-st train`` is meant to be served with at ``dim``.

    ``int8``: symmetric codes ``(N, dim)`` with the per-shell scales saved in ``folder``'s
    ``matryoshka_config.json`` (score by the dot product of ``calibration.dequantize(codes, dim)``, or of the codes
    times the scales); ``binary``: packed sign bits ``(N, ceil(dim / 8))`` uint8, taken after the prefix rotation the
    folder saved for ``dim`` where it saved one (score by Hamming distance, e.g. FAISS ``IndexBinaryFlat``).

    Raises:
        ValueError: on another precision, or when ``folder`` saved no int8 scales for ``dim``.

    Example:
        >>> model = SentenceTransformer("output/matryoshka-minilm/final")  # doctest: +SKIP
        >>> encode_codes(model, "output/matryoshka-minilm/final", ["a cat"], dim=256, precision="binary").shape  # doctest: +SKIP
        (1, 32)
    """
    from matryoshka_st.quantization import Int8Calibration

    if precision not in ("int8", "binary"):
        raise ValueError(f"precision must be 'int8' or 'binary', got {precision!r}.")
    config = read_matryoshka_config(folder)
    prefixes = np.atleast_2d(encode_truncated(model, texts, dim, convert_to_numpy=True, **encode_kwargs))
    if precision == "int8":
        saved = config.int8_calibration if config is not None else None
        calibration = Int8Calibration.from_dict(saved) if saved else None
        if calibration is None or dim not in calibration.scales:
            raise ValueError(
                f"{folder} has no int8 scales for dim {dim} (matryoshka_config.json, int8_calibration): use a "
                "trained dim, or sentence_transformers.quantization.quantize_embeddings with your own calibration."
            )
        return calibration.quantize(prefixes, dim)
    calibration = load_binary_calibration(folder)
    if calibration is not None:
        prefixes = calibration.rotate(prefixes, dim)
    return np.packbits(prefixes > 0, axis=-1)


def load_binary_calibration(folder: str | os.PathLike) -> BinaryCalibration | None:
    """The sign-bit rotations ``matryoshka-st train`` saved in ``folder`` (``matryoshka_config.json``'s
    ``binary_calibration`` and ``binary_rotations.safetensors``), or ``None`` for a folder without them or a Hub id.

    Example:
        >>> from matryoshka_st._bundled import bundled_model_path
        >>> load_binary_calibration(bundled_model_path()) is None  # a plain sentence-transformers model
        True
    """
    from matryoshka_st.quantization import BinaryCalibration

    if not os.path.isdir(folder):
        return None
    config = read_matryoshka_config(folder)
    if config is None or not config.binary_calibration:
        return None
    return BinaryCalibration.load(folder, config.binary_calibration)


def is_sentence_transformers_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder saved by sentence-transformers (it holds ``modules.json``)."""
    return os.path.isfile(os.path.join(path, "modules.json"))


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def matryoshka_info(path: str | os.PathLike) -> dict[str, Any]:
    """What a saved model records about its Matryoshka dims, read from its folder without loading the weights.

    Args:
        path: a model folder saved by ``matryoshka-st train`` (or any sentence-transformers model folder), or a
            Hub id, whose JSON files (not the weights) are then downloaded.

    Returns:
        A dict with ``path``, ``matryoshka`` (whether ``matryoshka_config.json`` is present), ``dims`` (largest
        first), ``weights``, ``full_dim``, ``recommended_truncate_dim``, ``recommendation`` (the metric, threshold
        and scores it was chosen from, or ``None``), ``loss``, ``recipe``, ``int8_scales_dims`` (the dims with saved
        int8 scales, or ``None``), ``binary_rotated_dims`` (the dims whose binary codes take a saved rotation), ``default_truncate_dim`` (the ``truncate_dim`` the
        model loads with, usually ``None``) and ``ends_with_normalize`` (truncated vectors then need renormalising).

    Raises:
        FileNotFoundError: when ``path`` is neither a folder nor a Hub model that can be fetched.
        ValueError: when the folder is not a sentence-transformers model (no ``modules.json``), or a local folder
            lacks a file it needs to load (see :func:`matryoshka_st.readers.check_model_folder`).

    Example:
        >>> info = matryoshka_info("output/matryoshka-minilm/final")  # doctest: +SKIP
        >>> info["dims"], info["recommended_truncate_dim"]  # doctest: +SKIP
        ([384, 256, 128, 64, 32], 128)
    """
    folder = Path(path)
    local = folder.is_dir()
    if not local:
        folder = _hub_json_files(str(path))
    if not is_sentence_transformers_folder(folder):
        raise ValueError(
            f"{str(folder)!r} is not a sentence-transformers model folder: it has no modules.json. Pass the folder "
            "that `matryoshka-st train` saved (e.g. output/matryoshka-minilm/final) or SentenceTransformer.save()."
        )
    if local:  # a Hub snapshot here holds only the JSON files
        check_model_folder(folder)
    modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
    last_type = modules[-1].get("type", "") if modules else ""
    st_config = _read_json(folder / "config_sentence_transformers.json")
    config = read_matryoshka_config(folder)
    info: dict[str, Any] = {
        "path": str(path),
        "matryoshka": config is not None,
        "dims": None,
        "weights": None,
        "full_dim": _full_dim_from_modules(folder, modules),
        "recommended_truncate_dim": None,
        "recommendation": None,
        "loss": None,
        "recipe": None,
        "int8_scales_dims": None,
        "binary_rotated_dims": None,
        "default_truncate_dim": st_config.get("truncate_dim"),
        "ends_with_normalize": last_type.rsplit(".", 1)[-1] == "Normalize",
    }
    if config is not None:
        info.update(
            dims=list(config.matryoshka_dims),
            weights=list(config.matryoshka_weights),
            full_dim=config.full_dim or info["full_dim"],
            recommended_truncate_dim=config.recommended_truncate_dim,
            recommendation=config.recommendation,
            loss=config.loss,
            recipe=config.recipe,
            int8_scales_dims=sorted(map(int, config.int8_calibration["scales"]), reverse=True)
            if config.int8_calibration
            else None,
            binary_rotated_dims=config.binary_calibration.get("rotated_dims") if config.binary_calibration else None,
        )
    return info


def _hub_json_files(name: str) -> Path:
    """The JSON files of a Hub model (configs, no weights), downloaded to or found in the local cache."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError

    looks_like_path = name.startswith((".", "/", "~")) or os.sep in name.replace("/", "", 1)
    if looks_like_path or name.count("/") != 1:
        raise FileNotFoundError(f"Model folder {name!r} does not exist (expected a saved model folder or a Hub id).")
    try:
        return Path(snapshot_download(name, allow_patterns=["*.json", "*/*.json"]))
    except (HFValidationError, OSError) as error:  # offline, unknown repo, no cache: all OSError subclasses
        raise FileNotFoundError(
            f"{name!r} is not a local folder and its files could not be fetched from the Hugging Face Hub "
            f"({type(error).__name__}: {error})."
        ) from error


def _full_dim_from_modules(folder: Path, modules: list[dict[str, Any]]) -> int | None:
    """The output size named by the last module config that states one (Pooling, Dense, ...)."""
    for module in reversed(modules):
        for name in ("config.json", "sentence_bert_config.json"):
            config = _read_json(folder / module.get("path", "") / name) if module.get("path") else {}
            for key in ("embedding_dimension", "word_embedding_dimension", "out_features"):
                if isinstance(config.get(key), int):
                    return config[key]
    return None


__all__ = [
    "encode_codes",
    "encode_truncated",
    "is_sentence_transformers_folder",
    "load_binary_calibration",
    "matryoshka_info",
]
