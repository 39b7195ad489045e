from __future__ import annotations

import numpy as np
import pytest

from matryoshka_st.search import FirstStageParams, FunnelIndex

pytest.importorskip("faiss")

DIM = 64
SUBLINEAR = ["hnsw", "int8_hnsw", "binary_hnsw", "ivf"]


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture()
def corpus() -> np.ndarray:
    return _unit(np.random.default_rng(0).normal(size=(600, DIM)))


@pytest.fixture()
def queries() -> np.ndarray:
    return _unit(np.random.default_rng(1).normal(size=(20, DIM)))


def _exact(corpus: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries @ corpus.T
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, ids, axis=1), ids


@pytest.mark.parametrize("first_stage", SUBLINEAR)
def test_sublinear_first_stage_with_a_whole_corpus_shortlist_equals_brute_force(corpus, queries, first_stage):
    # A shortlist (and efSearch / nprobe) covering the corpus leaves the full-dim rerank to decide: exact results.
    index = FunnelIndex.from_embeddings(
        corpus, stages=[(16, len(corpus))], first_stage=first_stage, ef_search=len(corpus), nlist=8, nprobe=8
    )
    scores, ids = index.search(queries, k=10)
    exact_scores, exact_ids = _exact(corpus, queries, 10)
    np.testing.assert_array_equal(ids, exact_ids)
    np.testing.assert_allclose(scores, exact_scores, atol=1e-6)


def test_hnsw_first_stage_with_big_ef_search_equals_the_flat_first_stage(corpus, queries):
    # Same prefix, same shortlist: a wide HNSW search finds the same 40 candidates as the exact flat scan.
    flat = FunnelIndex.from_embeddings(corpus, stages=[(32, 40)], first_stage="float")
    hnsw = FunnelIndex.from_embeddings(corpus, stages=[(32, 40)], first_stage="hnsw", ef_search=600)
    np.testing.assert_array_equal(hnsw.search(queries, k=10)[1], flat.search(queries, k=10)[1])
    assert hnsw._index.hnsw.efSearch == 600


def test_small_ef_search_is_applied_and_costs_recall():
    # Clustered data, a 4-dim prefix and ef_search 1: the graph search must miss some true neighbours.
    rng = np.random.default_rng(3)
    corpus = _unit(rng.normal(size=(3000, DIM)))
    queries = _unit(corpus[:50] + 0.5 * rng.normal(size=(50, DIM)))
    _, exact_ids = _exact(corpus, queries, 10)
    index = FunnelIndex.from_embeddings(corpus, stages=[(8, 10)], first_stage="hnsw", ef_search=1)
    narrow = np.mean([len(set(a) & set(b)) for a, b in zip(index.search(queries, k=10)[1], exact_ids)]) / 10
    index.set_search_params(stages=[(8, 3000)], ef_search=3000)
    wide = np.mean([len(set(a) & set(b)) for a, b in zip(index.search(queries, k=10)[1], exact_ids)]) / 10
    assert narrow < 0.6 and wide == 1.0


@pytest.mark.parametrize("mmap", [False, True])
@pytest.mark.parametrize("first_stage", SUBLINEAR)
def test_save_load_keeps_first_stage_params(corpus, queries, tmp_path, first_stage, mmap):
    index = FunnelIndex.from_embeddings(
        corpus, stages=[(16, 50), (32, 20)], first_stage=first_stage, hnsw_m=8, ef_search=77, nlist=12, nprobe=5
    )
    index.save(tmp_path / "index")
    loaded = FunnelIndex.load(tmp_path / "index", mmap=mmap)
    assert loaded.params == index.params == FirstStageParams(first_stage, 8, 100, 77, 12, 5)
    if first_stage == "ivf":
        assert loaded._index.nprobe == 5 and loaded._index.nlist == 12
    else:
        assert loaded._index.hnsw.efSearch == 77
    np.testing.assert_array_equal(loaded.search(queries, k=10)[1], index.search(queries, k=10)[1])
    assert loaded.memory_report() == index.memory_report()


def test_hnsw_memory_report_counts_graph_links(corpus):
    float_hnsw = FunnelIndex.from_embeddings(corpus, stages=[(16, 50)], first_stage="hnsw", hnsw_m=8)
    binary_hnsw = FunnelIndex.from_embeddings(corpus, stages=[(16, 50)], first_stage="binary_hnsw", hnsw_m=8)
    # 2 * M int32 level-0 links (64 bytes) on top of the codes (64 float bytes or 2 binary bytes).
    assert 64 + 64 <= float_hnsw.memory_report().first_stage_bytes_per_vector < 64 + 64 + 30
    assert 2 + 64 <= binary_hnsw.memory_report().first_stage_bytes_per_vector < 2 + 64 + 30


