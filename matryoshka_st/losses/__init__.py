from __future__ import annotations

from matryoshka_st.losses.heads import MatryoshkaHeads, SlicedLinear
from matryoshka_st.losses.matryoshka import Matryoshka2dLoss, MatryoshkaLoss

__all__ = ["Matryoshka2dLoss", "MatryoshkaHeads", "MatryoshkaLoss", "SlicedLinear"]
