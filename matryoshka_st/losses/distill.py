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
from torch import Tensor

from matryoshka_st.dims import truncate


def _similarity_logits(columns: Sequence[Tensor], dim: int | None, scale: float) -> Tensor:
    """``(B, C)`` scaled cosine similarities of the anchors (first column) to every candidate, in float32.

    Candidates are the other columns stacked (positives, then hard negatives), as in
    ``MultipleNegativesRankingLoss``. With a single column the anchors are compared with each other and the
    diagonal (a text with itself) is masked out.
    """
    columns = [column.float() for column in columns]
    if dim is not None:
        columns = [truncate(column, dim) for column in columns]
    else:
        columns = [F.normalize(column, p=2, dim=-1) for column in columns]
    anchors = columns[0]  # (B, d)
    candidates = torch.cat(columns[1:]) if len(columns) > 1 else anchors  # (C, d)
    logits = scale * anchors @ candidates.T  # (B, C)
    if len(columns) == 1:
        logits = logits.masked_fill(torch.eye(len(anchors), dtype=torch.bool, device=logits.device), float("-inf"))
    return logits


def similarity_distillation(
    columns: Sequence[Tensor], dims: Sequence[int], temperature: float = 1.0, scale: float = 20.0
) -> dict[int, Tensor]:
    """KL divergence from the full-dimension in-batch similarity distribution to the one at each of ``dims``.

    ``KL(p_full || p_d)`` with ``p = softmax(scale * cos(anchor, candidates) / temperature)`` per anchor, averaged over
    anchors and multiplied by ``temperature ** 2`` (so the gradient's size does not shrink as the temperature grows,
    as in Hinton et al.'s distillation). The teacher (full dimension) is detached: only the prefixes learn from it.

    Args:
        columns: the full-size embeddings of each input column, each ``(B, D)``; the first column holds the anchors.
        dims: the dimensions to distil into (the full dimension, if listed, gets a zero term).
        temperature: softens both distributions; ``> 0``.
        scale: the inner loss's similarity scale (``MultipleNegativesRankingLoss`` uses 20).

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
    with torch.no_grad():
        teacher = F.log_softmax(_similarity_logits(columns, None, scale) / temperature, dim=-1)
    terms = {}
    for dim in dims:
        if dim >= full_dim:
            terms[dim] = teacher.new_zeros(())
            continue
        student = F.log_softmax(_similarity_logits(columns, dim, scale) / temperature, dim=-1)
        # masked (-inf) entries have zero teacher mass; kl_div's log_target form would give nan for -inf - -inf
        finite = torch.isfinite(teacher)
        pointwise = torch.where(finite, teacher.exp() * (teacher - student), torch.zeros_like(teacher))
        terms[dim] = pointwise.sum(dim=-1).mean() * temperature**2
    return terms
