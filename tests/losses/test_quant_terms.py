"""Quantization-aware training terms: the fake quantization by hand, straight-through gradients, the terms on the
three adapter paths (embeddings, replay, GradCache), the warm-up, the argument checks, and off = today's loss."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from sentence_transformers.sentence_transformer import losses as st_losses

from matryoshka_st import MatryoshkaLoss
from matryoshka_st.dims import truncate
from matryoshka_st.losses.quant import fake_quantize
from matryoshka_st.recipes import Recipe, get_recipe

from ._batches import ANCHORS, NEGATIVES, POSITIVES, features

DIMS = [64, 32, 16]


def test_binary_codes_by_hand_and_straight_through_gradient():
    x = torch.tensor([[0.5, -0.5, 0.0, 0.7071]], requires_grad=True)
    codes = fake_quantize(x, "binary")
    assert codes.flatten().tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5])  # sign, 0 -> -1, / sqrt(4)
    (codes * torch.tensor([1.0, 2.0, 3.0, 4.0])).sum().backward()
    assert x.grad.tolist() == [[1.0, 2.0, 3.0, 4.0]]  # the identity


def test_int8_codes_one_scale_per_shell_by_hand():
    # shells [0, 2) and [2, 4) of dims (4, 2); one row per shell reaches the quantile, here its max
    x = torch.tensor([[0.8, -0.2, 0.01, 0.02], [0.4, 0.1, -0.04, 0.03]], requires_grad=True)
    codes = fake_quantize(x, "int8", dims=[4, 2])
    q = torch.quantile(torch.tensor([0.8, 0.2, 0.4, 0.1]), 0.999)  # ~0.8
    r = torch.quantile(torch.tensor([0.01, 0.02, 0.04, 0.03]), 0.999)  # ~0.04
    expected = [
        [round(0.8 * 127 / q.item()) * q.item() / 127, round(-0.2 * 127 / q.item()) * q.item() / 127],
        [round(0.4 * 127 / q.item()) * q.item() / 127, round(0.1 * 127 / q.item()) * q.item() / 127],
    ]
    assert codes[:, :2].flatten().tolist() == pytest.approx(sum(expected, []), rel=1e-6)
    assert codes[0, 2].item() == pytest.approx(round(0.01 * 127 / r.item()) * r.item() / 127, rel=1e-6)
    # each shell has its own scale: the small tail keeps its resolution (an axis-wide scale would round it to 0)
    assert codes[0, 2].item() != 0 and abs(codes[0, 2].item() - 0.01) < r.item() / 127
    codes.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_fake_quantize_keeps_the_dtype_and_rejects_unknown_precisions():
    x = torch.randn(3, 8).to(torch.bfloat16)
    assert fake_quantize(x, "int8", [8, 4]).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="quant_precision must be one of"):
        fake_quantize(x, "int4")


# ------------------------------------------------------------------------------------------------------- the adapter


def _loss(model, inner="MNRL", **kwargs):
    factories = {
        "MNRL": lambda: st_losses.MultipleNegativesRankingLoss(model),
        "CMNRL": lambda: st_losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=2),
        "MSE": lambda: st_losses.MSELoss(model),
    }
    return MatryoshkaLoss(model, factories[inner](), DIMS, **kwargs)


def _batch(model, inner):
    if inner == "MSE":
        with torch.no_grad():
            teacher = model.encode(ANCHORS, convert_to_tensor=True) + 0.05
        return features(model, ANCHORS), teacher
    return features(model, ANCHORS, POSITIVES, NEGATIVES), None


def _by_hand(model, inner, dim, precision, labels):
    """The inner loss on the fake-quantized prefixes, with each column's embeddings computed directly."""
    model.eval()
    cols = _batch(model, inner)[0]
    embeddings = [model(dict(f))["sentence_embedding"] for f in cols]
    codes = [fake_quantize(truncate(e, dim), precision, DIMS) for e in embeddings]
    if inner == "MSE":
        return torch.nn.functional.mse_loss(codes[0], truncate(labels, dim))
    return st_losses.MultipleNegativesRankingLoss(model).compute_loss_from_embeddings(codes, None)


@pytest.mark.parametrize("inner", ["MNRL", "CMNRL", "MSE"])  # embeddings, GradCache and replay paths
def test_terms_equal_the_inner_loss_on_codes_on_every_path(tiny_model, inner, one_torch_thread):
    tiny_model.eval()  # no dropout: the by-hand pass sees the same network
    loss = _loss(tiny_model, inner, quant_weight=0.5, quant_precision=["binary", "int8"], quant_dims=[32, 16])
    batch, labels = _batch(tiny_model, inner)
    out = loss(batch, labels)
    assert {k for k in out if k.startswith("quant_")} == {
        f"quant_{p}_dim_{d}" for p in ("binary", "int8") for d in (32, 16)
    }
    with torch.no_grad():
        for dim in (32, 16):
            for precision in ("binary", "int8"):
                expected = 0.5 * 1.0 * float(_by_hand(tiny_model, inner, dim, precision, labels))
                assert float(out[f"quant_{precision}_dim_{dim}"]) == pytest.approx(expected, rel=1e-4), (
                    dim,
                    precision,
                )
    # the terms' gradient reaches the encoder through the straight-through estimator: it changes the gradient
    sum(out.values()).backward()
    with_terms = [p.grad.clone() for p in tiny_model.parameters() if p.grad is not None]
    tiny_model.zero_grad()
    plain = _loss(tiny_model, inner)
    sum(plain(*_batch(tiny_model, inner)).values()).backward()
    without = [p.grad.clone() for p in tiny_model.parameters() if p.grad is not None]
    assert len(with_terms) == len(without)
    assert max(float((a - b).abs().max()) for a, b in zip(with_terms, without)) > 1e-6


