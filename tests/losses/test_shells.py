"""Shell-by-shell prefix similarities: the values, which inner losses they serve (every upstream loss classified), and
the adapter with them equal to the adapter without them (float32 to 1e-5, bf16 within the mixed-precision bounds)."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
import torch.nn.functional as F
from sentence_transformers.sentence_transformer import losses as st_losses
from sentence_transformers.util import cos_sim, dot_score, pairwise_cos_sim
from torch import nn

import matryoshka_st.losses._shells as shells_module
import matryoshka_st.losses.matryoshka as matryoshka_module
from matryoshka_st import MatryoshkaLoss
from matryoshka_st.dims import truncate
from matryoshka_st.losses._shells import (
    ShellSimilarity,
    prefix_cosines,
    prefix_pairwise_cosines,
    shell_kind,
    similarity_owner,
)

from ._batches import ANCHORS, NEGATIVES, POSITIVES, features
from ._mixed_precision import relative_gradient_error
from .test_mixed_precision import GRAD_RTOL, LOSS_RTOL


def test_prefix_cosines_equal_cos_sim_of_the_prefixes_in_value_and_gradient():
    torch.manual_seed(0)
    a = torch.randn(5, 48, requires_grad=True)
    b = torch.randn(7, 48, requires_grad=True)
    dims = [48, 32, 8, 3]
    shelled = prefix_cosines(a, b, dims)
    assert sorted(shelled) == sorted(dims)
    weights = {d: torch.randn(5, 7) for d in dims}
    (grad_a, grad_b) = torch.autograd.grad(sum((shelled[d] * weights[d]).sum() for d in dims), [a, b])
    direct = {d: cos_sim(a[:, :d], b[:, :d]) for d in dims}
    (ref_a, ref_b) = torch.autograd.grad(sum((direct[d] * weights[d]).sum() for d in dims), [a, b])
    for d in dims:
        torch.testing.assert_close(shelled[d], direct[d], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_a, ref_a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_b, ref_b, rtol=1e-5, atol=1e-6)


def test_prefix_pairwise_cosines_and_zero_rows():
    torch.manual_seed(1)
    a, b = torch.randn(6, 16), torch.randn(6, 16)
    a[2] = 0.0  # a zero row has cosine 0, as cos_sim's normalize gives
    values = prefix_pairwise_cosines(a, b, [16, 4])
    for d in (16, 4):
        torch.testing.assert_close(values[d], pairwise_cos_sim(a[:, :d], b[:, :d]), rtol=1e-5, atol=1e-6)
    assert float(values[4][2]) == 0.0
    assert float(prefix_cosines(a, b, [4])[4][2].abs().max()) == 0.0


def test_half_precision_inputs_are_computed_in_float32():
    torch.manual_seed(2)
    a, b = torch.randn(4, 32) * 300, torch.randn(5, 32) * 300  # the squares overflow in float16
    values = prefix_cosines(a.half(), b.half(), [32, 8])
    assert values[8].dtype == torch.float32 and torch.isfinite(values[8]).all()
    torch.testing.assert_close(values[8], cos_sim(a[:, :8], b[:, :8]), rtol=1e-2, atol=1e-2)


def test_shell_similarity_replays_by_call_order_and_computes_what_does_not_match():
    torch.manual_seed(3)
    a, b, guide = torch.randn(4, 32), torch.randn(6, 32), torch.randn(6, 20)
    shells = ShellSimilarity(cos_sim, [32, 16, 8])
    calls = {}
    for dim in (32, 16, 8):
        shells.start(dim)
        x, y = truncate(a, dim), truncate(b, dim)
        calls[dim] = [shells(x, y), shells(y[:3], x), shells(guide, guide)]
        for got, (p, q) in zip(calls[dim], [(x, y), (y[:3], x), (guide, guide)]):
            torch.testing.assert_close(got, cos_sim(p, q), rtol=1e-5, atol=1e-6)
    assert sorted(shells.first) == [8, 16, 32]  # the first call at every dim: what the distillation may reuse
    assert shells.calls[2] is None  # another width: computed directly
    # a later dim that calls more often than the first one gets those extra calls computed directly
    shells.start(16)
    for _ in range(4):
        shells(truncate(a, 16), truncate(b, 16))


# ------------------------------------------------------------------------------------------- which losses it serves

MATRIX = {
    "CachedMultipleNegativesRankingLoss",
    "CachedMultipleNegativesSymmetricRankingLoss",
    "ContrastiveTensionLossInBatchNegatives",
    "GlobalOrthogonalRegularizationLoss",
    "MultipleNegativesRankingLoss",
    "MultipleNegativesSymmetricRankingLoss",
}
PAIRWISE = {"CoSENTLoss"}
# their similarity is not cos_sim / pairwise_cos_sim (dot products, angles, nn.CosineSimilarity, distances), or they
# have none: they keep their own computation
OWN = {
    "AnglELoss",
    "BatchAllTripletLoss",
    "BatchHardSoftMarginTripletLoss",
    "BatchHardTripletLoss",
    "BatchSemiHardTripletLoss",
    "CachedGISTEmbedLoss",
    "ContrastiveLoss",
    "ContrastiveTensionLoss",
    "CosineSimilarityLoss",
    "DenoisingAutoEncoderLoss",
    "DistillKLDivLoss",
    "EmbedDistillLoss",
    "GISTEmbedLoss",
    "MSELoss",
    "MarginMSELoss",
    "MegaBatchMarginLoss",
    "OnlineContrastiveLoss",
    "SoftmaxLoss",
    "TripletLoss",
}
MODIFIERS = {"AdaptiveLayerLoss", "Matryoshka2dLoss", "MatryoshkaLoss"}
SPECIAL_ARGS = {
    "SoftmaxLoss": lambda m: {"sentence_embedding_dimension": 64, "num_labels": 3},
    "GISTEmbedLoss": lambda m: {"guide": m},
    "CachedGISTEmbedLoss": lambda m: {"guide": m},
}


def _exported_losses() -> list[str]:
    return sorted(
        name
        for name in st_losses.__all__
        if inspect.isclass(cls := getattr(st_losses, name)) and issubclass(cls, nn.Module)
    )


def test_every_exported_loss_is_classified():
    unclassified = sorted(set(_exported_losses()) - MATRIX - PAIRWISE - OWN - MODIFIERS)
    assert not unclassified, f"classify these sentence-transformers losses in this test: {unclassified}"


@pytest.mark.parametrize("name", sorted(MATRIX | PAIRWISE | OWN))
def test_shell_kind_by_contract(_tiny_model, name):
    cls = getattr(st_losses, name)
    if name == "DenoisingAutoEncoderLoss":  # builds a decoder from the hub: classified from its signature
        assert "similarity_fct" not in inspect.signature(cls).parameters
        return
    model = copy.deepcopy(_tiny_model)
    loss = cls(model, **SPECIAL_ARGS.get(name, lambda m: {})(model))
    owner = similarity_owner(loss)
    kind = shell_kind(owner.similarity_fct) if owner is not None else None
    assert kind == ("matrix" if name in MATRIX else "pairwise" if name in PAIRWISE else None)


def test_a_dot_product_similarity_keeps_its_own_computation(_tiny_model):
    assert similarity_owner(st_losses.MultipleNegativesRankingLoss(_tiny_model, similarity_fct=dot_score)) is None


# ------------------------------------------------------------------ the adapter: with shells = without (float32)


def _previous_distillation(columns, dims, temperature=1.0, scale=20.0, gather=False):
    """The distillation term as it was computed before shells: every dim's similarities on their own."""

    def logits(dim):
        cols = [truncate(c.float(), dim) if dim is not None else F.normalize(c.float(), dim=-1) for c in columns]
        candidates = torch.cat(cols[1:]) if len(cols) > 1 else cols[0]
        out = scale * cols[0] @ candidates.T
        if len(cols) == 1:
            out = out.masked_fill(torch.eye(len(out), dtype=torch.bool), float("-inf"))
        return out

    with torch.no_grad():
        teacher = F.log_softmax(logits(None) / temperature, dim=-1)
    terms = {}
    for dim in dims:
        student = F.log_softmax(logits(dim) / temperature, dim=-1)
        pointwise = torch.where(
            torch.isfinite(teacher), teacher.exp() * (teacher - student), torch.zeros_like(teacher)
        )
        terms[dim] = pointwise.sum(dim=-1).mean() * temperature**2
    return terms


