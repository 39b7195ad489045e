"""Binary first stages that take their sign bits after the prefix rotations a trained model saved."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from matryoshka_st.quantization import BINARY_ROTATIONS_NAME, BinaryCalibration, prefix_rotation
from matryoshka_st.search import FunnelIndex

faiss = pytest.importorskip("faiss")

DIM = 64


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture()
def corpus() -> np.ndarray:
    # variance falling along the axes, as after a PCA rotation: the tail's sign bits are noisy
    scales = np.exp(-np.arange(DIM) / 12.0)
    return _unit(np.random.default_rng(0).normal(size=(600, DIM)) * scales)


@pytest.fixture()
def calibration() -> BinaryCalibration:
    return BinaryCalibration({32: prefix_rotation(32, seed=3), DIM: prefix_rotation(DIM, seed=3)}, {})


def _stored_codes(index: FunnelIndex) -> np.ndarray:
    flat = index._index
    return faiss.vector_to_array(flat.xb).reshape(flat.ntotal, flat.code_size)


def _hamming_shortlist(corpus_prefixes: np.ndarray, query_prefixes: np.ndarray, size: int) -> list[set[int]]:
    bits = np.where(corpus_prefixes > 0, 1, -1)
    query_bits = np.where(query_prefixes > 0, 1, -1)
    similarity = query_bits @ bits.T  # (Q, N): larger is a smaller Hamming distance
    return [set(np.argsort(-row, kind="stable")[:size].tolist()) for row in similarity]


def _unit_prefix(x: np.ndarray, dim: int) -> np.ndarray:
    return _unit(x[:, :dim])


def test_binary_first_stage_takes_its_bits_after_the_saved_rotation(corpus, calibration):
    index = FunnelIndex.from_embeddings(
        corpus, stages=[(32, 50)], first_stage="binary", binary_calibration=calibration
    )
    rotated = _unit_prefix(corpus, 32) @ calibration.rotations[32].T
    np.testing.assert_array_equal(_stored_codes(index), np.packbits(rotated > 0, axis=-1))
    plain = FunnelIndex.from_embeddings(corpus, stages=[(32, 50)], first_stage="binary")
    assert not np.array_equal(_stored_codes(index), _stored_codes(plain))
    # the query's bits are rotated too: the shortlist is the Hamming shortlist of the rotated codes
    queries = corpus[:8]
    ids = index._shortlist(queries)
    expected = _hamming_shortlist(rotated, _unit_prefix(queries, 32) @ calibration.rotations[32].T, 50)
    # equal Hamming distances tie at the cut: compare with the rows strictly inside it
    for got, want in zip(ids, expected):
        assert len(set(got.tolist()) & want) >= 45
    # a generous schedule still returns exact full-dim results
    generous = FunnelIndex.from_embeddings(
        corpus, stages=[(32, len(corpus))], first_stage="binary", binary_calibration=calibration
    )
    exact = np.argsort(-(queries @ corpus.T), axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(generous.search(queries, k=10)[1], exact)


def test_rotated_bits_find_more_of_the_float_neighbours_on_a_variance_ordered_space(corpus, calibration):
    queries, docs = corpus[:100], corpus[100:]
    exact = np.argsort(-(queries @ docs.T), axis=1)[:, :10]

    def recall(calibration):
        index = FunnelIndex.from_embeddings(
            docs, stages=[(DIM, 10)], first_stage="binary", binary_calibration=calibration
        )
        ids = index._shortlist(queries)
        return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids.tolist(), exact.tolist())])

    assert recall(calibration) > recall(None) + 0.05


def test_save_and_load_keep_the_rotations(corpus, calibration, tmp_path):
    index = FunnelIndex.from_embeddings(
        corpus, stages=[(32, 100), (48, 20)], first_stage="binary_hnsw", binary_calibration=calibration
    )
    folder = tmp_path / "index"
    index.save(folder)
    assert (folder / BINARY_ROTATIONS_NAME).is_file()
    assert json.loads((folder / "funnel_index.json").read_text())["binary_calibration"]["rotated_dims"] == [DIM, 32]
    loaded = FunnelIndex.load(folder)
    np.testing.assert_array_equal(loaded.binary_calibration.rotations[32], calibration.rotations[32])
    np.testing.assert_array_equal(loaded.search(corpus[:5], k=5)[1], index.search(corpus[:5], k=5)[1])
    # an index without rotations saved over it (the folder holds another file too) leaves no stale rotations
    (folder / "notes.txt").write_text("kept")
    FunnelIndex.from_embeddings(corpus, stages=[(32, 100)], first_stage="binary").save(folder)
    assert not (folder / BINARY_ROTATIONS_NAME).exists() and (folder / "notes.txt").read_text() == "kept"
    assert FunnelIndex.load(folder).binary_calibration is None
    # a damaged rotations file is one clear error
    index.save(folder)
    (folder / BINARY_ROTATIONS_NAME).unlink()
    with pytest.raises(ValueError, match="sign-bit rotations cannot be read"):
        FunnelIndex.load(folder)


def test_tune_builds_every_first_dim_in_the_rotated_code_space(corpus, calibration):
    index = FunnelIndex.from_embeddings(
        corpus, stages=[(DIM, 200)], first_stage="binary", binary_calibration=calibration
    )
    index.tune(corpus[:60], target_recall=0.9, k=10, first_dims=[32])
    assert index.stages[0][0] == 32
    rotated = _unit_prefix(corpus, 32) @ calibration.rotations[32].T
    np.testing.assert_array_equal(_stored_codes(index), np.packbits(rotated > 0, axis=-1))


def test_a_calibration_needs_a_binary_first_stage(corpus, calibration):
    with pytest.raises(ValueError, match="needs a binary first stage"):
        FunnelIndex.from_embeddings(corpus, stages=[(32, 50)], first_stage="int8", binary_calibration=calibration)


def test_from_model_reads_the_rotations_of_a_trained_folder(bundled_model_path, tmp_path):
    from sentence_transformers import SentenceTransformer

    folder = tmp_path / "model"
    shutil.copytree(bundled_model_path, folder)
    saved = BinaryCalibration({64: prefix_rotation(64, seed=1)}, {}).save(folder)
    (folder / "matryoshka_config.json").write_text(
        json.dumps({"matryoshka_dims": [384, 64], "matryoshka_weights": [1, 1], "binary_calibration": saved})
    )
    model = SentenceTransformer(str(folder), device="cpu")
    texts = ["a cat sits on the mat", "stock markets fell", "a kitten naps", "rain tomorrow", "the cat sleeps"]
    index = FunnelIndex.from_model(
        model, texts, stages=[(64, 5)], first_stage="binary", show_progress_bar=False, model_name_or_path=str(folder)
    )
    prefixes = _unit(model.encode(texts)[:, :64])
    expected = np.packbits(prefixes @ prefix_rotation(64, seed=1).T > 0, axis=-1)
    np.testing.assert_array_equal(_stored_codes(index), expected)
    # a folder without rotations (the plain bundled model) takes the axes' own signs
    plain = FunnelIndex.from_model(
        model,
        texts,
        stages=[(64, 5)],
        first_stage="binary",
        show_progress_bar=False,
        model_name_or_path=bundled_model_path,
    )
    assert plain.binary_calibration is None
    np.testing.assert_array_equal(_stored_codes(plain), np.packbits(prefixes > 0, axis=-1))
