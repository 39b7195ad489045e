from __future__ import annotations

import copy
import logging

import pytest
import torch
from datasets import Dataset
from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.sentence_transformer import losses as st_losses

from matryoshka_st import MatryoshkaLoss
from matryoshka_st.dims import truncate
from matryoshka_st.losses import Matryoshka2dLoss

from ._batches import ANCHORS, NEGATIVES, POSITIVES, features

DIMS = [64, 32, 16]
B = len(ANCHORS)


def _pairs(model):
    return features(model, ANCHORS, POSITIVES)


def _triplets(model):
    return features(model, ANCHORS, POSITIVES, NEGATIVES)


def _scored(model):
    return features(model, ANCHORS, POSITIVES), torch.tensor([0.9, 0.8, 0.1, 0.7, 0.2, 0.6])


def _binary(model):
    return features(model, ANCHORS, POSITIVES), torch.tensor([1, 1, 0, 1, 0, 1])


def _classes(model):
    return features(model, ANCHORS + POSITIVES), torch.tensor([0, 1, 2, 3, 4, 5] * 2)


def _teacher(model):
    with torch.no_grad():
        teacher = model.encode(ANCHORS, convert_to_tensor=True) + 0.1
    return features(model, ANCHORS), teacher


def _unit_prefix_teacher(model):
    """Teacher vectors that are unit length at every prefix of DIMS (nothing beyond the smallest dim): there,
    renormalising a cut teacher, as ours does and the reference does not, changes nothing."""
    torch.manual_seed(5)
    teacher = torch.zeros(len(ANCHORS), 64)
    teacher[:, : min(DIMS)] = torch.nn.functional.normalize(torch.randn(len(ANCHORS), min(DIMS)), dim=-1)
    return features(model, ANCHORS), teacher


def _margins(model):
    return _triplets(model), torch.tensor([0.5, 0.3, 0.2, 0.4, 0.1, 0.6])


def _kl_scores(model):
    return _triplets(model), torch.tensor([[0.9, 0.1], [0.8, 0.3], [0.7, 0.2], [0.9, 0.5], [0.6, 0.1], [0.8, 0.2]])


def _nli(model):
    return features(model, ANCHORS, POSITIVES), torch.tensor([0, 1, 2, 0, 1, 2])


def _no_labels(builder):
    return lambda model: (builder(model), None)


# name -> (factory(model) -> inner loss, factory(model) -> (features, labels), supported by the reference)
LOSSES = {
    "MultipleNegativesRankingLoss": (st_losses.MultipleNegativesRankingLoss, _no_labels(_triplets), True),
    "MultipleNegativesSymmetricRankingLoss": (
        st_losses.MultipleNegativesSymmetricRankingLoss,
        _no_labels(_pairs),
        True,
    ),
    "CachedMultipleNegativesRankingLoss": (
        lambda m: st_losses.CachedMultipleNegativesRankingLoss(m, mini_batch_size=4),
        _no_labels(_triplets),
        True,
    ),
    "CachedMultipleNegativesSymmetricRankingLoss": (
        lambda m: st_losses.CachedMultipleNegativesSymmetricRankingLoss(m, mini_batch_size=4),
        _no_labels(_pairs),
        True,
    ),
    "GISTEmbedLoss": (lambda m: st_losses.GISTEmbedLoss(m, guide=copy.deepcopy(m)), _no_labels(_pairs), True),
    "CachedGISTEmbedLoss": (
        lambda m: st_losses.CachedGISTEmbedLoss(m, guide=copy.deepcopy(m), mini_batch_size=4),
        _no_labels(_pairs),
        True,
    ),
    "CoSENTLoss": (st_losses.CoSENTLoss, _scored, True),
    "AnglELoss": (st_losses.AnglELoss, _scored, True),
    "CosineSimilarityLoss": (st_losses.CosineSimilarityLoss, _scored, True),
    "ContrastiveLoss": (st_losses.ContrastiveLoss, _binary, True),
    "OnlineContrastiveLoss": (st_losses.OnlineContrastiveLoss, _binary, True),
    "TripletLoss": (st_losses.TripletLoss, _no_labels(_triplets), True),
    "BatchAllTripletLoss": (st_losses.BatchAllTripletLoss, _classes, True),
    "BatchHardTripletLoss": (st_losses.BatchHardTripletLoss, _classes, True),
    "BatchHardSoftMarginTripletLoss": (st_losses.BatchHardSoftMarginTripletLoss, _classes, True),
    "BatchSemiHardTripletLoss": (st_losses.BatchSemiHardTripletLoss, _classes, True),
    "MegaBatchMarginLoss": (
        lambda m: st_losses.MegaBatchMarginLoss(m, use_mini_batched_version=False),
        _no_labels(_pairs),
        True,
    ),
    "MegaBatchMarginLoss(mini-batched)": (
        lambda m: st_losses.MegaBatchMarginLoss(m, mini_batch_size=4),
        _no_labels(_pairs),
        True,
    ),
    "MSELoss": (st_losses.MSELoss, _teacher, False),
    "MSELoss(unit-prefix teacher)": (st_losses.MSELoss, _unit_prefix_teacher, True),
    "MarginMSELoss": (st_losses.MarginMSELoss, _margins, True),
    "DistillKLDivLoss": (st_losses.DistillKLDivLoss, _kl_scores, True),
    "SoftmaxLoss": (lambda m: st_losses.SoftmaxLoss(m, 64, num_labels=3), _nli, False),
}


