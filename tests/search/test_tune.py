from __future__ import annotations

import numpy as np
import pytest

from matryoshka_st.search import FunnelIndex, measure_speed
from matryoshka_st.search.tune import exact_top_k, recall_at_k

pytest.importorskip("faiss")

DIM = 64


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    # Matryoshka-like: variance falls with the coordinate, so a prefix carries most of the signal.
    rng = np.random.default_rng(0)
    scale = np.linspace(2.0, 0.3, DIM)
    corpus = _unit(rng.normal(size=(4000, DIM)) * scale)
    queries = _unit(corpus[rng.choice(4000, 400, replace=False)] + 0.4 * rng.normal(size=(400, DIM)) * scale)
    return corpus, queries


def test_recall_at_k():
    exact = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    assert recall_at_k(np.array([[4, 3, 9, 1], [5, 6, 7, 8]]), exact) == pytest.approx((3 / 4 + 1) / 2)


@pytest.mark.parametrize("first_stage", ["hnsw", "float", "ivf"])
def test_tune_meets_its_target_on_held_back_queries(data, first_stage, tmp_path):
    corpus, queries = data
    index = FunnelIndex.from_embeddings(corpus, stages=[(16, 100)], first_stage=first_stage, hnsw_m=16)
    grid = {"ef_searches": [32, 128, 512, 1024]} if first_stage == "hnsw" else {}
    grid = {"nprobes": [2, 8, 32, 64]} if first_stage == "ivf" else grid
    result = index.tune(queries, target_recall=0.95, k=10, shortlists=[10, 20, 30, 50, 100, 200, 400], **grid)
    assert result.tune_recall >= 0.95
    assert result.holdout_recall >= 0.95 - 0.02  # 200 held-back queries: a sampling margin
    assert result.num_tune_queries == result.num_holdout_queries == 200
    assert index.stages == result.stages
    if first_stage != "float":  # a flat first stage may move up the ladder; a graph or lists stop where it works
        assert index.stages[0][0] == 16
    # What tune reports is what the index now does.
    holdout_exact = exact_top_k(corpus, queries, 10)
    assert recall_at_k(index.search(queries, k=10)[1], holdout_exact) >= 0.93
    if first_stage == "hnsw":
        assert result.ef_search == index.params.ef_search and result.nprobe is None
    elif first_stage == "ivf":
        assert result.nprobe == index.params.nprobe and result.ef_search is None
    assert result.holdout_speed.queries_per_second > 0
    assert result.holdout_speed.latency_p50_ms <= result.holdout_speed.latency_p99_ms
    # Every timed candidate met the target, and the kept one is the fastest.
    assert all(c["recall"] >= 0.95 for c in result.candidates)
    assert max(c["queries_per_second"] for c in result.candidates) == pytest.approx(
        next(
            c["queries_per_second"]
            for c in result.candidates
            if c["stages"] == result.stages and (c["setting"] in (result.ef_search, result.nprobe, None))
        )
    )
    index.save(tmp_path / "tuned")
    loaded = FunnelIndex.load(tmp_path / "tuned")
    assert loaded.stages == index.stages and loaded.params == index.params
    assert loaded.tuning["holdout_recall"] == pytest.approx(result.holdout_recall)


def test_tune_can_change_the_first_stage_dim_and_add_a_rerank_stage(data):
    corpus, queries = data
    index = FunnelIndex.from_embeddings(corpus, stages=[(8, 100)], first_stage="float")
    result = index.tune(
        queries, target_recall=0.99, k=10, first_dims=[8, 32], rerank_dims=[48], shortlists=[10, 20, 50, 100, 300]
    )
    assert {c["stages"][0][0] for c in result.candidates} <= {8, 32}
    assert result.tune_recall >= 0.99 and index.stages == result.stages
    assert index.search(queries[:3], k=10)[1].shape == (3, 10)


