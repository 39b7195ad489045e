"""The Matryoshka facts of a saved model, in ``matryoshka_config.json`` next to its other files.

``SentenceTransformer(path)`` ignores the file; :func:`read_matryoshka_config` reads it (why a file of its own:
docs/architecture.md).

Layout (``format_version`` 1)::

    {
      "format_version": 1,
      "matryoshka_dims": [384, 256, 128, 64, 32],      # largest first
      "matryoshka_weights": [1.0, 1.0, 1.0, 1.0, 1.0],
      "full_dim": 384,
      "recommended_truncate_dim": 128,                 # pass to encode(truncate_dim=...) or SentenceTransformer(...)
      "recommendation": {"metric": "...", "threshold": 0.98, "scores": {"384": 0.61, ...}},  # or null
      "loss": "MultipleNegativesRankingLoss",
      "n_dims_per_step": -1,
      "head_mode": "separate",                         # only when the loss has classifier heads
      "recipe": {...},                                 # the training recipe (matryoshka_st.recipes.Recipe)
      "int8_calibration": {"method": "shell-absmax", "quantile": 0.999, "dims": [...],
                           "scales": {"384": [s_0_32, s_32_64, ...], ...}},  # matryoshka_st.quantization
      "binary_calibration": {"method": "prefix-rotation", "rotated_dims": [384, 256],
                             "file": "binary_rotations.safetensors", "recall_at_10": {...}}
    }
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

MATRYOSHKA_CONFIG_NAME = "matryoshka_config.json"
FORMAT_VERSION = 1


@dataclass
class MatryoshkaConfig:
    """What a model was trained for: its nested dims, their weights and the dim we recommend serving."""

    matryoshka_dims: list[int]
    matryoshka_weights: list[float]
    full_dim: int | None = None
    recommended_truncate_dim: int | None = None
    recommendation: dict[str, Any] | None = None
    loss: str | None = None
    n_dims_per_step: int = -1
    head_mode: str | None = None
    recipe: dict[str, Any] | None = None
    int8_calibration: dict[str, Any] | None = None
    binary_calibration: dict[str, Any] | None = None
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        extra = data.pop("extra")
        for optional in ("head_mode", "recipe", "int8_calibration", "binary_calibration"):
            if data[optional] is None:
                data.pop(optional)
        return {**data, **extra}


def write_matryoshka_config(path: str | os.PathLike, config: MatryoshkaConfig) -> str:
    """Write ``matryoshka_config.json`` into the model folder ``path``; returns the file's path."""
    file = os.path.join(path, MATRYOSHKA_CONFIG_NAME)
    with open(file, "w", encoding="utf-8") as handle:
        json.dump(config.to_dict(), handle, indent=2)
        handle.write("\n")
    return file


def read_matryoshka_config(path: str | os.PathLike) -> MatryoshkaConfig | None:
    """Read the Matryoshka metadata of a model folder; ``None`` when the model has none.

    Example:
        ::

            from sentence_transformers import SentenceTransformer
            from matryoshka_st.metadata import read_matryoshka_config

            config = read_matryoshka_config("output/matryoshka-minilm/final")
            model = SentenceTransformer("output/matryoshka-minilm/final", truncate_dim=config.recommended_truncate_dim)
    """
    file = os.path.join(path, MATRYOSHKA_CONFIG_NAME)
    if not os.path.isfile(file):
        return None
    try:
        with open(file, encoding="utf-8") as handle:
            data = json.load(handle)
        if not isinstance(data, dict):
            raise ValueError(f"a JSON {type(data).__name__}, not an object")
        known = {name for name in MatryoshkaConfig.__dataclass_fields__ if name != "extra"}
        return MatryoshkaConfig(
            **{k: v for k, v in data.items() if k in known},
            extra={k: v for k, v in data.items() if k not in known},
        )
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"{file} cannot be read ({error}): it is written by `matryoshka-st train`. Restore it from the "
            "training output, or delete it (the model still loads; its recorded dims are then unknown)."
        ) from None


def matryoshka_config_from_loss(loss: Any, **kwargs: Any) -> MatryoshkaConfig:
    """Describe a ``MatryoshkaLoss``; ``kwargs`` fill the remaining fields (e.g. ``recommended_truncate_dim``)."""
    dims: Sequence[int] = loss.matryoshka_dims
    return MatryoshkaConfig(
        matryoshka_dims=list(dims),
        matryoshka_weights=list(loss.matryoshka_weights),
        full_dim=loss.full_dim,
        loss=type(loss.loss).__name__,
        n_dims_per_step=loss.n_dims_per_step,
        head_mode=loss.head_mode if loss.heads is not None else None,
        **kwargs,
    )
