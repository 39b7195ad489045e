"""Funnel schedules ``[(dim, shortlist), ...]``: checked once, where they are defined."""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral

from matryoshka_st.search.first_stage import BINARY_STAGES, FIRST_STAGES, QUANTIZED_STAGES


def validate_stages(
    stages: Sequence[Sequence[int]], full_dim: int, first_stage: str = "float"
) -> list[tuple[int, int]]:
    """Check a funnel schedule ``[(dim, shortlist), ...]`` against the full dimension and return it as tuples.

    Dims must increase and shortlist sizes must decrease from stage to stage; the final rerank at ``full_dim`` is
    implicit, so only the first stage may use ``full_dim`` itself. An int8 or binary first stage may be longer than
    the float stage after it, as in ``[(384, 2000), (128, 200)]`` with ``first_stage="binary"``.
    ``first_stage`` is one of :data:`~matryoshka_st.search.first_stage.FIRST_STAGES`.

    Raises:
        ValueError: naming the bad stage and what was expected.

    Example:
        >>> validate_stages([[64, 200], [128, 50]], full_dim=384)
        [(64, 200), (128, 50)]
    """
    if first_stage not in FIRST_STAGES:
        raise ValueError(f"first_stage must be one of {FIRST_STAGES}, got {first_stage!r}.")
    if isinstance(full_dim, bool) or not isinstance(full_dim, Integral) or full_dim < 1:
        raise ValueError(f"full_dim must be a positive integer, got {full_dim!r}.")
    if stages is None or len(stages) == 0:
        raise ValueError("stages is empty: pass at least one (dim, shortlist) pair, e.g. [(64, 200), (128, 50)].")
    checked = []
    for i, stage in enumerate(stages):
        if len(stage) != 2 or any(isinstance(v, bool) or not isinstance(v, Integral) for v in stage):
            raise ValueError(f"Stage {i} must be a pair of integers (dim, shortlist), got {stage!r}.")
        dim, shortlist = int(stage[0]), int(stage[1])
        if not 1 <= dim <= full_dim:
            raise ValueError(
                f"Stage {i} dim {dim} is not in the embedding size: use 1 <= dim <= {full_dim} (the full dim)."
            )
        if i > 0 and dim == full_dim:
            raise ValueError(
                f"Stage {i} reranks at the full dim {full_dim}, which the final rerank always does: drop that stage."
            )
        if shortlist < 1:
            raise ValueError(f"Stage {i} shortlist must be >= 1, got {shortlist}.")
        # A quantized first stage may be longer than the float stage after it (e.g. binary 384 -> float 128).
        if i > 1 or (i == 1 and first_stage not in QUANTIZED_STAGES):
            if dim <= checked[-1][0]:
                raise ValueError(f"Stage dims must increase, but stage {i} has dim {dim} after {checked[-1][0]}.")
        if checked and shortlist >= checked[-1][1]:
            raise ValueError(
                f"Shortlist sizes must decrease, but stage {i} keeps {shortlist} of a shortlist of {checked[-1][1]}."
            )
        checked.append((dim, shortlist))
    if first_stage in BINARY_STAGES and checked[0][0] % 8:
        raise ValueError(f"A binary first stage packs 8 dims per byte: use a dim divisible by 8, not {checked[0][0]}.")
    return checked
