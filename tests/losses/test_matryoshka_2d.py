"""Matryoshka2dLoss takes MatryoshkaLoss's own arguments as MatryoshkaLoss states them."""

from __future__ import annotations

import pytest
import torch
from sentence_transformers.sentence_transformer import losses as st_losses

from matryoshka_st.losses import Matryoshka2dLoss, MatryoshkaLoss

from ._batches import features


def test_every_matryoshka_option_reaches_the_inner_loss(tiny_model):
    inner = st_losses.MultipleNegativesRankingLoss(tiny_model)
    loss = Matryoshka2dLoss(
        tiny_model, inner, [64, 32, 16], matryoshka_weights=[2, 1, 1], distill_weight=0.5, full_dim_share=0.5
    )
    assert isinstance(loss.loss, MatryoshkaLoss)
    config = loss.get_config_dict()
    assert config["n_dims_per_step"] == 1  # sentence-transformers' 2D default
    assert config["distill_weight"] == 0.5 and config["matryoshka_weights"] == pytest.approx([2.0, 1.0, 1.0])
    texts = ["a cat sat on the mat", "stock markets fell today", "a dog ran in the park"]
    value = loss(features(tiny_model, texts, list(reversed(texts))), None)
    assert value.dim() == 0 and torch.isfinite(value)
    with pytest.raises(ValueError, match="drop log_per_dim"):
        Matryoshka2dLoss(tiny_model, inner, [64, 32], log_per_dim=True)
    with pytest.raises(ValueError, match="distill_weight must be >= 0"):
        Matryoshka2dLoss(tiny_model, inner, [64, 32], distill_weight=-1.0)
