"""The Matryoshka loss under autocast vs float32, on any device: shared by the CPU bf16 and the GPU tests."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from sentence_transformers.sentence_transformer import losses as st_losses
from sentence_transformers.util import batch_to_device

from matryoshka_st import MatryoshkaLoss

from ._batches import ANCHORS, NEGATIVES, POSITIVES, features

DIMS = [64, 32, 16]

# name -> (inner loss factory, column lists, labels)
CASES: dict[str, tuple[Callable, list[list[str]], Callable[[], torch.Tensor | None], str]] = {
    "MNRL": (lambda m: st_losses.MultipleNegativesRankingLoss(m), [ANCHORS, POSITIVES, NEGATIVES], lambda: None),
    "CachedMNRL": (
        lambda m: st_losses.CachedMultipleNegativesRankingLoss(m, mini_batch_size=2),
        [ANCHORS, POSITIVES, NEGATIVES],
        lambda: None,
    ),
    "SoftmaxLoss": (
        lambda m: st_losses.SoftmaxLoss(m, 64, num_labels=3),
        [ANCHORS, POSITIVES],
        lambda: torch.tensor([0, 1, 2, 0, 1, 2]),
    ),
}
CASE_IDS = ["MNRL", "CachedMNRL", "SoftmaxLoss-separate", "SoftmaxLoss-shared"]


def _split(case_id: str) -> tuple[str, str]:
    name, _, mode = case_id.partition("-")
    return name, mode or "separate"


def per_dim_losses(
    model, case_id: str, device: str, dtype: torch.dtype | None, loss_scale: float = 1.0
) -> tuple[dict[int, float], dict[str, torch.Tensor]]:
    """One forward and backward of ``MatryoshkaLoss`` on a fresh copy of ``model``: the per-dim loss values and the
    gradients of every parameter (encoder and heads), in float32. ``dtype=None`` runs in float32 without autocast.
    ``loss_scale`` multiplies the loss before the backward pass (and divides the gradients after), as the trainer's
    gradient scaler does for float16, whose small gradients would otherwise underflow."""
    name, mode = _split(case_id)
    factory, columns, labels = CASES[name]
    model = copy.deepcopy(model).to(device)
    model.eval()  # no dropout: the runs in different dtypes must see the same network
    torch.manual_seed(0)  # the heads of SoftmaxLoss are randomly initialised
    loss = MatryoshkaLoss(model, factory(model), DIMS, head_mode=mode).to(device)
    sentence_features = [batch_to_device(f, device) for f in features(model, *columns)]
    target = labels()
    target = target.to(device) if target is not None else None
    with torch.autocast(device_type=device.split(":")[0], dtype=dtype or torch.float32, enabled=dtype is not None):
        out = loss(sentence_features, target)
        total = sum(out.values())
    (total * loss_scale).backward()
    values = {int(key.rsplit("_", 1)[1]): float(value.detach()) for key, value in out.items()}
    grads = {n: p.grad.detach().float().cpu() / loss_scale for n, p in loss.named_parameters() if p.grad is not None}
    return values, grads


def relative_gradient_error(grads: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> float:
    """||g - g_ref|| / ||g_ref|| over all parameters together."""
    assert grads.keys() == reference.keys()
    diff = torch.sqrt(sum(((grads[k] - reference[k]) ** 2).sum() for k in reference))
    norm = torch.sqrt(sum((reference[k] ** 2).sum() for k in reference))
    return float(diff / norm)


def assert_close_to_float32(values, grads, reference, reference_grads, loss_rtol: float, grad_rtol: float) -> None:
    """Half-precision per-dim losses and gradients against float32: every dim present and finite, each loss within
    ``loss_rtol`` (relative), all gradients together within ``grad_rtol``."""
    import math

    import pytest

    assert sorted(values) == sorted(DIMS)
    for dim in DIMS:
        assert math.isfinite(values[dim])
        assert values[dim] == pytest.approx(reference[dim], rel=loss_rtol), dim
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert relative_gradient_error(grads, reference_grads) < grad_rtol
