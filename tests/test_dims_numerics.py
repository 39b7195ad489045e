"""truncate / truncate_numpy in half precision: the norm is taken in float32, so nothing overflows or turns NaN."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from matryoshka_st.dims import truncate, truncate_numpy

HALF = [torch.float16, torch.bfloat16]


@pytest.mark.parametrize("dtype", HALF)
def test_zero_vector_stays_zero(dtype):
    out = truncate(torch.zeros(3, 8, dtype=dtype), 4)
    assert out.dtype == dtype
    assert torch.equal(out, torch.zeros(3, 4, dtype=dtype))


def test_values_near_float16_max_do_not_overflow():
    big = torch.full((2, 8), 60000.0, dtype=torch.float16)  # the sum of squares, 1.4e10, is far above 65504
    # what the plain float16 computation gives, the bug this guards against
    assert torch.equal(F.normalize(big[..., :4], dim=-1), torch.zeros(2, 4, dtype=torch.float16))
    out = truncate(big, 4)
    assert out.dtype == torch.float16
    assert torch.equal(out, torch.full((2, 4), 0.5, dtype=torch.float16))


@pytest.mark.parametrize("dtype", HALF)
def test_half_matches_float32_within_one_rounding(dtype):
    torch.manual_seed(0)
    x = torch.randn(16, 64) * torch.logspace(-3, 2, 16).unsqueeze(1)  # rows from 1e-3 to 1e2 in scale
    out = truncate(x.to(dtype), 32)
    reference = truncate(x.to(dtype).float(), 32)
    assert out.dtype == dtype
    # one rounding of a value in [-1, 1] to the half dtype: 2**-11 (fp16) or 2**-8 (bf16)
    eps = torch.finfo(dtype).eps
    assert (out.float() - reference).abs().max().item() <= eps
    assert torch.allclose(out.float().norm(dim=-1), torch.ones(16), atol=4 * eps)


def test_float32_and_float64_keep_their_dtype():
    x = torch.tensor([[3.0, 4.0, 12.0]], dtype=torch.float64)
    assert truncate(x, 2).dtype == torch.float64
    assert torch.allclose(truncate(x.float(), 2), torch.tensor([[0.6, 0.8]]))


def test_truncate_numpy_float16_input():
    x = np.array([[60000.0] * 8, [0.0] * 8, [3.0, 4.0, 0, 0, 0, 0, 0, 0]], dtype=np.float16)
    out = truncate_numpy(x, 4)
    assert out.dtype == np.float32  # FAISS takes float32 only
    np.testing.assert_allclose(out, [[0.5] * 4, [0.0] * 4, [0.6, 0.8, 0, 0]], atol=1e-6)
    assert np.isfinite(out).all()
