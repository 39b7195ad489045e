from __future__ import annotations

import numpy as np
import pytest
import torch

from matryoshka_st.search import FunnelIndex, validate_stages

pytest.importorskip("faiss")

DIM = 64
FIRST_STAGES = ["float", "int8", "binary"]


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture()
def corpus() -> np.ndarray:
    return _unit(np.random.default_rng(0).normal(size=(400, DIM)))


@pytest.fixture()
def queries() -> np.ndarray:
    return _unit(np.random.default_rng(1).normal(size=(12, DIM)))


def _exact(corpus: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = queries @ corpus.T
    ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, ids, axis=1), ids


@pytest.mark.parametrize("first_stage", FIRST_STAGES)
def test_whole_corpus_shortlist_equals_exact_search(corpus, queries, first_stage):
    index = FunnelIndex.from_embeddings(corpus, stages=[(16, len(corpus))], first_stage=first_stage)
    scores, ids = index.search(queries, k=10)
    exact_scores, exact_ids = _exact(corpus, queries, 10)
    np.testing.assert_array_equal(ids, exact_ids)
    np.testing.assert_allclose(scores, exact_scores, rtol=0, atol=1e-6)
    assert ids.dtype == np.int64 and scores.dtype == np.float32 and scores.shape == (12, 10)


@pytest.mark.parametrize("first_stage", FIRST_STAGES)
def test_cascade_equals_exact_search_when_shortlists_hold_the_neighbours(corpus, queries, first_stage):
    # Five near-copies of each query beat every random vector at every prefix length, so each stage's shortlist
    # is guaranteed to hold the true top 5 and the funnel must return exactly what brute force returns.
    rng = np.random.default_rng(2)
    planted = _unit(np.repeat(queries, 5, axis=0) + 0.002 * rng.normal(size=(len(queries) * 5, DIM)))
    full = np.concatenate([corpus, planted])
    index = FunnelIndex.from_embeddings(full, stages=[(16, 60), (32, 20), (48, 8)], first_stage=first_stage)
    scores, ids = index.search(queries, k=5)
    exact_scores, exact_ids = _exact(full, queries, 5)
    np.testing.assert_array_equal(np.sort(ids, axis=1), np.sort(exact_ids, axis=1))
    np.testing.assert_array_equal(ids, exact_ids)
    np.testing.assert_allclose(scores, exact_scores, rtol=0, atol=1e-6)
    assert (ids >= len(corpus)).all()


def test_short_shortlist_can_miss_neighbours_but_scores_stay_exact(corpus, queries):
    index = FunnelIndex.from_embeddings(corpus, stages=[(8, 20)])
    scores, ids = index.search(queries, k=10)
    exact_scores, exact_ids = _exact(corpus, queries, 10)
    # Whatever the funnel returns is scored at the full dim and can only be worse than the exact top 10.
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ corpus.T, ids, axis=1), atol=1e-6)
    assert (scores <= exact_scores + 1e-6).all()
    assert (np.diff(scores, axis=1) <= 1e-7).all()


def test_full_dim_below_embedding_size_searches_truncated_vectors(corpus, queries):
    index = FunnelIndex.from_embeddings(corpus, stages=[(8, len(corpus))], full_dim=32)
    scores, ids = index.search(queries, k=5)  # 64-dim queries are truncated like the corpus
    exact_scores, exact_ids = _exact(_unit(corpus[:, :32]), _unit(queries[:, :32]), 5)
    np.testing.assert_array_equal(ids, exact_ids)
    np.testing.assert_allclose(scores, exact_scores, atol=1e-6)
    np.testing.assert_array_equal(index.search(queries[:, :32], k=5)[1], ids)


