"""Rotations inside the Matryoshka shells: float scores at every trained dim unchanged, sign bits balanced."""

from __future__ import annotations

import numpy as np
import pytest

from matryoshka_st.dims import truncate_numpy
from matryoshka_st.posthoc import add_pca_rotation
from matryoshka_st.posthoc.shell_rotation import add_shell_rotation, fit_shell_rotation
from matryoshka_st.quantization import binary_codes

from .._data import DOCS, QUERIES

DIMS = [64, 32, 16, 8]
TEXTS = QUERIES + DOCS + [f"{a} and {b}" for a in QUERIES for b in DOCS]


def skewed(n: int = 3000, dim: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, dim)) * np.geomspace(1.0, 0.05, dim)).astype(np.float32)


@pytest.mark.parametrize("method", ["itq", "hadamard"])
def test_rotation_is_orthogonal_and_block_diagonal_over_the_shells(method):
    rotation = fit_shell_rotation(skewed(), DIMS, method=method).astype(np.float64)
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(64), atol=1e-5)
    bounds = [0, 8, 16, 32, 64]
    mask = np.zeros((64, 64), dtype=bool)
    for start, end in zip(bounds, bounds[1:]):
        mask[start:end, start:end] = True
    assert np.all(rotation[~mask] == 0)
    assert not np.allclose(rotation, np.eye(64))


def test_itq_balances_the_variance_of_the_bits_inside_each_shell():
    x = skewed()
    rotated = x @ fit_shell_rotation(x, DIMS, method="itq").T
    # ITQ's objective: the codes sit closer to the (scaled) data than before the rotation
    before = np.linalg.norm(binary_codes(x[:, 32:]) - x[:, 32:] / np.abs(x[:, 32:]).mean())
    after = np.linalg.norm(binary_codes(rotated[:, 32:]) - rotated[:, 32:] / np.abs(rotated[:, 32:]).mean())
    assert after < 0.97 * before
    for start, end in [(0, 8), (8, 16), (16, 32), (32, 64)]:
        spread_before = x[:, start:end].var(axis=0)
        spread_after = rotated[:, start:end].var(axis=0)
        # each bit of a shell now stands for about the same variance (Hamming distance weighs them alike)
        assert spread_after.max() / spread_after.min() < min(1.3, spread_before.max() / spread_before.min())
        assert spread_after.sum() == pytest.approx(spread_before.sum(), rel=1e-4)  # a rotation inside the shell


def test_hadamard_needs_power_of_two_shells():
    with pytest.raises(ValueError, match="power-of-two"):
        fit_shell_rotation(None, [64, 48], method="hadamard")
    with pytest.raises(ValueError, match="ITQ is fitted on embeddings"):
        fit_shell_rotation(None, DIMS, method="itq")
    with pytest.raises(ValueError, match="Unknown shell rotation"):
        fit_shell_rotation(None, DIMS, method="pca")


@pytest.mark.parametrize("method", ["itq", "hadamard"])
def test_model_scores_at_every_trained_dim_unchanged(tiny_model, method):
    model = add_pca_rotation(tiny_model, texts=TEXTS)
    before = model.encode(TEXTS, convert_to_numpy=True)
    add_shell_rotation(model, DIMS, texts=TEXTS, method=method)
    assert len(model) == 4  # composed into the PCA module, no second one
    after = model.encode(TEXTS, convert_to_numpy=True)
    for dim in DIMS:  # the proof: cosine at each trained dim to 1e-5
        b, a = truncate_numpy(before, dim), truncate_numpy(after, dim)
        np.testing.assert_allclose(a @ a.T, b @ b.T, atol=1e-5)
    # a prefix that cuts a shell does change, and the signs do too
    b, a = truncate_numpy(before, 24), truncate_numpy(after, 24)
    assert np.abs(a @ a.T - b @ b.T).max() > 1e-3
    assert (binary_codes(before) != binary_codes(after)).mean() > 0.1


def test_add_shell_rotation_checks_its_dims(tiny_model):
    with pytest.raises(ValueError, match="must be the model's dimension 64"):
        add_shell_rotation(tiny_model, [32, 16], texts=TEXTS)
