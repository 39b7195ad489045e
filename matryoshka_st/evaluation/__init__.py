"""Quality against dimension: mteb evaluation at every Matryoshka dimension and precision, and its report."""

from __future__ import annotations

from matryoshka_st.evaluation.run import RunResult, evaluate

__all__ = ["RunResult", "evaluate"]