RECIPE_TERMS = {"distill_weight": 1.0, "distill_temperature": 1.0, "full_dim_share": 0.4}
CASES = {
    "MNRL": (lambda m: st_losses.MultipleNegativesRankingLoss(m), [ANCHORS, POSITIVES, NEGATIVES], None),
    "MNRL-gte": (
        lambda m: st_losses.MultipleNegativesRankingLoss(
            m, directions=("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")
        ),
        [ANCHORS, POSITIVES, NEGATIVES],
        None,
    ),
    "MNRL-hardness": (
        lambda m: st_losses.MultipleNegativesRankingLoss(m, hardness_mode="all_negatives", hardness_strength=5.0),
        [ANCHORS, POSITIVES, NEGATIVES],
        None,
    ),
    "MNSRL": (lambda m: st_losses.MultipleNegativesSymmetricRankingLoss(m), [ANCHORS, POSITIVES], None),
    "CMNRL": (
        lambda m: st_losses.CachedMultipleNegativesRankingLoss(m, mini_batch_size=4),
        [ANCHORS, POSITIVES, NEGATIVES],
        None,
    ),
    "CoSENT": (
        lambda m: st_losses.CoSENTLoss(m),
        [ANCHORS, POSITIVES],
        torch.tensor([0.9, 0.8, 0.1, 0.7, 0.2, 0.6]),
    ),
}


