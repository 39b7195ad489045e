from __future__ import annotations

import math

import pytest

from matryoshka_st.evaluation.quality import (
    MEAN,
    QualityByDim,
    bytes_per_vector,
    metric_name,
    recommend_dim,
    share_of_full,
)


def test_recommend_dim():
    assert recommend_dim({384: 0.60, 128: 0.59, 64: 0.50}, keep=0.98) == 128
    assert recommend_dim({384: 0.60, 128: 0.59, 64: 0.50}, keep=0.80) == 64
    assert recommend_dim({384: 0.60, 128: 0.59}, keep=1.0) == 384
    # the reference is the given full dim when scored, else the largest
    assert recommend_dim({256: 0.5, 128: 0.49}, keep=0.98, full_dim=384) == 128
    # a full-dim score <= 0 keeps no share: the full dim is recommended
    assert recommend_dim({384: -0.1, 64: 0.2}, keep=0.98) == 384
    assert recommend_dim({}) is None


def test_share_of_full():
    assert share_of_full(0.3, 0.6) == pytest.approx(0.5)
    assert math.isnan(share_of_full(None, 0.6)) and math.isnan(share_of_full(0.3, 0.0))


def test_quality_by_dim():
    scores = {
        "int8": {64: {"a": 0.58, "b": 0.40}},
        "float32": {32: {"a": 0.6, "b": 0.36}, 64: {"a": 0.6, "b": 0.4}},
    }
    quality = QualityByDim("m", {"b": "cosine_spearman", "a": "ndcg_at_10"}, scores, keep=0.95)
    assert list(quality.scores) == ["float32", "int8"] and list(quality.scores["float32"]) == [64, 32]
    assert quality.full_dim == 64 and quality.reference() == pytest.approx(0.5)
    assert quality.mean_scores() == pytest.approx({64: 0.5, 32: 0.48})
    assert quality.share(MEAN, 32) == pytest.approx(0.96) and quality.share("b", 32) == pytest.approx(0.9)
    assert quality.recommended_dim == 32
    assert quality.cheapest() == {"dim": 64, "precision": "int8", "bytes_per_vector": 64, "mean_score": 0.49}
    summary = quality.to_dict()
    assert summary["recommended_dim"] == 32 and summary["tasks"] == {"a": "ndcg_at_10", "b": "cosine_spearman"}
    assert summary["scores"]["float32"]["32"]["bytes_per_vector"] == bytes_per_vector(32, "float32") == 128
    with pytest.raises(ValueError, match="keep must be a share"):
        QualityByDim("m", {"a": "ndcg_at_10"}, scores, keep=0)


def test_from_dim_scores_and_metric_names():
    quality = QualityByDim.from_dim_scores({384: 0.6, 64: 0.3}, task="dev", metric="ndcg_at_10", keep=0.5)
    assert quality.recommended_dim == 64 and quality.scores["float32"][64] == {"dev": 0.3, MEAN: 0.3}
    assert metric_name("ndcg_at_10") == "nDCG@10" and metric_name("custom") == "custom"