def _encoder_params(model):
    return dict(model[0].auto_model.named_parameters())


@pytest.mark.parametrize("name", list(LOSSES))
def test_one_training_step(tiny_model, name):
    inner_factory, batch_factory, _ = LOSSES[name]
    torch.manual_seed(0)
    loss = MatryoshkaLoss(tiny_model, inner_factory(tiny_model), DIMS)
    sentence_features, labels = batch_factory(tiny_model)
    before = {k: v.detach().clone() for k, v in _encoder_params(tiny_model).items()}
    optimizer = torch.optim.SGD(loss.parameters(), lr=0.5)

    out = loss(sentence_features, labels)
    assert sorted(out) == sorted(f"loss_dim_{d}" for d in DIMS)
    total = torch.stack(list(out.values())).sum()
    assert torch.isfinite(total)
    total.backward()
    grads = [p.grad for p in _encoder_params(tiny_model).values() if p.grad is not None]
    assert grads, "no encoder parameter received a gradient"
    assert sum(float(g.abs().sum()) for g in grads) > 0
    optimizer.step()
    changed = [k for k, v in _encoder_params(tiny_model).items() if not torch.equal(v, before[k])]
    assert changed, "the training step did not change the encoder"
    # the forward was restored after the step
    assert "forward" not in tiny_model.__dict__


@pytest.mark.parametrize("name", [n for n, (_, _, supported) in LOSSES.items() if supported])
def test_equals_reference(tiny_model, name):
    """Same model, batch, dims and seed: our summed loss equals sentence-transformers' MatryoshkaLoss."""
    inner_factory, batch_factory, _ = LOSSES[name]
    tiny_model.eval()  # no dropout, so both see identical embeddings
    sentence_features, labels = batch_factory(tiny_model)
    ours = MatryoshkaLoss(tiny_model, inner_factory(tiny_model), DIMS, [1.0, 0.5, 2.0])
    theirs = st_losses.MatryoshkaLoss(tiny_model, inner_factory(tiny_model), DIMS, [1.0, 0.5, 2.0])
    torch.manual_seed(1)
    ours_value = sum(ours(sentence_features, labels).values())
    torch.manual_seed(1)
    theirs_value = theirs(sentence_features, labels)
    assert float(ours_value) == pytest.approx(float(theirs_value), abs=1e-5)


