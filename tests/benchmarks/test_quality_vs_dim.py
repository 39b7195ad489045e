"""The pieces of benchmarks/quality_vs_dim.py that decide what is trained and how results are judged."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import quality_vs_dim as qvd  # noqa: E402
from _common import ndcg_at_10_per_query  # noqa: E402


def write_pairs(folder: Path, rows: list[dict[str, str]]) -> Path:
    path = folder / "train" / "pairs.jsonl.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    return folder


def all_sources(n: int) -> list[dict[str, str]]:
    return [
        {"anchor": f"{source} anchor {i}", "positive": f"{source} positive {i}", "source": source}
        for source in qvd.MIX
        for i in range(n)
    ]


def test_small_dim_weights_favour_small_dims_at_the_uniform_total():
    weights = qvd.small_dim_weights()
    assert sum(weights) == pytest.approx(len(qvd.TRAIN_DIMS), abs=1e-3)
    assert weights == sorted(weights)  # dims go 384 -> 32, weights grow
    assert weights[-1] / weights[0] == pytest.approx(np.sqrt(384 / 32), rel=1e-3)


def test_sample_follows_the_mix_and_keeps_classification_pairs_apart(tmp_path):
    by_source = qvd.read_pairs(write_pairs(tmp_path, all_sources(600)), seed=0)
    retrieval, pool = qvd.split_sample(by_source, n_retrieval=1000, n_classification=400)
    assert {s: len(rows) for s, rows in retrieval.items()} == {s: round(1000 * share) for s, share in qvd.MIX.items()}
    assert len(pool) == 400
    trained = {(r["anchor"], r["positive"]) for rows in retrieval.values() for r in rows}
    assert trained.isdisjoint({(r["anchor"], r["positive"]) for r in pool})


def test_a_file_holding_only_the_sample_gives_the_same_sample(tmp_path):
    retrieval, pool = qvd.split_sample(qvd.read_pairs(write_pairs(tmp_path / "all", all_sources(300)), 3), 500, 100)
    sampled = [row for rows in retrieval.values() for row in rows] + pool
    again = qvd.split_sample(qvd.read_pairs(write_pairs(tmp_path / "subset", sampled[::-1]), 3), 500, 100)
    assert again == (retrieval, pool)


def test_bad_training_data_is_refused_before_training(tmp_path):
    with pytest.raises(FileNotFoundError, match="--data"):
        qvd.read_pairs(tmp_path, 0)
    rows = [row for row in all_sources(5) if row["source"] != "jargon"]
    with pytest.raises(ValueError, match="jargon"):
        qvd.read_pairs(write_pairs(tmp_path, rows), 0)
    with pytest.raises(ValueError, match="needs"):
        qvd.split_sample(qvd.read_pairs(write_pairs(tmp_path, all_sources(5)), 0), 1000, 0)


def test_classification_labels_mean_what_they_say(tmp_path):
    _, pool = qvd.split_sample(qvd.read_pairs(write_pairs(tmp_path, all_sources(300)), 0), 100, 300)
    positive_of = {row["anchor"]: row["positive"] for row in pool}
    rows = qvd.classification_set(pool, seed=1)
    assert len(rows) == len(pool)
    assert sorted({row["label"] for row in rows}) == [0, 1, 2]
    for row in rows:
        own = positive_of[row["sentence1"]]
        source, other_source = own.split(" positive")[0], row["sentence2"].split(" positive")[0]
        if row["label"] == 0:
            assert row["sentence2"] == own
        elif row["label"] == 1:
            assert row["sentence2"] != own and other_source == source
        else:
            assert other_source != source


def test_per_query_ndcg_matches_hand_computed_values():
    docs = np.eye(4, dtype=np.float32)
    queries = np.array([[1.0, 0.2, 0.1, 0.0], [0.0, 0.1, 0.2, 1.0]], dtype=np.float32)  # q0 ranks d0 first; q1 d3
    qrels = {"q0": {"d0": 1}, "q1": {"d2": 1}}  # q1's relevant doc comes second
    values = ndcg_at_10_per_query(queries, docs, ["q0", "q1"], ["d0", "d1", "d2", "d3"], qrels, dim=4)
    np.testing.assert_allclose(values, [1.0, 1 / np.log2(3)], rtol=1e-6)


def test_bootstrap_interval_brackets_the_mean_and_shrinks_to_a_point_without_spread():
    rng = np.random.default_rng(0)
    diff = rng.normal(0.02, 0.1, size=500)
    low, high = qvd.bootstrap_interval(diff, rng)
    assert low < diff.mean() < high
    assert high - low == pytest.approx(2 * 1.96 * diff.std() / np.sqrt(len(diff)), rel=0.15)
    assert qvd.bootstrap_interval(np.full(50, 0.01), rng) == pytest.approx((0.01, 0.01))


def test_targets_judge_differences_against_their_noise():
    rng = np.random.default_rng(0)
    n = 400
    plain = {d: rng.uniform(0.2, 0.4, n) * (1 if d >= 256 else d / 256) for d in qvd.EVAL_DIMS}
    mrl = {d: plain[d] + (0.0 if d >= 256 else 0.05) for d in qvd.EVAL_DIMS}
    per_query = {name: {task: s for task in qvd.TASKS} for name, s in (("plain", plain), ("reference", mrl))}
    per_query["matryoshka"] = {task: mrl for task in qvd.TASKS}
    lines, checks = qvd.targets(per_query, rng)
    by_target = {c["target"]: c for c in checks if c["task"] == qvd.TASKS[0]}
    assert by_target["matryoshka beats plain at 64"]["met"]
    assert "beyond noise" in by_target["matryoshka beats plain at 64"]["value"]
    assert by_target["matryoshka loses <= 0.5 pt to plain at 384"]["met"]
    assert not by_target["matryoshka keeps >= 98% of its 384-dim score at 64"]["met"]  # 64/256 of 0.3 + 0.05
    assert by_target["matryoshka no worse than reference at any dim (interval not wholly below 0)"]["met"]
    assert len(lines) == 2 + len(checks)


# What each recipe variant trained with when the study ran, as its model cache key holds it: a recipe said again in
# a new form must give the same key, or every cached model would be trained again.
STUDY_SETTINGS = {
    "kl": dict(distill_weight=1.0, distill_temperature=1.0),
    "kl-t2": dict(distill_weight=1.0, distill_temperature=2.0),
    "kl-light": dict(distill_weight=0.3, distill_temperature=1.0),
    "share": dict(full_dim_share=0.4),
    "pca": dict(init="pca"),
    "pca-kl": dict(init="pca", distill_weight=1.0, distill_temperature=1.0),
    "share-kl": dict(full_dim_share=0.4, distill_weight=1.0, distill_temperature=1.0),
    "pca-share": dict(init="pca", full_dim_share=0.4),
    "pca-share-kl": dict(init="pca", full_dim_share=0.4, distill_weight=1.0, distill_temperature=1.0),
    "pca-share-kl-t2": dict(init="pca", full_dim_share=0.4, distill_weight=1.0, distill_temperature=2.0),
    "pca-share6-kl": dict(init="pca", full_dim_share=0.6, distill_weight=1.0, distill_temperature=1.0),
}


def test_study_recipes_are_the_package_recipes_plus_overrides_with_unchanged_cache_keys():
    from matryoshka_st.recipes import RECIPES, Recipe

    assert list(qvd.RECIPES) == list(STUDY_SETTINGS)  # the study's order (training order of --variants)
    for name, recipe in RECIPES.items():
        if name != "reference":  # the study calls it "matryoshka"
            assert qvd.RECIPES[name] is recipe
    assert all(isinstance(recipe, Recipe) for recipe in qvd.RECIPES.values())
    for name, settings in STUDY_SETTINGS.items():
        assert json.dumps(qvd.recipe_settings(name), sort_keys=True) == json.dumps(settings, sort_keys=True), name
