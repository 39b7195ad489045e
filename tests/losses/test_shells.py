"""Shell-by-shell prefix similarities: the values, which inner losses they serve (every upstream loss classified), and
the adapter with them equal to the adapter without them (float32 to 1e-5, bf16 within the mixed-precision bounds)."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
import torch.nn.functional as F
from sentence_transformers.base.modules import Dense
from sentence_transformers.sentence_transformer import losses as st_losses
from sentence_transformers.util import cos_sim, dot_score, pairwise_cos_sim
from torch import nn

import matryoshka_st.losses._shells as shells_module
import matryoshka_st.losses.matryoshka as matryoshka_module
from matryoshka_st import MatryoshkaLoss
from matryoshka_st.dims import truncate
from matryoshka_st.losses._shells import (
    SCALE_FREE_LOSSES,
    ShellSimilarity,
    prefix_cosines,
    prefix_pairwise_cosines,
    reads_only_cosines,
    shell_target,
    similarity_owner,
)
from tests.conftest import TINY_DIM

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
    a, b = torch.randn(4, 32, requires_grad=True), torch.randn(6, 32, requires_grad=True)
    guide, narrow = torch.randn(6, 32), torch.randn(6, 20)  # take no gradient, the same at every dim
    shells = ShellSimilarity(cos_sim, [32, 16, 8])
    calls = {}
    for dim in (32, 16, 8):
        shells.start(dim)
        x, y = truncate(a, dim), truncate(b, dim)
        inputs = [(x, y), (y[:3], x), (guide, guide[1:4]), (narrow, narrow)]
        calls[dim] = [shells(p, q) for p, q in inputs]
        for got, (p, q) in zip(calls[dim], inputs):
            torch.testing.assert_close(got, cos_sim(p, q), rtol=1e-5, atol=1e-6)
    assert sorted(shells.first) == [8, 16, 32]  # the first call at every dim: what the distillation may reuse
    assert shells.calls[1].values == {}  # the smaller dims' similarities are handed out once each
    # inputs without gradients: computed once at their own width, the same output at every later dim
    assert all(calls[dim][2] is calls[32][2] and calls[dim][3] is calls[32][3] for dim in (16, 8))
    assert shells.calls[2].values is None and shells.calls[3].values is None
    # ...unless they changed: written into in place, or another tensor
    shells.start(16)
    shells(truncate(a, 16), truncate(b, 16))
    shells(truncate(b, 16)[:3], truncate(a, 16))
    guide[0, 0] += 1.0
    changed = shells(guide, guide[1:4])
    assert changed is not calls[32][2]
    torch.testing.assert_close(changed, cos_sim(guide, guide[1:4]), rtol=1e-5, atol=1e-6)
    assert shells(narrow.clone(), narrow) is not calls[32][3]
    # a later dim that calls more often than the first one gets those extra calls computed directly
    shells.start(16)
    for _ in range(6):
        shells(truncate(a, 16), truncate(b, 16))


def test_gist_sim_matrix_norms_are_clamped_at_its_eps():
    cosine = nn.CosineSimilarity(dim=-1, eps=1e-3)
    a, b = torch.randn(3, 8), torch.randn(5, 8)
    a[1] *= 1e-5  # a norm under eps: nn.CosineSimilarity divides by eps, not by the norm
    direct = cosine(a.unsqueeze(1), b.unsqueeze(0))
    torch.testing.assert_close(prefix_cosines(a, b, [8], eps=1e-3)[8], direct, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(prefix_cosines(a, b, [8])[8][1], direct[1], atol=1e-4)


# ------------------------------------------------------------------------------------------- which losses it serves

MATRIX = {
    "CachedMultipleNegativesRankingLoss",
    "CachedMultipleNegativesSymmetricRankingLoss",
    "ContrastiveTensionLossInBatchNegatives",
    "GlobalOrthogonalRegularizationLoss",
    "MultipleNegativesRankingLoss",
    "MultipleNegativesSymmetricRankingLoss",
    "GISTEmbedLoss",  # its sim_matrix: nn.CosineSimilarity(dim=-1) broadcast to the cosine matrix
    "CachedGISTEmbedLoss",  # the same sim_matrix
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
    "ContrastiveLoss",
    "ContrastiveTensionLoss",
    "CosineSimilarityLoss",
    "DenoisingAutoEncoderLoss",
    "DistillKLDivLoss",
    "EmbedDistillLoss",
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
    target = shell_target(loss)
    kind = target.kind if target is not None else None
    assert kind == ("matrix" if name in MATRIX else "pairwise" if name in PAIRWISE else None)
    if target is not None:  # the attribute it stands in for is the one the loss reads
        assert target.name == ("sim_matrix" if "GIST" in name else "similarity_fct")


def test_a_dot_product_similarity_keeps_its_own_computation(_tiny_model):
    assert similarity_owner(st_losses.MultipleNegativesRankingLoss(_tiny_model, similarity_fct=dot_score)) is None
    assert shell_target(st_losses.MultipleNegativesRankingLoss(_tiny_model, similarity_fct=dot_score)) is None


def test_a_gist_with_another_similarity_keeps_its_own_computation(_tiny_model):
    loss = st_losses.GISTEmbedLoss(_tiny_model, guide=_tiny_model)
    loss.similarity_fct = nn.PairwiseDistance()  # not a cosine: sim_matrix is no cosine matrix
    assert shell_target(loss) is None
    loss.similarity_fct = nn.CosineSimilarity(dim=0)
    assert shell_target(loss) is None


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
    # the guide as wide as the model (its similarities at the first dim look like the model's) and narrower
    "GIST": (lambda m: st_losses.GISTEmbedLoss(m, guide=copy.deepcopy(m)), [ANCHORS, POSITIVES, NEGATIVES], None),
    "GIST-narrow-guide": (
        lambda m: st_losses.GISTEmbedLoss(m, guide=_narrow_guide(m), margin_strategy="relative"),
        [ANCHORS, POSITIVES],
        None,
    ),
}


def _narrow_guide(model):
    """A frozen guide of width 24: the model with a random projection on top."""
    guide = copy.deepcopy(model)
    torch.manual_seed(5)
    guide.append(Dense(TINY_DIM, 24))
    return guide.requires_grad_(False)


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
    monkeypatch.setattr(matryoshka_module, "shell_target", lambda loss: None)
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
        # a KL term is a difference of log-probabilities: float32 rounding of the logits shows in it absolutely
        absolute = 1e-6 if key.startswith("distill_") else 1e-7
        assert value == pytest.approx(ref_values[key], rel=1e-5, abs=absolute), key
    assert relative_gradient_error(grads, ref_grads) < 1e-5
    assert all(value > 0 for key, value in values.items() if key.startswith("loss_dim_"))  # not trivially equal
    # the shells did serve: the inner loss (not on the GradCache path) and/or the distillation read them
    if case != "CMNRL" and case != "CoSENT":
        assert counts["prefix"] >= 1
    if terms == "recipe":
        # the MNRL family's own first similarities are the distillation's; the others compute theirs
        shared = case in ("MNRL", "MNRL-gte", "MNRL-hardness", "MNSRL")
        assert counts["distill_own"] == (0 if shared else 1)


@pytest.mark.parametrize("guide", ["as wide", "narrow"])
def test_gist_similarities_come_from_the_shells_and_the_guides_once_per_step(_tiny_model, guide, monkeypatch):
    model = copy.deepcopy(_tiny_model)
    inner = st_losses.GISTEmbedLoss(model, guide=copy.deepcopy(model) if guide == "as wide" else _narrow_guide(model))
    widths, computed = [], []
    inner.similarity_fct.register_forward_hook(lambda module, args, output: widths.append(args[0].shape[-1]))
    prefix = shells_module.prefix_cosines
    monkeypatch.setattr(
        shells_module,
        "prefix_cosines",
        lambda a, b, dims, *rest: computed.append(list(dims)) or prefix(a, b, dims, *rest),
    )
    columns = features(model, ANCHORS, POSITIVES, NEGATIVES)
    MatryoshkaLoss(model, inner, [64, 32, 16])([dict(c) for c in columns], None)
    # per step GIST compares anchor-positive, anchor-anchor, positive-positive and anchor-negative, with the model's
    # embeddings and with the guide's. The model's: at every dim from one shell computation at the first dim; the
    # guide's (no gradient): once, at the guide's width, and handed back at the later dims
    guide_width = 64 if guide == "as wide" else 24
    assert sorted(computed) == sorted([[64, 32, 16]] * 4 + [[guide_width]] * 4)
    assert widths == []  # nn.CosineSimilarity's broadcast (R, C, D) products are not formed
    assert "sim_matrix" not in vars(inner)  # the loss's own method is back after the step
    widths.clear()
    st_losses.MatryoshkaLoss(model, inner, [64, 32, 16])([dict(c) for c in columns], None)
    assert len(widths) == 8 * 3  # sentence-transformers' MatryoshkaLoss: all eight at every dim


@pytest.mark.parametrize("case", ["MNRL", "CoSENT", "GIST"])
def test_shells_under_bf16_autocast_stay_within_the_mixed_precision_bounds(_tiny_model, case, one_torch_thread):
    reference, reference_grads = _run(_tiny_model, case, RECIPE_TERMS)
    values, grads = _run(_tiny_model, case, RECIPE_TERMS, dtype=torch.bfloat16)
    for key, value in values.items():
        assert value == pytest.approx(reference[key], rel=LOSS_RTOL, abs=1e-3), key
    assert relative_gradient_error(grads, reference_grads) < GRAD_RTOL


# ------------------------------------------- GradCache losses: every dim in one graph = dim by dim (float32 to 1e-5)

GRADIENT_CACHE = {
    "CMNRL": (
        lambda m: st_losses.CachedMultipleNegativesRankingLoss(m, mini_batch_size=4),
        [ANCHORS, POSITIVES, NEGATIVES],
    ),
    "CMNRL-gte": (
        lambda m: st_losses.CachedMultipleNegativesRankingLoss(
            m, mini_batch_size=4, directions=("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")
        ),
        [ANCHORS, POSITIVES, NEGATIVES],
    ),
    "CMNSRL": (
        lambda m: st_losses.CachedMultipleNegativesSymmetricRankingLoss(m, mini_batch_size=4),
        [ANCHORS, POSITIVES],
    ),
    "CachedGIST": (
        lambda m: st_losses.CachedGISTEmbedLoss(m, guide=copy.deepcopy(m), mini_batch_size=4),
        [ANCHORS, POSITIVES, NEGATIVES],
    ),
}
GRADIENT_CACHE_TERMS = {
    "plain": {},
    "recipe": RECIPE_TERMS,
    "quant": {**RECIPE_TERMS, "quant_weight": 0.5, "quant_precision": ["binary", "int8"]},
}


def _run_gradient_cache(model, case, kwargs, max_bytes, grad=True):
    factory, columns = GRADIENT_CACHE[case]
    model = copy.deepcopy(model)
    model.eval()  # no dropout: both runs see the same network
    loss = MatryoshkaLoss(model, factory(model), [64, 32, 16], **kwargs)
    if max_bytes is not None:
        loss.one_graph_max_bytes = max_bytes
    with torch.set_grad_enabled(grad):
        out = loss(features(model, *columns), None)
    if grad:
        sum(out.values()).backward()
    values = {key: float(value.detach()) for key, value in out.items()}
    grads = {name: p.grad.detach().clone() for name, p in loss.named_parameters() if p.grad is not None}
    return values, grads, loss.last_gradient_cache_path


@pytest.mark.parametrize("terms", sorted(GRADIENT_CACHE_TERMS))
@pytest.mark.parametrize("case", sorted(GRADIENT_CACHE))
def test_gradient_cache_in_one_graph_equals_dim_by_dim(_tiny_model, case, terms, monkeypatch, one_torch_thread):
    kwargs = GRADIENT_CACHE_TERMS[terms]
    with monkeypatch.context() as patch:
        counts = _counting(patch)
        values, grads, path = _run_gradient_cache(_tiny_model, case, kwargs, None)
    ref_values, ref_grads, ref_path = _run_gradient_cache(_tiny_model, case, kwargs, 0)
    assert (path, ref_path) == ("one_graph", "per_dim")
    assert values.keys() == ref_values.keys()
    for key, value in values.items():
        absolute = 1e-6 if key.startswith("distill_") else 1e-7
        assert value == pytest.approx(ref_values[key], rel=1e-5, abs=absolute), key
    assert all(value > 0 for key, value in values.items() if key.startswith("loss_dim_"))
    assert relative_gradient_error(grads, ref_grads) < 1e-5
    assert counts["prefix"] >= 1  # the similarities come from the shells in one graph


@pytest.mark.parametrize("max_bytes", [None, 0])
def test_gradient_cache_evaluation_loss_is_the_same_both_ways(_tiny_model, max_bytes):
    values, _, path = _run_gradient_cache(_tiny_model, "CMNRL", RECIPE_TERMS, max_bytes, grad=False)
    reference, _, _ = _run_gradient_cache(_tiny_model, "CMNRL", RECIPE_TERMS, 0)
    assert path == ("per_dim" if max_bytes == 0 else "one_graph")
    assert values == pytest.approx(reference, rel=1e-5, abs=1e-6)


def test_gradient_cache_takes_one_graph_while_its_estimate_fits(_tiny_model):
    model = copy.deepcopy(_tiny_model)
    loss = MatryoshkaLoss(model, st_losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=4), [64, 32])
    reps = [[torch.zeros(4, 64), torch.zeros(2, 64)], [torch.zeros(6, 64)], [torch.zeros(6, 64)]]
    # four float32 (6 anchors, 12 candidates) matrices per run and direction: 2 runs, 1 direction
    assert loss._one_graph_bytes(reps, 2) == 16 * 2 * 6 * 12
    batch = features(model, ANCHORS, POSITIVES, NEGATIVES)
    estimate = loss._one_graph_bytes([[torch.zeros(len(ANCHORS), 1)]] * 3, 2)
    for max_bytes, path in ((estimate, "one_graph"), (estimate - 1, "per_dim")):
        loss.one_graph_max_bytes = max_bytes
        sum(loss([dict(f) for f in batch], None).values()).backward()
        assert loss.last_gradient_cache_path == path


# ------------------------------------------------ losses that read only cosines: prefixes are not renormalised

SCALE_FREE_CASES = {
    "MNRL": lambda m: st_losses.MultipleNegativesRankingLoss(m),
    "MNRL-gte": lambda m: st_losses.MultipleNegativesRankingLoss(
        m, directions=("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")
    ),
    "MNRL-hardness": lambda m: st_losses.MultipleNegativesRankingLoss(
        m, hardness_mode="in_batch_negatives", hardness_strength=3.0
    ),
    "MNSRL": lambda m: st_losses.MultipleNegativesSymmetricRankingLoss(m),
    "CoSENT": lambda m: st_losses.CoSENTLoss(m),
    "CMNRL": lambda m: st_losses.CachedMultipleNegativesRankingLoss(m, mini_batch_size=4),
    "CMNRL-gte": lambda m: st_losses.CachedMultipleNegativesRankingLoss(
        m, mini_batch_size=4, directions=("query_to_doc", "query_to_query", "doc_to_query", "doc_to_doc")
    ),
    "CMNSRL": lambda m: st_losses.CachedMultipleNegativesSymmetricRankingLoss(m, mini_batch_size=4),
    "CachedGIST": lambda m: st_losses.CachedGISTEmbedLoss(m, guide=m, mini_batch_size=4),
}


@pytest.mark.parametrize("case", sorted(SCALE_FREE_CASES))
def test_scale_free_losses_give_the_same_loss_whatever_each_rows_length(_tiny_model, case):
    """The contract behind SCALE_FREE_LOSSES: their loss on embeddings is their loss on the rows rescaled, so the
    adapter may hand them unnormalised prefixes."""
    loss = SCALE_FREE_CASES[case](_tiny_model)
    assert reads_only_cosines(loss) and type(loss) in SCALE_FREE_LOSSES
    generator = torch.Generator().manual_seed(7)
    columns = [torch.randn(6, 32, generator=generator) for _ in range(2 if case == "CoSENT" else 3)]
    rescaled = [column * (0.05 + 5 * torch.rand(6, 1, generator=generator)) for column in columns]
    labels = torch.rand(6, generator=generator) if case == "CoSENT" else None
    if case == "CachedGIST":  # the model's embeddings rescaled, the guide's as they are
        guide = [list(c.split(4)) for c in columns]
        value, scaled = (loss.calculate_loss([list(c.split(4)) for c in cs], guide) for cs in (columns, rescaled))
    elif hasattr(loss, "calculate_loss"):  # GradCache: the loss over every mini-batch's embeddings (two per column)
        value, scaled = (loss.calculate_loss([list(c.split(4)) for c in cs]) for cs in (columns, rescaled))
    else:
        value, scaled = (loss.compute_loss_from_embeddings(cs, labels) for cs in (columns, rescaled))
    assert float(scaled) == pytest.approx(float(value), rel=1e-5)


def test_other_losses_and_similarities_are_not_scale_free(_tiny_model):
    class WithNormPenalty(st_losses.MultipleNegativesRankingLoss):
        pass  # a subclass may read the embeddings otherwise: only the exact classes count

    assert not reads_only_cosines(WithNormPenalty(_tiny_model))
    assert not reads_only_cosines(st_losses.MultipleNegativesRankingLoss(_tiny_model, similarity_fct=dot_score))
    assert not reads_only_cosines(st_losses.CosineSimilarityLoss(_tiny_model))  # its MSE reads the cosines' values


class _RowScale(nn.Module):
    """Multiplies each row of the sentence embedding by a fixed positive factor (by its position in the batch)."""

    def forward(self, features):
        embedding = features["sentence_embedding"]
        factors = 0.05 + 5 * torch.rand(len(embedding), 1, generator=torch.Generator().manual_seed(len(embedding)))
        return {**features, "sentence_embedding": embedding * factors}


def test_gist_gives_the_same_loss_whatever_each_rows_length(_tiny_model):
    """The contract behind GIST in SCALE_FREE_LOSSES, through its forward: the model's rows rescaled (the guide's as
    they are) give the same loss, so the replay path may hand it unnormalised prefixes."""
    model = copy.deepcopy(_tiny_model).eval()
    guide = copy.deepcopy(model)
    loss = st_losses.GISTEmbedLoss(model, guide=guide)
    assert reads_only_cosines(loss)
    batch = features(model, ANCHORS, POSITIVES, NEGATIVES)
    value = loss([dict(f) for f in batch], None)
    model.append(_RowScale())
    norms = model(dict(batch[0]))["sentence_embedding"].norm(dim=-1)
    assert not torch.allclose(norms, torch.ones_like(norms), atol=0.1)  # the rows are rescaled
    rescaled = loss([dict(f) for f in batch], None)
    assert float(rescaled) == pytest.approx(float(value), rel=1e-5)
