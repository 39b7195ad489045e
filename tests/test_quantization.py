"""Codes for truncated embeddings: int8 per shell, binary, binary + rescore (matryoshka_st.quantization)."""

from __future__ import annotations

import numpy as np
import pytest

from matryoshka_st.dims import truncate_numpy
from matryoshka_st.quantization import (
    BinaryCalibration,
    Int8Calibration,
    _pair_mrr,
    binary_codes,
    int8_per_axis,
    prefix_rotation,
    rescore_binary,
    shells,
)

DIMS = [64, 32, 16, 8]


def ordered_by_variance(n: int = 2000, dim: int = 64, seed: int = 0) -> np.ndarray:
    """Unit vectors whose coordinates fall off in spread as a PCA-rotated (or Matryoshka) model's do."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)) * np.geomspace(1.0, 0.02, dim)
    return truncate_numpy(x.astype(np.float32), dim)


def test_shells_are_the_trained_dims_below_the_prefix():
    assert shells([384, 256, 128, 64, 32], 384) == [(0, 32), (32, 64), (64, 128), (128, 256), (256, 384)]
    assert shells([384, 256, 128, 64, 32], 32) == [(0, 32)]
    assert shells([384, 256, 128, 64, 32], 200) == [(0, 32), (32, 64), (64, 128), (128, 200)]  # a partial shell


def test_int8_shell_codes_track_float_cosine_where_per_axis_codes_whiten():
    x = ordered_by_variance()
    calibration = Int8Calibration.fit(x[:1000], DIMS)
    queries, docs = x[1000:1100], x[1100:]
    for dim in DIMS:
        q, d = truncate_numpy(queries, dim), truncate_numpy(docs, dim)
        exact = q @ d.T
        shell = (
            calibration.dequantize(calibration.quantize(q, dim), dim)
            @ calibration.dequantize(calibration.quantize(d, dim), dim).T
        )
        assert np.abs(shell - exact).mean() < 0.005 and np.abs(shell - exact).max() < 0.05
        codes_q, codes_d = int8_per_axis(q, x[:1000, :dim]), int8_per_axis(d, x[:1000, :dim])
        per_axis = (codes_q / np.linalg.norm(codes_q, axis=1, keepdims=True)) @ (
            codes_d / np.linalg.norm(codes_d, axis=1, keepdims=True)
        ).T
        # the per-axis ranges stretch the small tail axes to full width: the cosine of the codes drifts far off
        assert np.abs(per_axis - exact).mean() > 10 * np.abs(shell - exact).mean()


def test_int8_calibration_scales_codes_and_round_trip():
    x = ordered_by_variance()
    calibration = Int8Calibration.fit(x, DIMS, quantile=1.0)
    codes = calibration.quantize(x, 64)
    assert codes.dtype == np.int8 and codes.min() >= -127 and codes.max() <= 127
    # with quantile 1 each shell's largest coordinate maps to +-127 exactly
    for (start, end), scale in zip(shells(DIMS, 64), calibration.scales[64]):
        assert scale == pytest.approx(np.abs(x[:, start:end]).max(), rel=1e-6)
        assert np.abs(codes[:, start:end]).max() == 127
    again = Int8Calibration.from_dict(calibration.to_dict())
    assert again.dims == [64, 32, 16, 8]
    x32 = truncate_numpy(x, 32)
    np.testing.assert_array_equal(again.quantize(x32, 32), calibration.quantize(x32, 32))
    with pytest.raises(ValueError, match=r"Expected renormalised 32-dim prefixes \(N, 32\), got shape \(2000, 64\)"):
        calibration.quantize(x, 32)
    with pytest.raises(ValueError, match="No int8 calibration at dim 48"):
        calibration.quantize(x[:, :48], 48)
    with pytest.raises(ValueError, match="Unknown int8 calibration method"):
        Int8Calibration.from_dict({"method": "per-axis"})


def test_binary_codes_are_the_signs():
    x = ordered_by_variance(n=50)
    np.testing.assert_array_equal(binary_codes(x), np.where(x > 0, 1.0, -1.0))
    assert binary_codes(x[:, :13]).shape == (50, 13)  # not a multiple of 8


def test_rescore_binary_shortlists_by_hamming_and_rescores_with_the_float_query():
    x = ordered_by_variance(n=300, dim=32)
    queries, codes = x[:20], binary_codes(x[20:])
    hamming = binary_codes(queries) @ codes.T
    # a shortlist of every document is the float query against the codes
    np.testing.assert_allclose(
        rescore_binary(queries, codes, k=len(codes)), queries @ codes.T / np.sqrt(32), atol=1e-6
    )
    scores = rescore_binary(queries, codes, k=10)
    for row in range(len(queries)):
        shortlisted = np.argsort(-scores[row])[:10]
        # the 10 best are the 10 nearest in Hamming distance (up to ties at the 10th), in float-query order
        assert hamming[row, shortlisted].min() >= np.sort(hamming[row])[-10]
        expected = queries[row] @ codes[shortlisted].T
        assert np.all(np.diff(expected) <= 1e-6)
        rest = np.setdiff1d(np.arange(len(codes)), shortlisted)
        assert scores[row, shortlisted].min() > scores[row, rest].max()


def test_prefix_rotation_is_orthogonal_and_deterministic():
    rotation = prefix_rotation(48, seed=3).astype(np.float64)
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(48), atol=1e-5)
    np.testing.assert_array_equal(prefix_rotation(48, seed=3), prefix_rotation(48, seed=3))
    assert not np.allclose(prefix_rotation(48, seed=3), prefix_rotation(48, seed=4))


def test_binary_calibration_rotates_where_the_axes_signs_lose_neighbours(tmp_path):
    """A space whose variance falls off steeply over 64 axes: the tail's noisy signs spoil the Hamming neighbours at
    64 dims, which a rotation of the prefix repairs; at 8 dims (all leading axes) the axes' own signs stay."""
    x = ordered_by_variance(n=1500, dim=64)
    calibration = BinaryCalibration.fit(x, [64, 8], n_queries=300)
    assert set(calibration.recall) == {64, 8}
    assert 64 in calibration.rotations and calibration.recall[64]["rotated"] > calibration.recall[64]["axes"]
    for dim in (64, 8):  # the choice follows the measured recall
        assert (dim in calibration.rotations) == (calibration.recall[dim]["rotated"] > calibration.recall[dim]["axes"])
    prefixes = truncate_numpy(x, 64)
    np.testing.assert_array_equal(
        calibration.codes(prefixes, 64), binary_codes(prefixes @ calibration.rotations[64].T)
    )
    rotated = calibration.rotate(prefixes, 64)
    np.testing.assert_allclose(rotated @ rotated.T, prefixes @ prefixes.T, atol=1e-5)  # floats unchanged
    saved = calibration.save(tmp_path)
    assert (tmp_path / "binary_rotations.safetensors").is_file() and saved["rotated_dims"] == sorted(
        calibration.rotations, reverse=True
    )
    again = BinaryCalibration.load(tmp_path, saved)
    np.testing.assert_array_equal(again.codes(prefixes, 64), calibration.codes(prefixes, 64))
    (tmp_path / "binary_rotations.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="binary_rotations.safetensors is missing"):
        BinaryCalibration.load(tmp_path, saved)


def test_binary_calibration_on_pairs_picks_the_codes_that_rank_each_positive_higher():
    x = ordered_by_variance(n=1200, dim=64)
    rng = np.random.default_rng(1)
    anchors, positives = x[:600], truncate_numpy(x[:600] + 0.05 * rng.normal(size=(600, 64)).astype(np.float32), 64)
    calibration = BinaryCalibration.fit(x, [64, 8], pairs=(anchors, positives))
    for dim in (64, 8):
        a, p = truncate_numpy(anchors, dim), truncate_numpy(positives, dim)
        rotation = prefix_rotation(dim)
        expected = {"axes": _pair_mrr(binary_codes(a), binary_codes(p))}
        expected["rotated"] = _pair_mrr(binary_codes(a @ rotation.T), binary_codes(p @ rotation.T))
        assert calibration.recall[dim] == {key: round(value, 4) for key, value in expected.items()}
        assert (dim in calibration.rotations) == (expected["rotated"] > expected["axes"])


def test_pair_mrr_by_hand():
    codes = np.array([[1, 1, 1, 1], [1, 1, -1, -1], [-1, -1, -1, 1]], dtype=np.float32)
    positives = np.array([[1, 1, 1, -1], [1, 1, 1, 1], [-1, -1, -1, 1]], dtype=np.float32)
    # anchor 0: own 2, others 4 and -2 -> rank 2; anchor 1: own 0, others 2, -2 -> rank 2; anchor 2: own 4 -> rank 1
    assert _pair_mrr(codes, positives) == pytest.approx((0.5 + 0.5 + 1.0) / 3)
