from __future__ import annotations

import csv
import json

import pytest
import torch

from matryoshka_st.evaluation import evaluate, render
from matryoshka_st.evaluation.report import Score, _summary, _tables


def scores(values: dict[int, float], model: str = "local/m", task: str = "t", precision: str = "float32"):
    return [Score(model, "rev", task, "ndcg_at_10", dim, precision, score) for dim, score in values.items()]


@pytest.mark.parametrize(("keep", "expected"), [(0.98, 32), (0.995, 64), (0.95, 16), (1.0, 64)])
def test_recommended_dim_is_the_smallest_keeping_the_share(keep, expected):
    table = _tables(scores({64: 0.50, 32: 0.495, 16: 0.48, 8: 0.30}))
    summary = _summary(table, keep)["models"]["m"]
    assert summary["recommended_dim"] == expected
    assert summary["full_dim"] == 64 and summary["full_dim_mean_score"] == 0.50


def test_recommendation_uses_the_mean_over_tasks():
    # task a keeps 100% at 16 dims, task b only 90%: mean keeps 95%
    rows = scores({32: 0.8, 16: 0.8}, task="a") + scores({32: 0.4, 16: 0.36}, task="b")
    summary = _summary(_tables(rows), 0.98)["models"]["m"]
    assert summary["recommended_dim"] == 32
    assert summary["scores"]["float32"]["16"]["mean"] == pytest.approx(0.58)
    assert summary["scores"]["float32"]["16"]["share_of_full"] == pytest.approx(0.58 / 0.6)
    assert _summary(_tables(rows), 0.95)["models"]["m"]["recommended_dim"] == 16


def test_cheapest_setting_across_precisions():
    rows = scores({64: 0.5, 32: 0.49}) + scores({64: 0.495, 32: 0.45}, precision="int8")
    rows += scores({64: 0.40, 32: 0.30}, precision="binary")
    summary = _summary(_tables(rows), 0.98)["models"]["m"]
    assert summary["cheapest"] == {"dim": 64, "precision": "int8", "bytes_per_vector": 64, "mean_score": 0.495}


def test_render_two_models(tiny_model, _tiny_model, tmp_path, beir_folder, sts_file):
    with torch.no_grad():
        for parameter in tiny_model.parameters():
            parameter.mul_(0.9).add_(0.01)
    evaluate(
        {"base": _tiny_model, "tuned": tiny_model},
        [beir_folder, sts_file],
        dims=[32, 16, 8],
        precisions=["float32", "binary"],
        output_folder=tmp_path / "eval",
        show_progress_bar=False,
    )
    report = render([tmp_path / "eval"], tmp_path / "report", keep=0.9)

    assert set(report.recommended) == {"base", "tuned"}
    summary = json.loads(report.summary.read_text())
    for label, model in summary["models"].items():
        float32 = model["scores"]["float32"]
        means = {int(dim): row["mean"] for dim, row in float32.items()}
        kept = [dim for dim, mean in means.items() if mean >= 0.9 * means[64]] if means[64] > 0 else [64]
        assert model["recommended_dim"] == report.recommended[label] == min(kept)
        assert set(model["tasks"]) == {"tiny_beir", "sts_sample"}
        assert model["scores"]["binary"]["8"]["bytes_per_vector"] == 1

    with report.csv.open() as handle:
        rows = list(csv.DictReader(handle))
    # 2 models x (4 dims float32 + 4 dims binary) x (2 tasks + mean)
    assert len(rows) == 2 * 8 * 3
    full = [r for r in rows if r["dim"] == "64" and r["precision"] == "float32"]
    # a share exists where the full-dim score is positive (random tiny models can score below zero)
    assert all(float(r["share_of_full"]) == pytest.approx(1.0) for r in full if float(r["score"]) > 0)
    assert all(r["share_of_full"] == "" for r in full if float(r["score"]) <= 0)
    assert {r["bytes_per_vector"] for r in rows if r["dim"] == "16"} == {"64", "2"}

    text = report.markdown.read_text()
    assert text == report.table
    assert "## base: float32" in text and "## tuned: binary" in text
    assert "| tiny_beir (ndcg_at_10) |" in text and "| sts_sample (cosine_spearman) |" in text
    assert "| binary | 8 | 4 | 2 | 1 |" in text

    assert [p.name for p in report.plots] == ["score_vs_dim.png", "score_vs_bytes.png"]
    for plot in report.plots:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000


def test_render_without_results(tmp_path):
    with pytest.raises(ValueError, match="No mteb results found"):
        render([tmp_path], tmp_path / "report")
    with pytest.raises(ValueError, match="keep must be a share"):
        render([tmp_path], tmp_path / "report", keep=98)
