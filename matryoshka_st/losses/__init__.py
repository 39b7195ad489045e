from __future__ import annotations

from matryoshka_st.losses.heads import MatryoshkaHeads, SlicedLinear
from matryoshka_st.losses.matryoshka import MatryoshkaLoss
from matryoshka_st.losses.matryoshka_2d import Matryoshka2dLoss

__all__ = ["Matryoshka2dLoss", "MatryoshkaHeads", "MatryoshkaLoss", "SlicedLinear"]
