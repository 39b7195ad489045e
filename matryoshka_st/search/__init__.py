"""Funnel search over Matryoshka embeddings: shortlist with a short prefix, rerank with the full vector.

Needs FAISS: ``pip install 'matryoshka_st[search]'``.
"""

from __future__ import annotations

from matryoshka_st.search.funnel import FunnelIndex, MemoryReport, validate_stages

__all__ = ["FunnelIndex", "MemoryReport", "validate_stages"]
