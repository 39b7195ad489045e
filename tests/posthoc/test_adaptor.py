from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Dense, Normalize

from matryoshka_st.dims import truncate_numpy
from matryoshka_st.posthoc import AdaptorConfig, MatryoshkaAdaptor, add_adaptor
from tests.conftest import TINY_DIM

DIMS = [64, 32, 16, 8]


def clustered(n: int, seed: int, d: int = 64, latent: int = 12) -> np.ndarray:
    """Unit vectors with a ``latent``-dimensional structure spread evenly over all ``d`` coordinates (a fixed random
    embedding of the latent space, plus a little noise), so raw prefixes lose much of it while a good adaptor can
    keep nearly all of it in 16 coordinates. The same embedding for every ``seed``, different points."""
    mixing = np.random.default_rng(0).standard_normal((latent, d))
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((n, latent)) @ mixing + 0.3 * rng.standard_normal((n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def similarity_error(original: np.ndarray, adapted: np.ndarray, dim: int) -> float:
    """Mean |full-size cosine of the originals - cosine of the adapted prefixes| over all pairs."""
    full = truncate_numpy(original, original.shape[1])
    small = truncate_numpy(adapted, dim)
    return float(np.abs(full @ full.T - small @ small.T).mean())


def neighbour_recall(original: np.ndarray, adapted: np.ndarray, dim: int, k: int = 10) -> float:
    """Share of each point's k nearest neighbours (full size, original) found among its k nearest by prefix."""

    def knn(x):
        scores = x @ x.T
        np.fill_diagonal(scores, -np.inf)
        return np.argsort(-scores, axis=1)[:, :k]

    truth, found = knn(truncate_numpy(original, original.shape[1])), knn(truncate_numpy(adapted, dim))
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(truth, found)]))


@pytest.fixture(scope="module")
def fitted() -> MatryoshkaAdaptor:
    return MatryoshkaAdaptor.fit(clustered(1000, seed=0), dims=DIMS, steps=150, show_progress_bar=False)


def test_starts_as_identity():
    x = clustered(10, seed=0)
    np.testing.assert_array_equal(MatryoshkaAdaptor(64).transform(x), x)
    untrained = MatryoshkaAdaptor.fit(x, steps=1, learning_rate=1e-12, show_progress_bar=False)
    np.testing.assert_allclose(untrained.transform(x), x @ untrained.rotation.numpy().T, atol=1e-6)


def test_improves_prefix_similarity_on_held_out_embeddings(fitted):
    held_out = clustered(500, seed=1)
    adapted = fitted.transform(held_out)
    assert adapted.shape == held_out.shape and adapted.dtype == np.float32
    for dim in (16, 8):
        before, after = similarity_error(held_out, held_out, dim), similarity_error(held_out, adapted, dim)
        assert after < 0.7 * before, (dim, before, after)
    recall_before, recall_after = neighbour_recall(held_out, held_out, 8), neighbour_recall(held_out, adapted, 8)
    assert recall_after > recall_before + 0.05, (recall_before, recall_after)
    # The full-size space is kept close to the original.
    assert similarity_error(held_out, adapted, 64) < 0.05


def test_supervised_pairs_improve_small_dim_retrieval():
    # Anchor and positive share a weak "identity" component and nothing else: the unsupervised losses keep the
    # strong, shared-by-nobody component in the prefix; the ranking loss on pairs must bring the identity forward.
    rng = np.random.default_rng(3)
    mix_strong, mix_identity = rng.standard_normal((12, 64)), rng.standard_normal((8, 64))
    identity = rng.standard_normal((900, 8)) @ mix_identity
    anchors, positives = (rng.standard_normal((900, 12)) @ mix_strong + identity for _ in range(2))
    anchors, positives = anchors.astype(np.float32), positives.astype(np.float32)

    def top1(adaptor):
        a = truncate_numpy(adaptor.transform(anchors[:300]), 8)
        p = truncate_numpy(adaptor.transform(positives[:300]), 8)
        return float(((a @ p.T).argmax(axis=1) == np.arange(300)).mean())

    settings = {"dims": DIMS, "steps": 100, "show_progress_bar": False, "seed": 1, "pca_init": False}
    unsupervised = MatryoshkaAdaptor.fit(np.concatenate([anchors, positives]), **settings)
    supervised = MatryoshkaAdaptor.fit(anchors, pairs=(anchors[300:], positives[300:]), **settings)
    assert top1(supervised) > top1(unsupervised) + 0.1, (top1(supervised), top1(unsupervised))  # measured .22 vs .05


