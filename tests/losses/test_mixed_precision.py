"""MatryoshkaLoss under ``torch.autocast("cpu", dtype=torch.bfloat16)`` agrees with float32.

Tolerances, measured on the tiny random BERT with ``tests/losses/_mixed_precision.py`` (one forward + backward):
the largest relative error of a per-dim loss was 7.7e-3 (MNRL, CachedMNRL) and 6e-5 (SoftmaxLoss, both head modes),
and the relative error of all gradients together 2.3e-2 (MNRL) and 5e-3 (SoftmaxLoss). On five perturbed copies of
the model the worst cases were 2.9e-2 (loss) and 3.3e-2 (gradients). bf16 keeps 8 bits of mantissa (eps 2**-8);
MNRL multiplies cosines by its scale of 20 before the softmax, so a cosine rounding error of ~2**-9 becomes ~0.04 in
a logit, hence its larger error. The bounds below, 5e-2 and 1e-1, leave a margin of ~1.7x and 3x over the worst
case seen and still catch a broken cast (float16 overflow to 0 or NaN, a head left out of autocast, a dimension
dropped), which give errors of order 1.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from matryoshka_st.losses import MatryoshkaHeads

from ._mixed_precision import CASE_IDS, assert_close_to_float32, per_dim_losses

LOSS_RTOL = 5e-2
GRAD_RTOL = 1e-1


@pytest.fixture(scope="module")
def float32_reference(_tiny_model):
    return {case: per_dim_losses(_tiny_model, case, "cpu", None) for case in CASE_IDS}


@pytest.mark.parametrize("case", CASE_IDS)
def test_bf16_autocast_per_dim_losses_match_float32(_tiny_model, float32_reference, case, one_torch_thread):
    reference, reference_grads = float32_reference[case]
    values, grads = per_dim_losses(_tiny_model, case, "cpu", torch.bfloat16)
    assert_close_to_float32(values, grads, reference, reference_grads, LOSS_RTOL, GRAD_RTOL)


@pytest.mark.parametrize("mode", ["separate", "shared"])
def test_heads_receive_gradients_under_bf16_autocast(_tiny_model, mode, one_torch_thread):
    _, grads = per_dim_losses(_tiny_model, f"SoftmaxLoss-{mode}", "cpu", torch.bfloat16)
    # the full-dim head is the inner loss's own classifier (named once, as "loss.classifier")
    head_grads = {name for name in grads if name.startswith(("heads.", "loss.classifier."))}
    expected = {"loss.classifier"} | ({"heads.separate.32", "heads.separate.16"} if mode == "separate" else set())
    assert {name.rsplit(".", 1)[0] for name in head_grads} == expected
    assert all(grads[name].abs().sum() > 0 for name in head_grads)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode", ["separate", "shared"])
def test_heads_follow_the_classifier_dtype(dtype, mode):
    classifier = nn.Linear(3 * 64, 3).to(dtype)
    heads = MatryoshkaHeads(classifier, full_dim=64, dims=[64, 32, 16], mode=mode)
    for dim in (64, 32, 16):
        head = heads.head(dim)
        assert head.weight.dtype == dtype and head.weight.device == classifier.weight.device
        assert head(torch.ones(2, 3 * dim, dtype=dtype)).dtype == dtype
