from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.sentence_transformer import losses as st_losses
from torch import nn

from matryoshka_st import MatryoshkaLoss
from matryoshka_st.losses import MatryoshkaHeads, SlicedLinear

from ._batches import ANCHORS, POSITIVES, features

DIMS = [64, 32, 16]
LABELS = torch.tensor([0, 1, 2, 0, 1, 2])


def _softmax(model):
    return st_losses.SoftmaxLoss(model, 64, num_labels=3)


@pytest.mark.parametrize("mode", ["separate", "shared"])
def test_heads_per_dim_shapes_and_gradients(tiny_model, mode):
    inner = _softmax(tiny_model)
    loss = MatryoshkaLoss(tiny_model, inner, DIMS, head_mode=mode)
    heads = loss.heads
    assert heads.n_blocks == 3
    for dim in DIMS:
        head = heads.head(dim)
        assert head.weight.shape == (3, 3 * dim)
    out = loss(features(tiny_model, ANCHORS, POSITIVES), LABELS)
    sum(out.values()).backward()
    assert inner.classifier is heads.full  # the inner loss got its own head back
    if mode == "separate":
        assert len(list(heads.separate.parameters())) == 4  # 2 small dims x (weight, bias)
        for dim in (32, 16):
            assert heads.separate[str(dim)].weight.grad.abs().sum() > 0
        assert heads.full.weight.grad.abs().sum() > 0
    else:
        assert len(heads.separate) == 0
        # shared (MRL-E): the 16-dim head is a sub-matrix of the full weight, so columns 16..32 of each block are
        # trained by the 64 and 32 dims only, columns 32..64 by 64 only
        grad = heads.full.weight.grad.view(3, 3, 64)
        assert grad[:, :, :16].abs().sum() > 0 and grad[:, :, 32:].abs().sum() > 0


@pytest.mark.parametrize("mode", ["separate", "shared"])
def test_each_dim_is_cross_entropy_of_its_head_on_the_cut_pair_features(tiny_model, mode):
    """loss_dim_d = weight_d x cross-entropy of ``W_d [u_d, v_d, |u_d - v_d|] + b``, with ``u_d``, ``v_d`` the
    renormalised ``d``-prefixes and ``W_d`` the dim's own head (separate) or columns ``[0:d, 64:64+d, 128:128+d]``
    of the full head (shared), written out here with plain tensor operations."""
    tiny_model.eval()
    weights = [1.0, 0.5, 2.0]
    loss = MatryoshkaLoss(tiny_model, _softmax(tiny_model), DIMS, weights, head_mode=mode)
    torch.manual_seed(3)
    with torch.no_grad():  # every head different from every other and from a slice of the full head
        for parameter in loss.heads.parameters():
            parameter.normal_(std=0.5)
    batch = features(tiny_model, ANCHORS, POSITIVES)
    out = loss(batch, LABELS)
    with torch.no_grad():
        u_full, v_full = (tiny_model(dict(column))["sentence_embedding"] for column in batch)  # (6, 64) each
    full = loss.heads.full
    for dim, weight in zip(DIMS, weights):
        u = u_full[:, :dim] / u_full[:, :dim].norm(dim=1, keepdim=True)
        v = v_full[:, :dim] / v_full[:, :dim].norm(dim=1, keepdim=True)
        pair = torch.cat([u, v, (u - v).abs()], dim=1)  # (6, 3 * dim)
        if mode == "separate" and dim != 64:
            head_weight, head_bias = loss.heads.separate[str(dim)].weight, loss.heads.separate[str(dim)].bias
        else:
            columns = [c for block in range(3) for c in range(block * 64, block * 64 + dim)]
            head_weight, head_bias = full.weight[:, columns], full.bias  # (3, 3 * dim), (3,)
        logits = pair @ head_weight.T + head_bias  # (6, 3)
        log_probs = logits - logits.exp().sum(dim=1, keepdim=True).log()
        expected = -log_probs[torch.arange(len(LABELS)), LABELS].mean()
        assert float(out[f"loss_dim_{dim}"]) == pytest.approx(weight * float(expected), rel=1e-5), dim


def test_shared_head_is_a_slice():
    full = nn.Linear(2 * 8, 3)
    sliced = SlicedLinear(full, n_blocks=2, full_dim=8, dim=4)
    x = torch.randn(5, 8)
    expected = x[:, :4] @ full.weight[:, 0:4].T + x[:, 4:] @ full.weight[:, 8:12].T + full.bias
    torch.testing.assert_close(sliced(x), expected)


def test_separate_heads_start_as_slices_of_the_full_head():
    full = nn.Linear(3 * 8, 2)
    heads = MatryoshkaHeads(full, full_dim=8, dims=[8, 4], mode="separate")
    torch.testing.assert_close(heads.head(4).weight, SlicedLinear(full, 3, 8, 4).weight)
    assert heads.head(4).weight.data_ptr() != full.weight.data_ptr()


@pytest.mark.parametrize("mode", ["separate", "shared"])
def test_heads_trained_saved_and_loaded(tiny_model, tmp_path, mode):
    loss = MatryoshkaLoss(tiny_model, _softmax(tiny_model), DIMS, head_mode=mode)
    before = {k: v.clone() for k, v in loss.heads.state_dict().items()}
    dataset = Dataset.from_dict({"sentence1": ANCHORS * 4, "sentence2": POSITIVES * 4, "label": [0, 1, 2] * 8})
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=6,
        max_steps=3,
        learning_rate=1e-2,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
    )
    SentenceTransformerTrainer(model=tiny_model, args=args, train_dataset=dataset, loss=loss).train()
    after = loss.heads.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before), "the trainer did not update every head"

    loss.save_heads(str(tmp_path / "heads"))
    fresh = MatryoshkaLoss(tiny_model, _softmax(tiny_model), DIMS, head_mode=mode)
    fresh.load_heads(str(tmp_path / "heads"))
    for key, value in loss.heads.state_dict().items():
        torch.testing.assert_close(fresh.heads.state_dict()[key], value)
    assert fresh.loss.classifier is fresh.heads.full
    torch.testing.assert_close(fresh.loss.classifier.weight, loss.loss.classifier.weight)

    other = MatryoshkaLoss(tiny_model, _softmax(tiny_model), [64, 32], head_mode=mode)
    with pytest.raises(ValueError, match="saved for"):
        other.load_heads(str(tmp_path / "heads"))


def test_load_heads_missing_folder(tiny_model, tmp_path):
    loss = MatryoshkaLoss(tiny_model, _softmax(tiny_model), DIMS)
    with pytest.raises(FileNotFoundError, match="matryoshka_heads.json"):
        loss.load_heads(str(tmp_path))


def test_save_heads_without_head(tiny_model, tmp_path):
    loss = MatryoshkaLoss(tiny_model, st_losses.CoSENTLoss(tiny_model), DIMS)
    with pytest.raises(ValueError, match="no classifier head"):
        loss.save_heads(str(tmp_path))