@pytest.mark.parametrize("mode", ["separate", "shared"])
def test_softmax_loss_equals_the_reference_at_each_dim_with_that_dims_head(tiny_model, mode):
    """The reference cannot run SoftmaxLoss on a prefix (its head reads 3 x 64 features); at each dim ours equals
    the reference at that one dim around a SoftmaxLoss whose head is ours for that dim."""
    tiny_model.eval()
    sentence_features, labels = _nli(tiny_model)
    weights = [1.0, 0.5, 2.0]
    ours = MatryoshkaLoss(
        tiny_model, st_losses.SoftmaxLoss(tiny_model, 64, num_labels=3), DIMS, weights, head_mode=mode
    )
    if mode == "separate":  # heads of their own, not slices of the full one (as after training)
        torch.manual_seed(3)
        with torch.no_grad():
            for head in ours.heads.separate.values():
                head.weight.normal_(std=0.5)
                head.bias.normal_(std=0.5)
    out = ours(sentence_features, labels)
    for dim, weight in zip(DIMS, weights):
        inner = st_losses.SoftmaxLoss(tiny_model, dim, num_labels=3)
        head = ours.heads.head(dim)
        with torch.no_grad():
            inner.classifier.weight.copy_(head.weight)
            inner.classifier.bias.copy_(ours.heads.full.bias if mode == "shared" else head.bias)  # shared: one bias
        reference = st_losses.MatryoshkaLoss(tiny_model, inner, [dim], [weight])(sentence_features, labels)
        assert float(out[f"loss_dim_{dim}"]) == pytest.approx(float(reference), abs=1e-5), dim


@pytest.mark.parametrize("name", ["MultipleNegativesRankingLoss", "CachedMultipleNegativesRankingLoss", "CoSENTLoss"])
def test_gradients_equal_reference(tiny_model, name):
    inner_factory, batch_factory, _ = LOSSES[name]
    tiny_model.eval()
    reference_model = copy.deepcopy(tiny_model)
    sentence_features, labels = batch_factory(tiny_model)
    sum(MatryoshkaLoss(tiny_model, inner_factory(tiny_model), DIMS)(sentence_features, labels).values()).backward()
    st_losses.MatryoshkaLoss(reference_model, inner_factory(reference_model), DIMS)(
        sentence_features, labels
    ).backward()
    ours = _encoder_params(tiny_model)
    for key, param in _encoder_params(reference_model).items():
        torch.testing.assert_close(ours[key].grad, param.grad, atol=1e-5, rtol=1e-4)


def test_encoder_runs_once_per_column(tiny_model):
    calls = []
    transformer = tiny_model[0]
    original = transformer.forward
    names = ["MultipleNegativesRankingLoss", "GISTEmbedLoss", "SoftmaxLoss", "CoSENTLoss", "MSELoss"]
    inners = {name: LOSSES[name][0](tiny_model) for name in names}  # before patching: GIST deep-copies its guide

    def counting(features, *args, **kwargs):
        calls.append(features["input_ids"].shape[0])
        return original(features, *args, **kwargs)

    transformer.forward = counting
    for name, inner in inners.items():
        sentence_features, labels = LOSSES[name][1](tiny_model)
        calls.clear()
        MatryoshkaLoss(tiny_model, inner, DIMS)(sentence_features, labels)
        # one forward per column (or fewer: candidate columns may be merged), never one per dim
        assert 1 <= len(calls) <= len(sentence_features), name
        assert sum(calls) == sum(f["input_ids"].shape[0] for f in sentence_features), name


@pytest.mark.parametrize("quant", [False, True])
def test_gist_guide_runs_once_per_column_not_once_per_dim(tiny_model, quant):
    guide = copy.deepcopy(tiny_model)
    calls = []
    original = guide[0].forward

    def counting(features, *args, **kwargs):
        calls.append(features["input_ids"].shape[0])
        return original(features, *args, **kwargs)

    guide[0].forward = counting
    inner = st_losses.GISTEmbedLoss(tiny_model, guide=guide)
    extra = {"quant_weight": 0.5, "quant_precision": "binary"} if quant else {}
    sentence_features = _pairs(tiny_model)
    out = MatryoshkaLoss(tiny_model, inner, DIMS, **extra)(sentence_features, None)
    assert len(out) == len(DIMS) * (2 if quant else 1)
    assert sum(calls) == sum(f["input_ids"].shape[0] for f in sentence_features)  # the sentence-transformers
    # MatryoshkaLoss runs the guide once per dim: the same count times len(DIMS)
    calls.clear()
    st_losses.MatryoshkaLoss(tiny_model, inner, DIMS)(_pairs(tiny_model), None)
    assert sum(calls) == len(DIMS) * sum(f["input_ids"].shape[0] for f in sentence_features)
    assert "forward" not in vars(guide)  # the guide's own forward is back after the step