def test_unnormalised_and_torch_inputs_give_cosine_scores(corpus, queries):
    index = FunnelIndex.from_embeddings(torch.from_numpy(corpus * 3.0), stages=[(16, len(corpus))])
    scores, ids = index.search(torch.from_numpy(queries * 0.5), k=3)
    exact_scores, exact_ids = _exact(corpus, queries, 3)
    np.testing.assert_array_equal(ids, exact_ids)
    np.testing.assert_allclose(scores, exact_scores, atol=1e-6)


def test_shortlist_longer_than_corpus_is_clamped(queries):
    small = _unit(np.random.default_rng(3).normal(size=(7, DIM)))
    scores, ids = FunnelIndex.from_embeddings(small, stages=[(16, 100), (32, 50)]).search(queries, k=7)
    np.testing.assert_array_equal(ids, _exact(small, queries, 7)[1])


@pytest.mark.parametrize("first_stage", FIRST_STAGES)
@pytest.mark.parametrize("mmap", [False, True])
def test_save_load_roundtrip(tmp_path, corpus, queries, first_stage, mmap):
    ids_text = [f"doc-{i}" for i in range(len(corpus))]
    index = FunnelIndex.from_embeddings(
        corpus, stages=[(16, 100), (32, 30)], first_stage=first_stage, doc_ids=ids_text
    )
    index.save(tmp_path / "index")
    loaded = FunnelIndex.load(tmp_path / "index", mmap=mmap)
    for got, expected in zip(loaded.search(queries, k=10), index.search(queries, k=10)):
        np.testing.assert_array_equal(got, expected)
    assert loaded.stages == index.stages and loaded.first_stage == first_stage and loaded.doc_ids == ids_text
    assert loaded.memory_report() == index.memory_report()
    assert isinstance(loaded.embeddings, np.memmap) == mmap


@pytest.mark.parametrize(("first_stage", "first_bytes"), [("float", 64.0), ("int8", 16.0), ("binary", 2.0)])
def test_memory_report(corpus, first_stage, first_bytes):
    index = FunnelIndex.from_embeddings(corpus, stages=[(16, 100), (32, 30)], first_stage=first_stage)
    report = index.memory_report()
    rerank = 4 * DIM + 4  # float32 vectors + one prefix norm for the 32-dim stage
    # Measured from the FAISS index as serialised: the codes plus a header (and int8 ranges) of a few hundred bytes.
    assert first_bytes <= report.first_stage_bytes_per_vector <= first_bytes + 300 / len(corpus)
    assert report.rerank_bytes_per_vector == rerank
    assert index.bytes_per_vector() == report.first_stage_bytes_per_vector + rerank
    assert report.total_bytes == round(index.bytes_per_vector() * len(corpus))


@pytest.mark.parametrize(
    ("stages", "first_stage", "match"),
    [
        ([], "float", "stages is empty"),
        ([(128, 10)], "float", "dim 128 is not in the embedding size"),
        ([(0, 10)], "float", "dim 0 is not in the embedding size"),
        ([(32, 100), (16, 10)], "float", "dims must increase"),
        ([(16, 100), (32, 100)], "float", "Shortlist sizes must decrease"),
        ([(16, 100), (64, 10)], "float", "final rerank always does"),
        ([(16, 0)], "float", "shortlist must be >= 1"),
        ([(16.5, 10)], "float", "pair of integers"),
        ([(12, 10)], "binary", "divisible by 8"),
        ([(16, 10)], "int4", "first_stage must be one of"),
    ],
)
def test_bad_stages(corpus, stages, first_stage, match):
    with pytest.raises(ValueError, match=match):
        FunnelIndex.from_embeddings(corpus, stages=stages, first_stage=first_stage)


def test_validate_stages_returns_tuples():
    assert validate_stages([[64, 200], [128, 50]], full_dim=384) == [(64, 200), (128, 50)]
    assert validate_stages([(384, 100)], full_dim=384, first_stage="binary") == [(384, 100)]
    assert validate_stages([(384, 100), (128, 20)], full_dim=384, first_stage="binary") == [(384, 100), (128, 20)]
    with pytest.raises(ValueError, match="dims must increase, but stage 2 has dim 64 after 128"):
        validate_stages([(384, 100), (128, 20), (64, 10)], full_dim=384, first_stage="int8")


