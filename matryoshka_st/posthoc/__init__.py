"""Matryoshka without retraining the encoder: a PCA rotation and the Matryoshka-Adaptor.

Both make an existing model's (or stored embeddings') prefixes usable as smaller embeddings, and both are saved as
stock sentence-transformers ``Dense`` modules, so the result loads with a plain ``SentenceTransformer(path)`` and
works with ``truncate_dim``.

Example:
    >>> from matryoshka_st.posthoc import adapt
    >>> adapt("all-MiniLM-L6-v2", texts, method="pca", output_dir="minilm-pca")
"""

from __future__ import annotations

from matryoshka_st.posthoc.adaptor import AdaptorConfig, MatryoshkaAdaptor, add_adaptor
from matryoshka_st.posthoc.pca import add_pca_rotation, fit_pca_rotation
from matryoshka_st.posthoc.run import METHODS, adapt

__all__ = [
    "METHODS",
    "AdaptorConfig",
    "MatryoshkaAdaptor",
    "adapt",
    "add_adaptor",
    "add_pca_rotation",
    "fit_pca_rotation",
]