def test_tune_with_a_hopeless_grid_says_what_to_do(data):
    corpus, queries = data
    index = FunnelIndex.from_embeddings(corpus, stages=[(8, 100)], first_stage="hnsw")
    before = index.search(queries[:5], k=10)
    with pytest.raises(ValueError, match="No schedule reached recall@10 0.999") as refused:
        index.tune(queries, target_recall=0.999, shortlists=[10], ef_searches=[10])
    assert "in the space you passed (shortlists=[10], ef_searches=[10])" in str(refused.value)
    # a refused tune leaves the index as it was: its first stage, schedule and search settings
    assert index.stages == [(8, 100)] and index.params.ef_search == 64 and index._index.hnsw.efSearch == 64
    np.testing.assert_array_equal(index.search(queries[:5], k=10)[1], before[1])


@pytest.fixture(scope="module")
def isotropic() -> tuple[np.ndarray, np.ndarray]:
    # No Matryoshka structure: a 4-dim prefix says little, so only a longer first stage reaches a high recall.
    rng = np.random.default_rng(5)
    corpus = _unit(rng.normal(size=(3000, DIM)))
    return corpus, _unit(corpus[rng.choice(3000, 300, replace=False)] + 0.3 * rng.normal(size=(300, DIM)))


@pytest.mark.parametrize("first_stage", ["float", "hnsw"])
def test_tune_by_default_searches_first_stage_dims_up_to_the_full_dim(isotropic, first_stage):
    corpus, queries = isotropic
    index = FunnelIndex.from_embeddings(corpus, stages=[(4, 100)], first_stage=first_stage, hnsw_m=8)
    with pytest.raises(ValueError, match=r"in the space you passed \(first_dims=\[4\]\)"):
        index.tune(queries, target_recall=0.99, k=10, first_dims=[4])
    result = index.tune(queries, target_recall=0.99, k=10)
    assert result.tune_recall >= 0.99 and result.holdout_recall >= 0.97
    assert result.stages[0][0] in (8, 16, 32, 64) and index.stages == result.stages
    dims = {c["stages"][0][0] for c in result.candidates}
    if first_stage == "float":  # flat first stages are cheap to build: every dim of the ladder is tried
        assert dims >= {32, 64} and 4 not in dims
    else:  # a graph per dim is not: the climb stops at the first dim that meets the target
        assert len(dims) == 1
    assert recall_at_k(index.search(queries, k=10)[1], exact_top_k(corpus, queries, 10)) >= 0.97


def test_tune_over_several_first_dims_times_candidates_from_each(data):
    corpus, queries = data
    index = FunnelIndex.from_embeddings(corpus, stages=[(8, 100)], first_stage="float")
    result = index.tune(queries, target_recall=0.99, k=10, first_dims=[8, 16, 32, 64])
    dims = {c["stages"][0][0] for c in result.candidates}
    assert {16, 32, 64} <= dims  # every dim's candidates were timed (each first stage was kept until then)
    assert all("queries_per_second" in c for c in result.candidates)
    assert result.tune_recall >= 0.99 and index.stages == result.stages
    assert index._index.d == result.stages[0][0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target_recall": 1.5}, "target_recall must be a number in"),
        ({"k": 0}, "k must be an integer in"),
        ({"holdout_fraction": 0.0, "queries": 1}, "leave no tuning or no held-back"),
        ({"shortlists": [5]}, "each of shortlists must be an integer in \\[10"),
        ({"ef_searches": [0]}, "each of ef_searches"),
        ({"first_dims": [80]}, "each of first_dims"),
        ({"rerank_dims": [4]}, "dims must increase"),
    ],
)
def test_tune_rejects_bad_arguments_before_searching(data, kwargs, match, monkeypatch):
    import matryoshka_st.search.tune as tune

    corpus, queries = data
    index = FunnelIndex.from_embeddings(corpus[:300], stages=[(8, 100)], first_stage="hnsw", hnsw_m=4)
    monkeypatch.setattr(tune, "exact_top_k", lambda *a, **k: (_ for _ in ()).throw(AssertionError("searched")))
    num = kwargs.pop("queries", 50)
    with pytest.raises(ValueError, match=match):
        index.tune(queries[:num], **kwargs)


def test_measure_speed_reports_batch_and_single_query_timings():
    calls = []
    report = measure_speed(lambda q: calls.append(len(q)), np.zeros((50, 4), np.float32), repeats=2, num_single=10)
    assert calls == [32, 50, 50] + [1] * 10
    assert report.num_queries == 50 and report.latency_p50_ms <= report.latency_p99_ms
