"""Self-distillation across dimensions and the full-dim share: values on hand-made embeddings, then the adapter."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from sentence_transformers.sentence_transformer import losses as st_losses

from matryoshka_st import MatryoshkaLoss
from matryoshka_st.losses.distill import similarity_distillation
from matryoshka_st.losses.paths import loss_path

from ._batches import ANCHORS, NEGATIVES, POSITIVES, features


def _kl_by_hand(anchors, candidates, dim, scale, temperature, skip_self=False):
    """KL(p_full || p_dim) per anchor, averaged, times temperature**2, written out with plain loops; ``skip_self``
    leaves out candidate ``i`` for anchor ``i`` (one column: the anchors are each other's candidates)."""
    total = 0.0
    for i, a in enumerate(anchors):
        others = [c for j, c in enumerate(candidates) if not (skip_self and j == i)]

        def probs(d, a=a, others=others):
            x = a[:d] / a[:d].norm()
            logits = [scale * float(x @ (c[:d] / c[:d].norm())) / temperature for c in others]
            m = max(logits)
            z = sum(math.exp(v - m) for v in logits)
            return [math.exp(v - m) / z for v in logits]

        p, q = probs(a.shape[0]), probs(dim)
        total += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    return total / len(anchors) * temperature**2


def test_values_match_a_hand_computation():
    torch.manual_seed(0)
    anchors, positives = torch.randn(5, 12, dtype=torch.float64), torch.randn(5, 12, dtype=torch.float64)
    terms = similarity_distillation([anchors, positives], [12, 6, 3], temperature=2.0, scale=20.0)
    assert float(terms[12]) == 0.0
    for dim in (6, 3):
        expected = _kl_by_hand(anchors, torch.cat([positives]), dim, 20.0, 2.0)
        assert float(terms[dim]) == pytest.approx(expected, rel=1e-4)
    # hard negatives are candidates too, as in MultipleNegativesRankingLoss
    negatives = torch.randn(5, 12, dtype=torch.float64)
    with_negatives = similarity_distillation([anchors, positives, negatives], [4], scale=10.0)
    expected = _kl_by_hand(anchors, torch.cat([positives, negatives]), 4, 10.0, 1.0)
    assert float(with_negatives[4]) == pytest.approx(expected, rel=1e-4)


def test_zero_when_the_prefix_already_carries_the_geometry():
    # the last coordinates are zero, so the 4-dim prefix has exactly the full cosine similarities
    torch.manual_seed(1)
    anchors = F.pad(torch.randn(6, 4), (0, 4))
    positives = F.pad(torch.randn(6, 4), (0, 4))
    terms = similarity_distillation([anchors, positives], [4, 2])
    assert float(terms[4]) == pytest.approx(0.0, abs=1e-6)
    assert float(terms[2]) > 1e-3


def test_teacher_is_detached_and_the_prefix_gets_the_gradient():
    torch.manual_seed(2)
    anchors = torch.randn(4, 8, requires_grad=True)
    positives = torch.randn(4, 8, requires_grad=True)
    similarity_distillation([anchors, positives], [2])[2].backward()
    # coordinates beyond the prefix only enter through the (detached) teacher: no gradient
    assert torch.all(anchors.grad[:, 2:] == 0) and torch.all(positives.grad[:, 2:] == 0)
    assert anchors.grad[:, :2].abs().sum() > 0


def test_single_column_masks_self_similarity_and_stays_finite():
    torch.manual_seed(3)
    texts = torch.randn(6, 8, requires_grad=True)
    term = similarity_distillation([texts], [3])[3]
    term.backward()
    assert torch.isfinite(term) and float(term.detach()) > 0
    assert torch.isfinite(texts.grad).all()


def test_half_precision_inputs_are_computed_in_float32():
    torch.manual_seed(4)
    anchors, positives = torch.randn(4, 16) * 300, torch.randn(4, 16) * 300  # large values: overflow in fp16 math
    exact = similarity_distillation([anchors, positives], [8])[8]
    half = similarity_distillation([anchors.half(), positives.half()], [8])[8]
    assert half.dtype == torch.float32 and torch.isfinite(half)
    assert float(half) == pytest.approx(float(exact), rel=1e-2)


# ------------------------------------------------------------------------------------------------------- the adapter


def _mnrl(model, **kwargs):
    return MatryoshkaLoss(model, st_losses.MultipleNegativesRankingLoss(model), [64, 32, 16], **kwargs)


def test_adapter_adds_the_weighted_terms_as_components(tiny_model, one_torch_thread):
    batch = features(tiny_model, ANCHORS, POSITIVES, NEGATIVES)
    plain = _mnrl(tiny_model, matryoshka_weights=[1.0, 2.0, 0.5])
    distil = _mnrl(tiny_model, matryoshka_weights=[1.0, 2.0, 0.5], distill_weight=0.7, distill_temperature=2.0)
    torch.manual_seed(0)
    base = plain(batch, None)
    torch.manual_seed(0)
    out = distil(batch, None)
    assert set(out) == {"loss_dim_64", "loss_dim_32", "loss_dim_16", "distill_dim_32", "distill_dim_16"}
    for dim in (64, 32, 16):  # the inner loss's components are unchanged
        assert float(out[f"loss_dim_{dim}"]) == pytest.approx(float(base[f"loss_dim_{dim}"]), abs=1e-6)
    tiny_model.eval()
    with torch.no_grad():
        columns = [tiny_model(f)["sentence_embedding"] for f in batch]
    terms = similarity_distillation(columns, [32, 16], temperature=2.0, scale=20.0)
    assert float(out["distill_dim_32"]) == pytest.approx(2.0 * 0.7 * float(terms[32]), rel=1e-4)
    assert float(out["distill_dim_16"]) == pytest.approx(0.5 * 0.7 * float(terms[16]), rel=1e-4)
    assert distil.get_config_dict()["distill_weight"] == 0.7


def test_cached_loss_matches_the_uncached_one_with_distillation(tiny_model, one_torch_thread):
    import copy

    other = copy.deepcopy(tiny_model)
    tiny_model.eval(), other.eval()  # no dropout: both paths see the same embeddings
    batch = features(tiny_model, ANCHORS, POSITIVES)
    ours = _mnrl(tiny_model, distill_weight=0.5)
    cached = MatryoshkaLoss(
        other,
        st_losses.CachedMultipleNegativesRankingLoss(other, mini_batch_size=2),
        [64, 32, 16],
        distill_weight=0.5,
    )
    a, b = ours(batch, None), cached(features(other, ANCHORS, POSITIVES), None)
    assert sum(float(v) for v in a.values()) == pytest.approx(sum(float(v) for v in b.values()), rel=1e-4)
    sum(a.values()).backward()
    sum(b.values()).backward()
    for (name, p), q in zip(tiny_model.named_parameters(), other.parameters()):
        if p.grad is not None:
            assert torch.allclose(p.grad, q.grad, atol=1e-5, rtol=1e-3), name


def test_replay_path_distils_too(tiny_model, one_torch_thread):
    """On the replay path the term is the dim's weight x distill_weight x the KL of the single column's anchors
    against each other (the diagonal left out), with the default scale 20 (MSELoss has none), computed by hand."""
    # GISTEmbedLoss-like losses take the replay path; MSELoss with teacher labels is the simplest such loss
    assert loss_path(st_losses.MSELoss) == "replay"
    tiny_model.eval()  # no dropout: the test's embeddings are the loss's
    batch = features(tiny_model, ANCHORS)
    with torch.no_grad():
        teacher = tiny_model.encode(ANCHORS, convert_to_tensor=True)
        student = tiny_model(dict(batch[0]))["sentence_embedding"].double()  # (6, 64)
    loss = MatryoshkaLoss(
        tiny_model,
        st_losses.MSELoss(tiny_model),
        [64, 32, 16],
        matryoshka_weights=[1.0, 1.5, 0.5],
        distill_weight=0.7,
        distill_temperature=2.0,
    )
    out = loss(batch, teacher)
    assert set(out) == {"loss_dim_64", "loss_dim_32", "loss_dim_16", "distill_dim_32", "distill_dim_16"}
    for dim, weight in ((32, 1.5), (16, 0.5)):
        expected = weight * 0.7 * _kl_by_hand(student, student, dim, 20.0, 2.0, skip_self=True)
        assert float(out[f"distill_dim_{dim}"]) == pytest.approx(expected, rel=1e-4), dim


@pytest.mark.parametrize(
    ("share", "weights", "expected"),
    [(0.5, None, [1.5, 0.75, 0.75]), (0.25, [2.0, 1.0, 3.0], [1.5, 1.125, 3.375])],
)
def test_full_dim_share_rescales_weights(tiny_model, share, weights, expected):
    loss = _mnrl(tiny_model, matryoshka_weights=weights, full_dim_share=share)
    assert loss.matryoshka_weights == pytest.approx(expected)
    assert sum(loss.matryoshka_weights) == pytest.approx(sum(weights or [1, 1, 1]))
    assert loss.get_config_dict()["full_dim_share"] == share


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"distill_weight": -0.1}, "distill_weight must be >= 0"),
        ({"distill_weight": float("nan")}, "distill_weight must be a finite number"),
        ({"distill_temperature": 0}, "distill_temperature must be > 0"),
        ({"full_dim_share": 1.0}, r"full_dim_share must be in \(0, 1\)"),
        ({"full_dim_share": "half"}, "full_dim_share must be a number"),
    ],
)
def test_bad_recipe_arguments(tiny_model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _mnrl(tiny_model, **kwargs)


def test_full_dim_share_needs_the_full_dim(tiny_model):
    with pytest.raises(ValueError, match="needs the full dimension 64"):
        MatryoshkaLoss(tiny_model, st_losses.MultipleNegativesRankingLoss(tiny_model), [32, 16], full_dim_share=0.5)


def test_defaults_are_the_reference_behaviour(tiny_model):
    loss = _mnrl(tiny_model)
    assert loss.distill_weight == 0 and loss.full_dim_share is None
    assert "distill_weight" not in loss.get_config_dict()