def test_gradcache_gradients_equal_the_embeddings_path(_tiny_model, one_torch_thread):
    """The GradCache path pushes the terms' gradients through its own backward: equal to the plain loss's."""
    grads = []
    for inner in ("MNRL", "CMNRL"):
        model = copy.deepcopy(_tiny_model)
        model.eval()
        loss = _loss(model, inner, quant_weight=0.7, quant_precision=["binary", "int8"], distill_weight=0.5)
        out = loss(*_batch(model, inner))
        sum(out.values()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        if inner == "MNRL":
            values = {k: float(v) for k, v in out.items()}
        else:
            assert {k: float(v) for k, v in out.items()} == pytest.approx(values, rel=1e-4)
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-3)


def test_binary_term_gradient_differs_from_the_float_loss(_tiny_model, one_torch_thread):
    """The codes change the loss's value and hence its gradient: not just a copy of the float term."""
    model = copy.deepcopy(_tiny_model)
    model.eval()
    loss = _loss(model, quant_weight=1.0, quant_dims=[16])
    out = loss(*_batch(model, "MNRL"))
    assert float(out["quant_binary_dim_16"]) != pytest.approx(float(out["loss_dim_16"]), rel=1e-3)


def test_warmup_ramps_the_weight_linearly_over_training_steps(tiny_model, one_torch_thread):
    tiny_model.eval()
    loss = _loss(tiny_model, quant_weight=2.0, quant_dims=[32], quant_warmup=4)
    loss.train()
    tiny_model.eval()  # the loss counts training steps; the network runs without dropout so every step is alike
    batch = _batch(tiny_model, "MNRL")[0]
    seen = []
    for _ in range(6):
        out = loss(batch, None)
        seen.append(float(out["quant_binary_dim_32"]) if "quant_binary_dim_32" in out else 0.0)
    assert loss.quant_step == 6
    full = seen[-1]
    assert full > 0
    assert seen == pytest.approx([0.0, full / 4, full / 2, 3 * full / 4, full, full], rel=1e-4)
    loss.eval()
    with torch.no_grad():  # evaluation does not advance the warm-up
        loss(batch, None)
    assert loss.quant_step == 6


def test_off_is_identical_to_today(_tiny_model, one_torch_thread):
    outs, grads = [], []
    for kwargs in ({}, {"quant_weight": 0.0, "quant_precision": "int8", "quant_dims": [16], "quant_warmup": 3}):
        model = copy.deepcopy(_tiny_model)
        model.eval()
        loss = _loss(model, **kwargs)
        out = loss(*_batch(model, "MNRL"))
        sum(out.values()).backward()
        outs.append({k: v.detach() for k, v in out.items()})
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
        assert "quant_weight" not in loss.get_config_dict()
    assert outs[0].keys() == outs[1].keys()
    assert all(torch.equal(outs[0][k], outs[1][k]) for k in outs[0])
    assert all(torch.equal(a, b) for a, b in zip(*grads))


def test_config_dict_lists_the_terms(tiny_model):
    loss = _loss(tiny_model, quant_weight=0.3, quant_precision="int8", quant_dims=[16, 32], quant_warmup=10)
    config = loss.get_config_dict()
    assert config["quant_weight"] == 0.3 and config["quant_precision"] == ["int8"]
    assert config["quant_dims"] == [32, 16] and config["quant_warmup"] == 10


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"quant_weight": -1.0}, "quant_weight must be >= 0"),
        ({"quant_weight": math.inf}, "quant_weight must be a finite number"),
        ({"quant_weight": "1"}, "quant_weight must be a finite number"),
        ({"quant_weight": 1.0, "quant_precision": "int4"}, "quant_precision must be one of"),
        ({"quant_weight": 1.0, "quant_precision": []}, "quant_precision must be one of"),
        ({"quant_weight": 1.0, "quant_precision": ["int8", "int8"]}, "without repeats"),
        ({"quant_weight": 1.0, "quant_dims": []}, "quant_dims must be None"),
        ({"quant_weight": 1.0, "quant_dims": [32, 32]}, "quant_dims must be None"),
        ({"quant_weight": 1.0, "quant_dims": [24]}, r"quant_dims \[24\] must be among matryoshka_dims"),
        ({"quant_weight": 1.0, "quant_warmup": -1}, "quant_warmup must be an integer >= 0"),
        ({"quant_weight": 1.0, "quant_warmup": 2.5}, "quant_warmup must be an integer >= 0"),
    ],
)
def test_bad_quant_arguments(tiny_model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        _loss(tiny_model, **kwargs)


def test_recipe_fields_pass_the_terms_to_the_loss(tiny_model):
    recipe = Recipe("qat", quant_weight=0.5, quant_precision=("binary", "int8"), quant_dims=(32,), quant_warmup=7)
    kwargs = recipe.loss_kwargs()
    assert kwargs == {
        "quant_weight": 0.5,
        "quant_precision": ("binary", "int8"),
        "quant_dims": (32,),
        "quant_warmup": 7,
    }
    loss = MatryoshkaLoss(tiny_model, st_losses.MultipleNegativesRankingLoss(tiny_model), DIMS, **kwargs)
    assert loss.quant_dims == [32] and loss.quant_precision == ("binary", "int8")
    # off by default: the named recipes set no quantization arguments
    assert not any(key.startswith("quant_") for key in get_recipe("reference").loss_kwargs())
    with pytest.raises(ValueError, match="quant_warmup must be an integer"):
        Recipe("bad", quant_weight=1.0, quant_warmup=-2)
