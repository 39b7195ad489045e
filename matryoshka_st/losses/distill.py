"""Self-distillation across dimensions: the full embedding teaches its own prefixes.

At each smaller dimension the in-batch similarity distribution (each anchor against every candidate of the batch) is
pulled towards the same distribution at the full dimension, which is detached and acts as the teacher. This is the
KL alignment term of 2DMSE / ESE (Li et al. 2024) and Starbucks (Zhuang et al. 2024) and the full-to-small similarity
distillation of SMEC (2025). It needs no extra encoder pass: it reads the embeddings the Matryoshka adapter already
has. sentence-transformers has no such term for dimensions (its ``AdaptiveLayerLoss`` distils across layers).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from sentence_transformers.util import all_gather_with_grad, get_rank
from torch import Tensor

from matryoshka_st.losses._shells import prefix_cosines


def candidates_of(columns: Sequence[Tensor], gather: bool = False) -> tuple[Tensor, Tensor | None]:
    """The candidates ``(C, D)`` the anchors (first column) are compared with, and the mask of each anchor's own row
    among them (``None`` unless there is one column, whose anchors are compared with each other).

    Candidates are the other columns stacked (positives, then hard negatives), as in
    ``MultipleNegativesRankingLoss``. ``gather`` takes them from every process (with gradients), as that loss does
    with ``gather_across_devices=True``: this process's anchors against the candidates of all processes.
    """
    anchors = columns[0]
    rest = list(columns[1:]) or [anchors]
    if gather:
        rest = [all_gather_with_grad(column) for column in rest]
    candidates = torch.cat(rest) if len(rest) > 1 else rest[0]  # (C, D)
    if len(columns) > 1:
        return candidates, None
    offset = get_rank() * len(anchors) if gather and len(candidates) > len(anchors) else 0
    mask = torch.zeros(len(anchors), len(candidates), dtype=torch.bool, device=anchors.device)
    rows = torch.arange(len(anchors), device=anchors.device)
    mask[rows, rows + offset] = True
    return candidates, mask


def distillation_from_cosines(
    cosines: dict[int, Tensor],
    full_dim: int,
    dims: Sequence[int],
    temperature: float = 1.0,
    scale: float = 20.0,
    self_mask: Tensor | None = None,
) -> dict[int, Tensor]:
    """The terms of :func:`similarity_distillation` from the anchors-to-candidates cosine similarities ``(B, C)`` at
    ``full_dim`` (the teacher, detached here) and at each of ``dims``, e.g. those the inner loss already computed.
    ``self_mask`` ``(B, C)`` marks candidates left out (an anchor compared with itself)."""

    def log_probs(cosine: Tensor) -> Tensor:
        logits = scale * cosine.float() / temperature
        if self_mask is not None:
            logits = logits.masked_fill(self_mask, float("-inf"))
        return F.log_softmax(logits, dim=-1)

    teacher = log_probs(cosines[full_dim].detach())
    small = [dim for dim in dims if dim < full_dim]
    terms = {dim: teacher.new_zeros(()) for dim in dims if dim >= full_dim}
    if small:
        # every dim at once, stacked (K, B, C): a handful of operations per step instead of per dim
        pointwise = teacher.exp() * (teacher - log_probs(torch.stack([cosines[dim] for dim in small])))
        if self_mask is not None:
            # masked (-inf) entries have zero teacher mass; -inf - -inf would give nan
            pointwise = torch.where(torch.isfinite(teacher), pointwise, torch.zeros_like(pointwise))
        terms.update(zip(small, (pointwise.sum(dim=-1).mean(dim=-1) * temperature**2).unbind()))
    return {dim: terms[dim] for dim in dims}


def similarity_distillation(
    columns: Sequence[Tensor],
    dims: Sequence[int],
    temperature: float = 1.0,
    scale: float = 20.0,
    gather: bool = False,
) -> dict[int, Tensor]:
    """KL divergence from the full-dimension in-batch similarity distribution to the one at each of ``dims``.

    ``KL(p_full || p_d)`` with ``p = softmax(scale * cos(anchor, candidates) / temperature)`` per anchor, averaged over
    anchors and multiplied by ``temperature ** 2`` (so the gradient's size does not shrink as the temperature grows,
    as in Hinton et al.'s distillation). The teacher (full dimension) is detached: only the prefixes learn from it.
    The similarities of every dim come from one shell-by-shell pass
    (:func:`~matryoshka_st.losses._shells.prefix_cosines`).

    Args:
        columns: the full-size embeddings of each input column, each ``(B, D)``; the first column holds the anchors.
            With a single column the anchors are compared with each other (the diagonal left out).
        dims: the dimensions to distil into (the full dimension, if listed, gets a zero term).
        temperature: softens both distributions; ``> 0``.
        scale: the inner loss's similarity scale (``MultipleNegativesRankingLoss`` uses 20).
        gather: compare with the candidates of every process (see :func:`candidates_of`).

    Returns:
        ``{dim: scalar tensor}``, computed in float32.

    Example:
        >>> import torch
        >>> full = [torch.randn(8, 64), torch.randn(8, 64)]
        >>> terms = similarity_distillation(full, [32, 16])
        >>> sorted(terms), bool(terms[16] >= 0)
        ([16, 32], True)
    """
    full_dim = columns[0].shape[-1]
    candidates, mask = candidates_of(columns, gather)
    cosines = prefix_cosines(columns[0], candidates, [d for d in dims if d < full_dim] + [full_dim])
    return distillation_from_cosines(cosines, full_dim, dims, temperature, scale, mask)