def test_bad_search_arguments(corpus, queries):
    index = FunnelIndex.from_embeddings(corpus, stages=[(16, 100), (32, 20)])
    with pytest.raises(ValueError, match="larger than the corpus"):
        FunnelIndex.from_embeddings(corpus[:5], stages=[(16, 100)]).search(queries, k=6)
    with pytest.raises(ValueError, match="larger than the last shortlist"):
        index.search(queries, k=21)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        index.search(queries, k=0)
    with pytest.raises(ValueError, match="Queries have dim 48"):
        index.search(queries[:, :48], k=5)
    with pytest.raises(ValueError, match="2-d array"):
        index.search(queries[0], k=5)
    with pytest.raises(ValueError, match="need a model"):
        index.search(["a text query"], k=5)


def test_bad_corpus():
    with pytest.raises(ValueError, match="corpus is empty"):
        FunnelIndex.from_embeddings(np.zeros((0, DIM), np.float32), stages=[(16, 10)])
    with pytest.raises(ValueError, match="2-d array"):
        FunnelIndex.from_embeddings(np.zeros(DIM, np.float32), stages=[(16, 10)])
    with pytest.raises(ValueError, match="full_dim 65 is not in the embedding size"):
        FunnelIndex.from_embeddings(np.ones((3, DIM), np.float32), stages=[(16, 10)], full_dim=65)
    with pytest.raises(ValueError, match="doc_ids has 2 ids for 3"):
        FunnelIndex.from_embeddings(np.ones((3, DIM), np.float32), stages=[(16, 10)], doc_ids=["a", "b"])


def test_load_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="No funnel index"):
        FunnelIndex.load(tmp_path)


# Words from the tiny model's vocabulary, so no two texts collapse to the same [UNK] embedding.
TEXTS = [
    "the hackers wrote code",
    "jehovah spoke to moses",
    "a computer network file",
    "the old city law",
    "his father went away",
    "the user memory usage",
    "holy land of david",
    "children of the earth",
]


def test_from_model_encodes_full_vectors_and_searches_texts(tiny_model):
    tiny_model.truncate_dim = 16  # must be ignored: the index needs the full vectors, then restored
    index = FunnelIndex.from_model(tiny_model, TEXTS, stages=[(16, len(TEXTS))], show_progress_bar=False)
    assert tiny_model.truncate_dim == 16 and index.embeddings.shape == (len(TEXTS), 64)
    tiny_model.truncate_dim = None
    corpus = tiny_model.encode(TEXTS, convert_to_numpy=True)
    queries = ["hackers write computer code", "moses and david"]
    all_scores = _unit(tiny_model.encode(queries)) @ _unit(corpus).T
    scores, ids = index.search(queries, k=3)
    # Compared through scores so that tied texts (equal embeddings) may come in either order.
    np.testing.assert_allclose(scores, -np.sort(-all_scores, axis=1)[:, :3], atol=1e-5)
    np.testing.assert_allclose(scores, np.take_along_axis(all_scores, ids, axis=1), atol=1e-5)


def test_from_model_checks_arguments_before_encoding(tiny_model, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("encode must not run on bad arguments")

    monkeypatch.setattr(tiny_model, "encode", fail)
    with pytest.raises(ValueError, match="dim 128 is not in the embedding size: use 1 <= dim <= 64"):
        FunnelIndex.from_model(tiny_model, TEXTS, stages=[(128, 5)])
    with pytest.raises(ValueError, match="full_dim 96 is not in the model's embedding size"):
        FunnelIndex.from_model(tiny_model, TEXTS, stages=[(16, 5)], full_dim=96)
    with pytest.raises(ValueError, match="corpus is empty"):
        FunnelIndex.from_model(tiny_model, [], stages=[(16, 5)])
