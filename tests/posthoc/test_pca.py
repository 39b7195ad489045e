from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Dense, Normalize

from matryoshka_st.posthoc import add_pca_rotation, fit_pca_rotation
from matryoshka_st.posthoc.pca import rotation_module
from tests.conftest import TINY_DIM


def anisotropic(n: int = 2000, d: int = 32, seed: int = 0) -> np.ndarray:
    """Gaussian data with variances 1..d spread over randomly rotated axes, plus a mean offset."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return (rng.standard_normal((n, d)) * np.sqrt(np.arange(1, d + 1))) @ basis.T + 3.0


def cosine(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    return x @ x.T


def test_rotation_is_orthogonal_and_orders_variance():
    x = anisotropic()
    rotation = fit_pca_rotation(x)
    assert rotation.shape == (32, 32) and rotation.dtype == np.float32
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(32), atol=1e-5)
    variances = (x @ rotation.T).var(axis=0)
    assert np.all(np.diff(variances) <= 1e-6 * variances[0])
    # The true variances are 32, 31, ..., 1: the fitted ones recover them to sampling error.
    np.testing.assert_allclose(variances, np.arange(32, 0, -1), rtol=0.15)
    np.testing.assert_array_equal(rotation, fit_pca_rotation(x))  # deterministic, signs included


def test_uncentred_rotation_puts_the_mean_first():
    x = anisotropic()
    mean_direction = x.mean(axis=0) / np.linalg.norm(x.mean(axis=0))
    assert abs(fit_pca_rotation(x, center=False)[0] @ mean_direction) > 0.99
    assert abs(fit_pca_rotation(x, center=True)[0] @ mean_direction) < 0.5


@pytest.fixture(scope="module")
def rotated(_tiny_model, texts):
    """``(model, embeddings before, embeddings after)`` for one PCA rotation of a copy of the tiny model."""
    model = copy.deepcopy(_tiny_model)
    before = model.encode(texts)
    add_pca_rotation(model, embeddings=before)
    return model, before, model.encode(texts)


def test_full_dim_similarities_unchanged(rotated):
    model, before, after = rotated
    # The rotation sits before the final Normalize, as a bias-free Dense.
    assert isinstance(model[-1], Normalize) and isinstance(model[-2], Dense)
    assert model[-2].linear.bias is None
    assert np.abs(after - before).max() > 0.1  # the embeddings did change ...
    assert np.abs(cosine(after) - cosine(before)).max() < 1e-5  # ... their similarities did not
    np.testing.assert_allclose(np.linalg.norm(after, axis=1), 1.0, atol=1e-5)


def test_prefixes_hold_more_variance(rotated):
    _, before, after = rotated
    variances = after.var(axis=0)
    assert np.all(np.diff(variances) <= 1e-6)
    share_before = before[:, :8].var(axis=0).sum() / before.var(axis=0).sum()
    share_after = variances[:8].sum() / variances.sum()
    assert share_after > 2 * share_before


def test_saved_model_reloads_with_plain_sentence_transformer(rotated, texts, tmp_path):
    model, _, after = rotated
    expected = after[:20]
    model.save(str(tmp_path))
    types = [module["type"] for module in json.loads((tmp_path / "modules.json").read_text())]
    assert all(t.startswith("sentence_transformers.") for t in types), types  # no trust_remote_code needed
    reloaded = SentenceTransformer(str(tmp_path), device="cpu")
    np.testing.assert_allclose(reloaded.encode(texts[:20]), expected, atol=1e-6)
    small = SentenceTransformer(str(tmp_path), device="cpu", truncate_dim=16).encode(texts[:20])
    np.testing.assert_allclose(small, expected[:, :16], atol=1e-6)


def test_fits_on_texts_at_full_dim_despite_truncate_dim(tiny_model, texts, rotated):
    # Encoding texts here gives the same rotation as fitting on the embeddings in ``rotated``.
    tiny_model.truncate_dim = 16
    add_pca_rotation(tiny_model, texts=texts)
    assert tiny_model.truncate_dim == 16
    torch.testing.assert_close(tiny_model[-2].linear.weight, rotated[0][-2].linear.weight)
    assert tiny_model[-2].linear.weight.shape == (TINY_DIM, TINY_DIM)


def test_bad_inputs(tiny_model, texts):
    with pytest.raises(ValueError, match="exactly one of texts"):
        add_pca_rotation(tiny_model)
    with pytest.raises(ValueError, match="exactly one of texts"):
        add_pca_rotation(tiny_model, texts=texts, embeddings=np.zeros((3, TINY_DIM)))
    with pytest.raises(ValueError, match=f"dimension 32, but {TINY_DIM} was expected"):
        add_pca_rotation(tiny_model, embeddings=np.zeros((100, 32)))
    with pytest.raises(ValueError, match="list of strings"):
        add_pca_rotation(tiny_model, texts="one string")
    with pytest.raises(ValueError, match="texts is empty"):
        add_pca_rotation(tiny_model, texts=[])
    with pytest.raises(ValueError, match="2-D array"):
        fit_pca_rotation(np.zeros(10))
    bad = np.ones((10, 4))
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fit_pca_rotation(bad)
    with pytest.raises(ValueError, match="at least 2"):
        fit_pca_rotation(np.ones((1, 4)))
    with pytest.raises(ValueError, match="not orthogonal"):
        rotation_module(np.ones((4, 4)))
    assert len(tiny_model) == 3  # nothing was added by the failed calls


def test_few_embeddings_warn(caplog):
    rotation = fit_pca_rotation(np.random.default_rng(0).standard_normal((10, 16)))
    assert "arbitrary" in caplog.text
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(16), atol=1e-5)


def test_rotation_module_is_exact():
    rotation = fit_pca_rotation(anisotropic())
    x = torch.randn(5, 32)
    out = rotation_module(rotation)({"sentence_embedding": x})["sentence_embedding"]
    torch.testing.assert_close(out, x @ torch.from_numpy(rotation).T)


def test_fold_composes_into_the_existing_rotation(tiny_model):
    import numpy as np
    from sentence_transformers.base.modules import Dense

    from matryoshka_st.posthoc import add_pca_rotation

    texts = [f"text number {i} about {word}" for i, word in enumerate(["cats", "dogs", "stocks", "rain"] * 30)]
    before = tiny_model.encode(texts[:8], convert_to_numpy=True)
    add_pca_rotation(tiny_model, texts=texts)
    add_pca_rotation(tiny_model, texts=texts, fold=True)
    assert sum(isinstance(m, Dense) for m in tiny_model) == 1
    weight = tiny_model[len(tiny_model) - 2].linear.weight.detach().numpy()
    np.testing.assert_allclose(weight @ weight.T, np.eye(weight.shape[0]), atol=1e-4)  # still orthogonal
    after = tiny_model.encode(texts[:8], convert_to_numpy=True)
    np.testing.assert_allclose(after @ after.T, before @ before.T, atol=1e-4)  # full-dim cosines unchanged
    # the composed rotation equals the two applied one after the other: variance still sorted
    variances = tiny_model.encode(texts, convert_to_numpy=True).var(axis=0)
    assert np.all(np.diff(variances[:8]) <= 1e-6)