def test_missing_candidates_are_padded_not_aliased():
    # An IVF probe of 1 of 4 lists may return fewer than k candidates: pads are id -1 with score -inf.
    rng = np.random.default_rng(4)
    corpus = _unit(rng.normal(size=(200, 8)))
    index = FunnelIndex.from_embeddings(corpus, stages=[(8, 150)], first_stage="ivf", nlist=4, nprobe=1)
    scores, ids = index.search(corpus[:5], k=100)
    assert ((ids == -1) == np.isneginf(scores)).all()
    assert (ids[:, 0] == np.arange(5)).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"first_stage": "hnsw32"}, "first_stage must be one of"),
        ({"first_stage": "hnsw", "hnsw_m": 0}, "hnsw_m must be a positive integer"),
        ({"first_stage": "hnsw", "hnsw_m": 1}, "hnsw_m must be >= 2"),
        ({"first_stage": "hnsw", "ef_search": 0}, "ef_search must be a positive integer"),
        ({"first_stage": "hnsw", "ef_construction": 2.5}, "ef_construction must be a positive integer"),
        ({"first_stage": "ivf", "nlist": 0}, "nlist must be a positive integer"),
        ({"first_stage": "ivf", "nprobe": -1}, "nprobe must be a positive integer"),
        ({"first_stage": "binary_hnsw", "stages": [(12, 10)]}, "divisible by 8"),
        ({"first_stage": "hnsw", "stages": [(32, 100), (16, 10)]}, "dims must increase"),
    ],
)
def test_bad_first_stage_params(corpus, kwargs, match, monkeypatch):
    import matryoshka_st.search.funnel as funnel

    def fail(*args, **kwargs):
        raise AssertionError("built an index before checking its arguments")

    monkeypatch.setattr(funnel, "build_first_stage", fail)
    kwargs = {"stages": [(16, 10)], **kwargs}
    with pytest.raises(ValueError, match=match):
        FunnelIndex.from_embeddings(corpus, **kwargs)


def test_set_search_params_checks_values(corpus):
    index = FunnelIndex.from_embeddings(corpus, stages=[(16, 50)], first_stage="hnsw")
    with pytest.raises(ValueError, match="ef_search must be a positive integer"):
        index.set_search_params(ef_search=0)
    with pytest.raises(ValueError, match="stages must start with dim 16"):
        index.set_search_params(stages=[(32, 50)])
    index.set_search_params(stages=[(16, 80), (32, 20)])
    assert index.stages == [(16, 80), (32, 20)] and index._prefix_norms.shape == (1, len(corpus))


def test_an_ivf_nlist_kmeans_cannot_train_is_refused_with_the_size_it_needs(corpus, monkeypatch):
    # 600 vectors train at most 15 lists of ~39 points (FAISS's k-means minimum); one list always trains
    with pytest.raises(ValueError, match=r"nlist 16 needs at least 624 vectors .* corpus has 600: use nlist <= 15"):
        FunnelIndex.from_embeddings(corpus, stages=[(16, 50)], first_stage="ivf", nlist=16)
    assert FunnelIndex.from_embeddings(corpus, stages=[(16, 50)], first_stage="ivf", nlist=15)._index.nlist == 15
    assert FunnelIndex.from_embeddings(corpus[:10], stages=[(16, 5)], first_stage="ivf", nlist=1)._index.nlist == 1

    class Model:  # from_model refuses before encoding anything
        def get_embedding_dimension(self):
            return DIM

        def encode(self, *args, **kwargs):
            raise AssertionError("encoded a corpus before checking nlist")

    monkeypatch.setattr("matryoshka_st.search.funnel.full_embedding_dim", lambda model: DIM)
    with pytest.raises(ValueError, match=r"nlist 100000 needs at least 3,900,000 vectors .* corpus has 40"):
        FunnelIndex.from_model(Model(), ["a text"] * 40, stages=[(16, 10)], first_stage="ivf", nlist=100000)


def test_a_shortlist_longer_than_the_corpus_is_said_to_be_capped(corpus, caplog):
    with caplog.at_level("WARNING", logger="matryoshka_st.search.funnel"):
        index = FunnelIndex.from_embeddings(corpus[:40], stages=[(16, 1000), (32, 10)])
    assert "Shortlist(s) 1000 at dim 16 are longer than the corpus (40 vectors)" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="matryoshka_st.search.funnel"):
        index.set_search_params(stages=[(16, 30), (32, 10)])
        assert caplog.text == ""
        index.set_search_params(stages=[(16, 50), (32, 10)])
    assert "50 at dim 16" in caplog.text
    assert index.search(corpus[:2], k=5)[1][:, 0].tolist() == [0, 1]