def _run(model, case, kwargs, dtype=None):
    factory, columns, labels = CASES[case]
    model = copy.deepcopy(model)
    model.eval()  # no dropout: both runs see the same network
    loss = MatryoshkaLoss(model, factory(model), [64, 32, 16], **kwargs)
    with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
        out = loss(features(model, *columns), labels)
        total = sum(out.values())
    total.backward()
    values = {key: float(value.detach()) for key, value in out.items()}
    grads = {name: p.grad.detach().clone() for name, p in loss.named_parameters() if p.grad is not None}
    return values, grads


def _without_shells(monkeypatch):
    monkeypatch.setattr(matryoshka_module, "similarity_owner", lambda loss: None)
    monkeypatch.setattr(matryoshka_module, "similarity_distillation", _previous_distillation)


def _counting(monkeypatch):
    counts = {"prefix": 0, "distill_own": 0}
    prefix, own = shells_module.prefix_cosines, matryoshka_module.similarity_distillation

    def counted_prefix(*args, **kwargs):
        counts["prefix"] += 1
        return prefix(*args, **kwargs)

    def counted_own(*args, **kwargs):
        counts["distill_own"] += 1
        return own(*args, **kwargs)

    monkeypatch.setattr(shells_module, "prefix_cosines", counted_prefix)
    monkeypatch.setattr(matryoshka_module, "similarity_distillation", counted_own)
    return counts


@pytest.mark.parametrize("terms", ["plain", "recipe"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_adapter_with_shells_equals_the_previous_path(_tiny_model, case, terms, monkeypatch, one_torch_thread):
    kwargs = RECIPE_TERMS if terms == "recipe" else {}
    with monkeypatch.context() as patch:
        counts = _counting(patch)
        values, grads = _run(_tiny_model, case, kwargs)
    with monkeypatch.context() as patch:
        _without_shells(patch)
        ref_values, ref_grads = _run(_tiny_model, case, kwargs)
    assert values.keys() == ref_values.keys()
    for key, value in values.items():
        assert value == pytest.approx(ref_values[key], rel=1e-5, abs=1e-7), key
    assert relative_gradient_error(grads, ref_grads) < 1e-5
    # the shells did serve: the inner loss (not on the GradCache path) and/or the distillation read them
    if case != "CMNRL" and case != "CoSENT":
        assert counts["prefix"] >= 1
    if terms == "recipe":
        # the MNRL family's own first similarities are the distillation's; the others compute theirs
        shared = case in ("MNRL", "MNRL-gte", "MNRL-hardness", "MNSRL")
        assert counts["distill_own"] == (0 if shared else 1)


@pytest.mark.parametrize("case", ["MNRL", "CoSENT"])
def test_shells_under_bf16_autocast_stay_within_the_mixed_precision_bounds(_tiny_model, case, one_torch_thread):
    reference, reference_grads = _run(_tiny_model, case, RECIPE_TERMS)
    values, grads = _run(_tiny_model, case, RECIPE_TERMS, dtype=torch.bfloat16)
    for key, value in values.items():
        assert value == pytest.approx(reference[key], rel=LOSS_RTOL, abs=1e-3), key
    assert relative_gradient_error(grads, reference_grads) < GRAD_RTOL
