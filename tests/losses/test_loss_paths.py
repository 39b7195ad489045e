"""Every loss class sentence-transformers exports is classified: a new upstream loss cannot silently take a path."""

from __future__ import annotations

import inspect

import pytest
from sentence_transformers.sentence_transformer import losses as st_losses
from torch import nn

from matryoshka_st.losses.paths import loss_path

EMBEDDINGS = {
    "AnglELoss",
    "BatchAllTripletLoss",
    "BatchHardSoftMarginTripletLoss",
    "BatchHardTripletLoss",
    "BatchSemiHardTripletLoss",
    "CoSENTLoss",
    "ContrastiveLoss",
    "CosineSimilarityLoss",
    "DistillKLDivLoss",
    "MarginMSELoss",
    "MultipleNegativesRankingLoss",
    "MultipleNegativesSymmetricRankingLoss",
    "OnlineContrastiveLoss",
    "TripletLoss",
}
GRADIENT_CACHE = {
    "CachedGISTEmbedLoss",
    "CachedMultipleNegativesRankingLoss",
    "CachedMultipleNegativesSymmetricRankingLoss",
    "MegaBatchMarginLoss",
}
# forward does more than "embed, then compute_loss_from_embeddings(embeddings, labels)": labels reshaped
# (EmbedDistillLoss, MSELoss), a head (SoftmaxLoss), a guide model (GISTEmbedLoss), no labels passed on
# (GlobalOrthogonalRegularizationLoss), or its own encoder calls
REPLAY = {
    "ContrastiveTensionLoss",
    "ContrastiveTensionLossInBatchNegatives",
    "DenoisingAutoEncoderLoss",
    "EmbedDistillLoss",
    "GISTEmbedLoss",
    "GlobalOrthogonalRegularizationLoss",
    "MSELoss",
    "SoftmaxLoss",
}
# loss modifiers: they wrap a loss themselves and are not inner losses of MatryoshkaLoss
MODIFIERS = {"AdaptiveLayerLoss", "Matryoshka2dLoss", "MatryoshkaLoss"}
EXPECTED = {
    **dict.fromkeys(EMBEDDINGS, "embeddings"),
    **dict.fromkeys(GRADIENT_CACHE, "gradient_cache"),
    **dict.fromkeys(REPLAY, "replay"),
}


def _exported_losses() -> list[str]:
    return sorted(
        name
        for name in st_losses.__all__
        if inspect.isclass(cls := getattr(st_losses, name)) and issubclass(cls, nn.Module)
    )


def test_every_exported_loss_is_classified():
    unclassified = sorted(set(_exported_losses()) - set(EXPECTED) - MODIFIERS)
    assert not unclassified, f"classify these sentence-transformers losses in this test: {unclassified}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_loss_path_by_contract(name):
    assert loss_path(getattr(st_losses, name)) == EXPECTED[name]


def test_subclass_overriding_forward_takes_replay():
    class Custom(st_losses.MultipleNegativesRankingLoss):
        def forward(self, sentence_features, labels):
            return super().forward(sentence_features, labels) * 2

    class Inherited(st_losses.MultipleNegativesRankingLoss):
        pass

    assert loss_path(Custom) == "replay"
    assert loss_path(Inherited) == "embeddings"
