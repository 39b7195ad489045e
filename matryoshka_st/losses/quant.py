"""Quantization-aware training terms: the inner loss on fake-quantized prefixes, with straight-through gradients.

``MatryoshkaLoss(quant_weight=...)`` adds, at each chosen dim, the inner loss on the binary and/or int8 codes of the
truncated embeddings, so the prefixes learn to survive quantization as well as truncation. The codes are the ones
the project scores with (:mod:`matryoshka_st.quantization`): binary = the sign of every coordinate (+-1, here
scaled to unit length), int8 = symmetric codes with one scale per Matryoshka shell, dequantised. The rounding has
no gradient, so the backward pass treats it as the identity (the straight-through estimator of Bengio et al. 2013):
the forward pass sees the codes, the gradient reaches the float prefix unchanged.

sentence-transformers has only post-hoc ``quantize_embeddings``; the fake quantization with straight-through
gradients is written here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from matryoshka_st.quantization import INT8_QUANTILE, shells

QUANT_PRECISIONS = ("binary", "int8")


def _straight_through(prefixes: Tensor, codes: Tensor) -> Tensor:
    # the value of `codes` exactly (x - x is 0), the gradient of `prefixes` (identity)
    return codes + (prefixes - prefixes.detach())


def fake_quantize(prefixes: Tensor, precision: str, dims: Sequence[int] = ()) -> Tensor:
    """Fake-quantize renormalised ``(N, d)`` prefixes: the values of their codes, the gradient of the identity.

    - ``"binary"``: ``sign(x)`` (``+1`` for ``x > 0``, else ``-1``, as ``quantize_embeddings`` sets a bit for a positive
      coordinate), divided by ``sqrt(d)`` so the code has unit length.
    - ``"int8"``: ``round(127 x / s) * s / 127`` clipped to ``[-127, 127]`` codes, with one scale ``s`` per shell
      ``[d_{k-1}, d_k)`` of ``dims`` (the Matryoshka dims, as :class:`~matryoshka_st.quantization.Int8Calibration`):
      the ``INT8_QUANTILE`` of ``|x|`` over the whole shell in these rows (detached). ``Int8Calibration`` takes
      that quantile on the shell's widest axis instead, so the saved scales are at least as wide as these.

    Computed in float32 and returned in the input's dtype.

    Example:
        >>> x = torch.tensor([[0.6, -0.8]], requires_grad=True)
        >>> fake_quantize(x, "binary").detach()
        tensor([[ 0.7071, -0.7071]])
    """
    x = prefixes.float()
    dim = x.shape[-1]
    with torch.no_grad():
        if precision == "binary":
            codes = torch.where(x > 0, 1.0, -1.0) / math.sqrt(dim)
        elif precision == "int8":
            codes = torch.empty_like(x)
            for start, end in shells(dims, dim):
                shell = x[:, start:end]
                scale = torch.quantile(shell.abs().flatten(), INT8_QUANTILE).clamp_min(1e-12)
                codes[:, start:end] = (shell * (127.0 / scale)).round().clamp(-127, 127) * (scale / 127.0)
        else:
            raise ValueError(f"quant_precision must be one of {QUANT_PRECISIONS}, got {precision!r}.")
    return _straight_through(x, codes).to(prefixes.dtype)


def check_quant_arguments(
    quant_weight: float = 0.0,
    quant_precision: str | Sequence[str] = "binary",
    quant_dims: Sequence[int] | None = None,
    quant_warmup: int = 0,
) -> tuple[str, ...]:
    """``ValueError`` unless ``quant_weight`` is a finite number ``>= 0``, ``quant_precision`` one of
    :data:`QUANT_PRECISIONS` or a non-empty sequence of them without repeats, ``quant_dims`` ``None`` or a non-empty
    sequence of distinct positive integers, and ``quant_warmup`` an integer ``>= 0``. Returns the precisions as a
    tuple. (Whether ``quant_dims`` are among the loss's dims is checked by :class:`MatryoshkaLoss`.)"""
    if isinstance(quant_weight, bool) or not isinstance(quant_weight, (int, float)) or not math.isfinite(quant_weight):
        raise ValueError(f"quant_weight must be a finite number, got {quant_weight!r}.")
    if quant_weight < 0:
        raise ValueError(f"quant_weight must be >= 0 (0 turns the quantization terms off), got {quant_weight}.")
    precisions = (quant_precision,) if isinstance(quant_precision, str) else tuple(quant_precision)
    if not precisions or any(p not in QUANT_PRECISIONS for p in precisions) or len(set(precisions)) < len(precisions):
        raise ValueError(
            f"quant_precision must be one of {QUANT_PRECISIONS} or a list of them without repeats, "
            f"got {quant_precision!r}."
        )
    if quant_dims is not None:
        dims = list(quant_dims) if not isinstance(quant_dims, (str, bytes)) else [quant_dims]
        if (
            not dims
            or any(isinstance(d, bool) or not isinstance(d, int) or d <= 0 for d in dims)
            or len(set(dims)) < len(dims)
        ):
            raise ValueError(
                f"quant_dims must be None (every Matryoshka dim) or distinct positive integers, got {quant_dims!r}."
            )
    if isinstance(quant_warmup, bool) or not isinstance(quant_warmup, int) or quant_warmup < 0:
        raise ValueError(f"quant_warmup must be an integer >= 0 (training steps), got {quant_warmup!r}.")
    return precisions


__all__ = ["QUANT_PRECISIONS", "check_quant_arguments", "fake_quantize"]
