"""Funnel search over Matryoshka embeddings: shortlist with a short prefix, rerank with the full vector.

Needs FAISS: ``pip install 'matryoshka_st[search]'``.
"""

from __future__ import annotations

from matryoshka_st.search.first_stage import FirstStageParams
from matryoshka_st.search.funnel import FunnelIndex, MemoryReport
from matryoshka_st.search.stages import validate_stages
from matryoshka_st.search.tune import SpeedReport, TuneResult, measure_speed

__all__ = [
    "FirstStageParams",
    "FunnelIndex",
    "MemoryReport",
    "SpeedReport",
    "TuneResult",
    "measure_speed",
    "validate_stages",
]
