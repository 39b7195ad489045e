"""matryoshka_st: Matryoshka Representation Learning for sentence-transformers models."""

from __future__ import annotations

from matryoshka_st.dims import default_dims, truncate
from matryoshka_st.losses import MatryoshkaLoss

__version__ = "0.1.0"

__all__ = ["MatryoshkaLoss", "__version__", "default_dims", "truncate"]