def test_per_dim_values_are_the_inner_loss_on_truncated_embeddings(tiny_model):
    tiny_model.eval()
    inner = st_losses.MultipleNegativesRankingLoss(tiny_model)
    sentence_features = _pairs(tiny_model)
    out = MatryoshkaLoss(tiny_model, inner, DIMS, [1.0, 2.0, 3.0])(sentence_features, None)
    with torch.no_grad():
        embeddings = [tiny_model(dict(f))["sentence_embedding"] for f in sentence_features]
    for dim, weight in zip(DIMS, [1.0, 2.0, 3.0]):
        expected = weight * inner.compute_loss_from_embeddings([truncate(e, dim) for e in embeddings], None)
        assert float(out[f"loss_dim_{dim}"]) == pytest.approx(float(expected), abs=1e-5)


def test_log_per_dim_false_returns_tensor(tiny_model):
    loss = MatryoshkaLoss(tiny_model, st_losses.MultipleNegativesRankingLoss(tiny_model), DIMS, log_per_dim=False)
    value = loss(_pairs(tiny_model), None)
    assert isinstance(value, torch.Tensor) and value.ndim == 0
    assert set(loss.last_dim_losses) == set(DIMS)
    assert float(value) == pytest.approx(float(sum(loss.last_dim_losses.values())), abs=1e-5)


def test_n_dims_per_step_samples_dims(tiny_model):
    loss = MatryoshkaLoss(tiny_model, st_losses.MultipleNegativesRankingLoss(tiny_model), DIMS, n_dims_per_step=1)
    seen = set()
    for _ in range(30):
        out = loss(_pairs(tiny_model), None)
        assert len(out) == 1
        seen |= set(out)
    assert seen == {f"loss_dim_{d}" for d in DIMS}


def test_distillation_identical_student_has_zero_loss(tiny_model):
    """Teacher embeddings are truncated AND renormalised: a student equal to its teacher has zero loss at every dim
    (docs/train.md shows how the reference, which only truncates, differs)."""
    tiny_model.eval()
    sentence_features = features(tiny_model, ANCHORS)
    with torch.no_grad():
        teacher = tiny_model(dict(sentence_features[0]))["sentence_embedding"]
    ours = MatryoshkaLoss(tiny_model, st_losses.MSELoss(tiny_model), DIMS)(sentence_features, teacher)
    for dim in DIMS:
        assert float(ours[f"loss_dim_{dim}"]) < 1e-12


def test_model_with_truncate_dim(tiny_model):
    tiny_model.truncate_dim = 32
    loss = MatryoshkaLoss(tiny_model, st_losses.MultipleNegativesRankingLoss(tiny_model), DIMS)
    assert loss.full_dim == 64
    out = loss(_pairs(tiny_model), None)
    assert set(out) == {f"loss_dim_{d}" for d in DIMS}
    assert tiny_model.truncate_dim == 32
    assert tiny_model.encode(["x"]).shape == (1, 32)


def test_default_dims(tiny_model):
    # 64 -> [64, 32]: powers of two down to 32
    loss = MatryoshkaLoss(tiny_model, st_losses.MultipleNegativesRankingLoss(tiny_model))
    assert loss.matryoshka_dims == [64, 32]