def test_dense_export_is_exact(fitted):
    x = torch.from_numpy(clustered(50, seed=4))
    features = {"sentence_embedding": x}
    for module in fitted.to_modules():
        features = module(features)
    with torch.no_grad():
        torch.testing.assert_close(features["sentence_embedding"], fitted(x), atol=1e-5, rtol=1e-5)


def test_save_and_load(fitted, tmp_path):
    fitted.save(tmp_path / "adaptor")
    loaded = MatryoshkaAdaptor.load(tmp_path / "adaptor")
    assert (loaded.dim, loaded.hidden_dim, loaded.dims, loaded.rotate) == (64, 64, DIMS, True)
    x = clustered(20, seed=5)
    np.testing.assert_array_equal(loaded.transform(x), fitted.transform(x))
    with pytest.raises(FileNotFoundError, match="adaptor_config.json"):
        MatryoshkaAdaptor.load(tmp_path)


def test_add_adaptor_saves_a_plain_sentence_transformer(tiny_model, texts, tmp_path):
    base = tiny_model.encode(texts)
    add_adaptor(tiny_model, embeddings=base, dims=[64, 16], steps=20, show_progress_bar=False)
    assert [type(m) for m in list(tiny_model)[-4:]] == [Dense, Dense, Dense, Normalize]
    expected = tiny_model.encode(texts[:20])
    tiny_model.save(str(tmp_path))
    types = [module["type"] for module in json.loads((tmp_path / "modules.json").read_text())]
    assert all(t.startswith("sentence_transformers.") for t in types), types
    reloaded = SentenceTransformer(str(tmp_path), device="cpu")
    np.testing.assert_allclose(reloaded.encode(texts[:20]), expected, atol=1e-6)
    small = SentenceTransformer(str(tmp_path), device="cpu", truncate_dim=16).encode(texts[:20])
    np.testing.assert_allclose(small, expected[:, :16], atol=1e-6)


def test_add_a_fitted_adaptor(tiny_model, fitted, texts):
    base = tiny_model.encode(texts[:10])
    add_adaptor(tiny_model, adaptor=fitted)
    np.testing.assert_allclose(tiny_model.encode(texts[:10]), truncate_numpy(fitted.transform(base), 64), atol=1e-5)


def test_bad_inputs(tiny_model, fitted):
    x = clustered(100, seed=0)
    with pytest.raises(ValueError, match="Unknown adaptor setting.*'stepz'"):
        MatryoshkaAdaptor.fit(x, stepz=10)
    with pytest.raises(ValueError, match="exceed the model's embedding dimension 64"):
        MatryoshkaAdaptor.fit(x, dims=[128, 64])
    with pytest.raises(ValueError, match="800 anchors but 799 positives"):
        MatryoshkaAdaptor.fit(x, pairs=(clustered(800, 0), clustered(799, 0)))
    with pytest.raises(ValueError, match="Invalid adaptor settings.*learning_rate"):
        AdaptorConfig(learning_rate=0)
    with pytest.raises(ValueError, match="dimension 32, but 64 was expected"):
        fitted.transform(np.zeros((3, 32)))
    with pytest.raises(ValueError, match="exactly one of texts"):
        add_adaptor(tiny_model)
    with pytest.raises(ValueError, match="not both"):
        add_adaptor(tiny_model, adaptor=fitted, embeddings=x)
    with pytest.raises(ValueError, match="works on 16-d embeddings but the model outputs 64-d"):
        add_adaptor(tiny_model, adaptor=MatryoshkaAdaptor(16))
    assert len(tiny_model) == 3 and TINY_DIM == 64
