from __future__ import annotations

import gzip
import json

import pytest
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer import losses as st_losses

from matryoshka_st import MatryoshkaLoss
from matryoshka_st._bundled import SAMPLE_PAIRS

DIMS = [384, 256, 128, 64, 32]


@pytest.fixture(scope="module")
def real_model(bundled_model_path):
    model = SentenceTransformer(bundled_model_path, device="cpu")
    model.max_seq_length = 64
    model.eval()
    return model


@pytest.fixture(scope="module")
def real_batch(real_model):
    with gzip.open(SAMPLE_PAIRS, "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for _, line in zip(range(16), handle)]
    return [real_model.preprocess([row[column] for row in rows]) for column in ("anchor", "positive")]


@pytest.mark.slow
@pytest.mark.parametrize(
    "make_inner",
    [
        st_losses.MultipleNegativesRankingLoss,
        lambda m: st_losses.CachedMultipleNegativesRankingLoss(m, mini_batch_size=4),
    ],
    ids=["MNRL", "CachedMNRL"],
)
def test_real_model_equals_reference(real_model, real_batch, make_inner):
    ours = MatryoshkaLoss(real_model, make_inner(real_model), DIMS)
    theirs = st_losses.MatryoshkaLoss(real_model, make_inner(real_model), DIMS)
    per_dim = ours([dict(f) for f in real_batch], None)
    ours_value = float(torch.stack(list(per_dim.values())).sum())
    theirs_value = float(theirs([dict(f) for f in real_batch], None))
    real_model.zero_grad(set_to_none=True)
    assert ours_value == pytest.approx(theirs_value, abs=1e-5)
    # all-MiniLM-L6-v2 was not trained with Matryoshka: its in-batch loss grows as the dims shrink
    values = [float(per_dim[f"loss_dim_{d}"]) for d in DIMS]
    assert values[-1] > values[0]


@pytest.mark.slow
def test_real_model_training_step_lowers_loss_at_every_dim(real_model, real_batch):
    """One SGD step on the Matryoshka loss lowers the loss at every dim, on the same batch."""
    model = real_model
    model.train()
    loss = MatryoshkaLoss(model, st_losses.MultipleNegativesRankingLoss(model), DIMS)
    optimizer = torch.optim.SGD(model.parameters(), lr=5e-3)
    torch.manual_seed(0)
    model.eval()
    with torch.no_grad():
        before = {k: float(v) for k, v in loss([dict(f) for f in real_batch], None).items()}
    model.train()
    total = torch.stack(list(loss([dict(f) for f in real_batch], None).values())).sum()
    assert torch.isfinite(total)
    total.backward()
    optimizer.step()
    optimizer.zero_grad()
    model.eval()
    with torch.no_grad():
        after = {k: float(v) for k, v in loss([dict(f) for f in real_batch], None).items()}
    for key in before:
        assert after[key] < before[key], key