def test_dims_sorted_with_weights(tiny_model):
    loss = MatryoshkaLoss(tiny_model, st_losses.CoSENTLoss(tiny_model), [16, 64, 32], [3, 1, 2])
    assert loss.matryoshka_dims == [64, 32, 16]
    assert loss.matryoshka_weights == [1.0, 2.0, 3.0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"matryoshka_dims": []}, "empty"),
        ({"matryoshka_dims": [64, 32.5]}, "integers"),
        ({"matryoshka_dims": [64, "32"]}, "integers"),
        ({"matryoshka_dims": [64, 0]}, "positive"),
        ({"matryoshka_dims": [64, -8]}, "positive"),
        ({"matryoshka_dims": [64, 32, 32]}, "duplicates"),
        ({"matryoshka_dims": [128, 64]}, "exceed"),
        ({"matryoshka_dims": [64, 32], "matryoshka_weights": [1]}, "one weight per dimension"),
        ({"matryoshka_dims": [64, 32], "matryoshka_weights": [1, -1]}, ">= 0"),
        ({"matryoshka_dims": [64, 32], "matryoshka_weights": [0, 0]}, "all zero"),
        ({"matryoshka_dims": [64, 32], "n_dims_per_step": 0}, "n_dims_per_step"),
        ({"matryoshka_dims": [64, 32], "n_dims_per_step": 3}, "n_dims_per_step"),
        ({"matryoshka_dims": [64, 32], "n_dims_per_step": -2}, "n_dims_per_step"),
        ({"matryoshka_dims": [64, 32], "head_mode": "tied"}, "head_mode"),
    ],
)
def test_bad_arguments(tiny_model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        MatryoshkaLoss(tiny_model, st_losses.MultipleNegativesRankingLoss(tiny_model), **kwargs)


def test_warns_without_full_dim(tiny_model, caplog):
    with caplog.at_level(logging.WARNING):
        MatryoshkaLoss(tiny_model, st_losses.MultipleNegativesRankingLoss(tiny_model), [32, 16])
    assert "full dimension 64 is not in matryoshka_dims" in caplog.text


def test_config_dict_and_citation(tiny_model):
    loss = MatryoshkaLoss(tiny_model, st_losses.CoSENTLoss(tiny_model), [64, 16], [1, 2], n_dims_per_step=1)
    assert loss.get_config_dict() == {
        "loss": "CoSENTLoss",
        "matryoshka_dims": [64, 16],
        "matryoshka_weights": [1.0, 2.0],
        "n_dims_per_step": 1,
    }
    assert "kusupati2024matryoshka" in loss.citation


def test_distillation_with_projection_is_refused(tiny_model):
    with pytest.raises(ValueError, match="projection"):
        MatryoshkaLoss(tiny_model, st_losses.MSELoss(tiny_model, projection_dim=32), DIMS)


def test_matryoshka_2d(tiny_model):
    loss = Matryoshka2dLoss(tiny_model, st_losses.MultipleNegativesRankingLoss(tiny_model), DIMS)
    assert isinstance(loss, st_losses.AdaptiveLayerLoss) and isinstance(loss.loss, MatryoshkaLoss)
    config = loss.get_config_dict()
    assert config["matryoshka_dims"] == DIMS and config["n_layers_per_step"] == 1 and config["n_dims_per_step"] == 1
    assert "li20242d" in loss.citation
    value = loss(_pairs(tiny_model), None)
    assert torch.isfinite(value)
    value.backward()
    grads = [p.grad for p in _encoder_params(tiny_model).values() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0
    # AdaptiveLayerLoss re-binds the original methods; no decorator of ours or theirs is left behind
    assert tiny_model.forward.__func__ is type(tiny_model).forward
    assert tiny_model[0].forward.__func__ is type(tiny_model[0]).forward


def test_trainer_logs_each_dim_and_records_loss_in_card(tiny_model, tmp_path):
    dataset = Dataset.from_dict({"anchor": ANCHORS * 4, "positive": POSITIVES * 4})
    loss = MatryoshkaLoss(tiny_model, st_losses.MultipleNegativesRankingLoss(tiny_model), DIMS)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=6,
        max_steps=4,
        logging_steps=2,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
    )
    trainer = SentenceTransformerTrainer(model=tiny_model, args=args, train_dataset=dataset, loss=loss)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logged
    for entry in logged:
        parts = [entry[f"loss_dim_{d}"] for d in DIMS]
        assert all(p > 0 for p in parts)
        assert entry["loss"] == pytest.approx(sum(parts), rel=1e-3, abs=1e-3)
    tiny_model.save(str(tmp_path / "model"))
    card = (tmp_path / "model" / "README.md").read_text()
    assert "MatryoshkaLoss" in card and '"matryoshka_dims"' in card and "kusupati2024matryoshka" in card
