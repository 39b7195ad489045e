"""Prefix similarities at every Matryoshka dim from one pass over the coordinates, shell by shell.

The cosine similarity of two prefixes at ``d`` is ``S_d / (|a_:d| |b_:d|)`` with ``S_d = S_prev + a_prev:d . b_prev:d``:
the dot products grow by one shell ``[prev, d)`` at a time and the prefix norms all come from one cumulative sum of
squares, so every dim together costs one full-size matmul instead of one per dim. sentence-transformers computes one
similarity per call; what is written here is the reuse across the dims of one step:

- :func:`prefix_cosines` / :func:`prefix_pairwise_cosines`: the values, for the distillation term and the inner loss;
- :class:`ShellSimilarity`: stands in for an inner loss's ``similarity_fct`` while :class:`MatryoshkaLoss` runs it at
  every dim, largest first: the first pass computes every dim's similarities, the later passes take theirs.

Which inner losses it serves is decided by contract (:func:`shell_target`): a ``similarity_fct`` that is
sentence-transformers' ``cos_sim`` or ``pairwise_cos_sim``, or ``GISTEmbedLoss``'s ``sim_matrix`` over an
``nn.CosineSimilarity(dim=-1)`` (a cosine matrix computed by broadcasting, ``(R, 1, D) x (1, C, D)``);
``tests/losses/test_shells.py`` classifies every loss class sentence-transformers exports. Similarities of inputs that
are the same at every dim and take no gradient (GIST's guide embeddings) are computed once per step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from sentence_transformers.sentence_transformer import losses
from sentence_transformers.util import cos_sim, pairwise_cos_sim
from torch import Tensor, nn

ShellKind = Literal["matrix", "pairwise"]
_EPS = 1e-12  # F.normalize's, which cos_sim uses


def _float32(x: Tensor) -> Tensor:
    return x if x.dtype == torch.float32 else x.float()


def _prefix_norms(x: Tensor, dims: Sequence[int], eps: float = _EPS) -> Tensor:
    """``(N, len(dims))`` L2 norms of the ``d``-prefixes of ``x`` ``(N, D)``, from one cumulative sum of squares, each
    at least ``eps``."""
    index = torch.tensor([d - 1 for d in dims], device=x.device)
    return x.square().cumsum(-1).index_select(-1, index).sqrt().clamp_min(eps)


def _prefix(x: Tensor, dim: int) -> Tensor:
    return x if x.shape[-1] == dim else x[..., :dim]


def prefix_cosines(queries: Tensor, candidates: Tensor, dims: Sequence[int], eps: float = _EPS) -> dict[int, Tensor]:
    """``{d: cos(queries[:, :d], candidates[:, :d])}`` ``(R, C)`` for every ``d`` in ``dims``, in float32.

    Equal to ``cos_sim`` on the prefixes (float32 to ~1e-7), computed shell by shell: one matmul per shell, whose
    widths add up to the largest dim, and all prefix norms from one cumulative sum of squares per side. Each norm is
    at least ``eps``: ``cos_sim``'s ``1e-12`` by default, ``nn.CosineSimilarity``'s own ``eps`` for GIST. The shells
    are one ``split`` and the norms one ``unbind`` per side, so the backward pass gathers each side's gradient in one
    operation instead of one per dim (``benchmarks/loss_launches.py`` counts them).

    Example:
        >>> a, b = torch.randn(4, 64), torch.randn(6, 64)
        >>> cosines = prefix_cosines(a, b, [64, 16])
        >>> bool(torch.allclose(cosines[16], cos_sim(a[:, :16], b[:, :16]), atol=1e-6))
        True
    """
    order = sorted(set(dims))
    widths = [order[0]] + [high - low for low, high in zip(order, order[1:])]
    with torch.autocast(queries.device.type, enabled=False):
        queries, candidates = _float32(_prefix(queries, order[-1])), _float32(_prefix(candidates, order[-1]))
        query_scales = _prefix_norms(queries, order, eps).reciprocal().unbind(-1)
        candidate_scales = _prefix_norms(candidates, order, eps).reciprocal().unbind(-1)
        query_shells, candidate_shells = queries.split(widths, dim=-1), candidates.split(widths, dim=-1)
        cosines, dots = {}, None
        for k, dim in enumerate(order):
            shell = query_shells[k] @ candidate_shells[k].T  # (R, C)
            dots = shell if dots is None else dots + shell
            cosines[dim] = dots * torch.outer(query_scales[k], candidate_scales[k])
    return cosines


def prefix_pairwise_cosines(a: Tensor, b: Tensor, dims: Sequence[int], eps: float = _EPS) -> dict[int, Tensor]:
    """``{d: pairwise_cos_sim(a[:, :d], b[:, :d])}`` ``(N,)`` for every ``d`` in ``dims``, in float32: all prefix
    dot products from one cumulative sum of ``a * b``, all norms (each at least ``eps``) from one of the squares."""
    order = sorted(set(dims))
    index = torch.tensor([d - 1 for d in order], device=a.device)
    with torch.autocast(a.device.type, enabled=False):
        a, b = _float32(_prefix(a, order[-1])), _float32(_prefix(b, order[-1]))
        dots = (a * b).cumsum(-1).index_select(-1, index)  # (N, K)
        values = dots / (_prefix_norms(a, order, eps) * _prefix_norms(b, order, eps))
    return dict(zip(order, values.unbind(-1)))


# Losses that read the embeddings only through their similarity_fct (GIST's sim_matrix), in
# compute_loss_from_embeddings, calculate_loss for the Cached ones and forward for GIST: with a cosine there, a prefix
# needs no renormalising before it (the cosine ignores each row's length), which saves the truncation's norm and
# division per column and dim. Exact classes (a subclass may read the embeddings otherwise);
# tests/losses/test_shells.py checks that scaling each row leaves their loss unchanged.
SCALE_FREE_LOSSES = frozenset(
    {
        losses.MultipleNegativesRankingLoss,
        losses.MultipleNegativesSymmetricRankingLoss,
        losses.CachedMultipleNegativesRankingLoss,
        losses.CachedMultipleNegativesSymmetricRankingLoss,
        losses.CoSENTLoss,
        losses.GISTEmbedLoss,  # the model's embeddings (its guide's are not truncated)
        losses.CachedGISTEmbedLoss,
    }
)


def reads_only_cosines(loss: object) -> bool:
    """Whether ``loss`` is one of :data:`SCALE_FREE_LOSSES` with a cosine :func:`shell_kind` knows: its loss on
    prefixes is the same whether or not they are renormalised."""
    return type(loss) in SCALE_FREE_LOSSES and shell_target(loss) is not None


def shell_kind(similarity_fct: object) -> ShellKind | None:
    """``"matrix"`` for ``cos_sim``, ``"pairwise"`` for ``pairwise_cos_sim``, ``None`` for any other similarity
    (dot products, angles, ``nn.CosineSimilarity`` modules, custom functions): those keep their own computation."""
    if similarity_fct is cos_sim:
        return "matrix"
    if similarity_fct is pairwise_cos_sim:
        return "pairwise"
    return None


def similarity_owner(loss: object) -> object | None:
    """The object whose ``similarity_fct`` attribute the inner loss reads: the loss itself, or the loss it wraps
    (``CachedMultipleNegativesRankingLoss`` delegates its hyperparameters to a ``MultipleNegativesRankingLoss``).
    ``None`` when the similarity is not one :func:`shell_kind` knows."""
    for _ in range(3):
        if shell_kind(vars(loss).get("similarity_fct")) is not None:
            return loss
        if not isinstance(getattr(type(loss), "similarity_fct", None), property):
            return None
        loss = getattr(loss, "loss", None)
        if loss is None:
            return None
    return None


_COSINE_SIM_MATRICES = (losses.GISTEmbedLoss.sim_matrix, losses.CachedGISTEmbedLoss.sim_matrix)


def cosine_sim_matrix(loss: object) -> nn.CosineSimilarity | None:
    """The ``nn.CosineSimilarity(dim=-1)`` of a loss whose ``sim_matrix`` is ``GISTEmbedLoss``'s or
    ``CachedGISTEmbedLoss``'s (``similarity_fct`` on ``(R, 1, D)`` and ``(1, C, D)``: the ``(R, C)`` cosine matrix),
    else ``None``."""
    if getattr(type(loss), "sim_matrix", None) not in _COSINE_SIM_MATRICES or "sim_matrix" in vars(loss):
        return None
    function = getattr(loss, "similarity_fct", None)
    return function if type(function) is nn.CosineSimilarity and function.dim in (-1, 2) else None


@dataclass(frozen=True)
class ShellTarget:
    """Where :class:`ShellSimilarity` stands in for an inner loss's similarities: the attribute ``name`` of ``owner``
    (``similarity_fct``, or GIST's ``sim_matrix``), whose own function is ``function``, of kind ``kind``; norms are
    clamped at ``eps``, as that function does."""

    owner: object
    name: str
    function: Callable[[Tensor, Tensor], Tensor]
    kind: ShellKind
    eps: float = _EPS


def shell_target(loss: object) -> ShellTarget | None:
    """Where the similarities of ``loss`` can be served shell by shell, or ``None`` (they keep their own computation)."""
    owner = similarity_owner(loss)
    if owner is not None:
        function = owner.similarity_fct
        return ShellTarget(owner, "similarity_fct", function, shell_kind(function))
    cosine = cosine_sim_matrix(loss)
    if cosine is not None:
        return ShellTarget(loss, "sim_matrix", loss.sim_matrix, "matrix", float(cosine.eps))
    return None


def _same_input(x: Tensor, recorded: Tensor, version: int) -> bool:
    """Whether ``x`` holds what ``recorded`` held when it was recorded: the same memory (a view of the same storage,
    shape and strides, as a fresh slice ``guide[offset:end]`` is) unchanged since (its version counter)."""
    return (
        x.device == recorded.device
        and x.dtype == recorded.dtype
        and x.shape == recorded.shape
        and x.stride() == recorded.stride()
        and x.storage_offset() == recorded.storage_offset()
        and x.untyped_storage().data_ptr() == recorded.untyped_storage().data_ptr()
        and x._version == version
    )


@dataclass
class _Call:
    """One similarity call of the first dim: the values at every dim (``None``: computed directly), and for a call
    whose inputs take no gradient, those inputs and its output, to hand back to the same call at later dims."""

    values: dict[int, Tensor] | None = None
    inputs: tuple[Tensor, Tensor] | None = None
    versions: tuple[int, int, int] = (0, 0, 0)  # of the two inputs and the output when recorded
    output: Tensor | None = None


class ShellSimilarity:
    """Stands in for an inner loss's similarity (``cos_sim``, ``pairwise_cos_sim`` or GIST's ``sim_matrix``) while
    the inner loss runs at every dim of one step.

    :meth:`start` announces each dim, largest first. During the first dim every call computes the similarities of
    its two inputs at that dim and at every smaller active dim (their prefixes are the smaller dims' inputs, up to a
    per-row scale that cosines ignore) and returns the first; during the later dims call ``k`` returns what call
    ``k`` of the first dim computed for it. Calls are matched by order, as the replay path matches encoder calls
    (deterministic within one loss call); a call whose shapes do not match, or that comes from inputs of another
    width, is computed directly. A call whose inputs take no gradient while gradients are on (a guide model's
    embeddings) is computed once, at its own width: the same call at a later dim, on the same unchanged inputs, gets
    the same output back.

    Args:
        similarity_fct: the inner loss's own function (``cos_sim``, ``pairwise_cos_sim``, or ``sim_matrix``).
        dims: the dims of this step, largest first.
        kind: ``"matrix"`` or ``"pairwise"``; ``None`` reads it from ``similarity_fct`` (:func:`shell_kind`).
        eps: the smallest norm, as ``similarity_fct`` clamps it.
    """

    def __init__(
        self,
        similarity_fct: Callable[[Tensor, Tensor], Tensor],
        dims: Sequence[int],
        kind: ShellKind | None = None,
        eps: float = _EPS,
    ) -> None:
        kind = kind or shell_kind(similarity_fct)
        if kind is None:
            raise ValueError(f"ShellSimilarity serves cos_sim and pairwise_cos_sim, not {similarity_fct!r}.")
        self.similarity_fct = similarity_fct
        self.kind: ShellKind = kind
        self.eps = eps
        self.dims = sorted(dims, reverse=True)
        self.calls: list[_Call] = []
        self.first: dict[int, Tensor] = {}  # the first call's similarities at every dim (the distillation's)
        self.first_versions: dict[int, int] = {}  # their version counters: an in-place write by the loss shows
        self.dim: int | None = None
        self.recording = True
        self.index = 0
        # set by MatryoshkaLoss: the inner loss reads only these cosines (reads_only_cosines), so its prefixes need no
        # renormalising
        self.scale_free = False

    def start(self, dim: int) -> None:
        self.dim = dim
        self.recording = dim == self.dims[0]
        if self.recording:
            self.calls, self.first, self.first_versions = [], {}, {}
        self.index = 0

    def _compute(self, a: Tensor, b: Tensor, dims: Sequence[int]) -> dict[int, Tensor]:
        if self.kind == "matrix":
            return prefix_cosines(a, b, dims, self.eps)
        return prefix_pairwise_cosines(a, b, dims, self.eps)

    def _constant(self, a: Tensor, b: Tensor) -> bool:
        return torch.is_grad_enabled() and not (a.requires_grad or b.requires_grad)

    def __call__(self, a: Tensor, b: Tensor) -> Tensor:
        index, self.index = self.index, self.index + 1
        two_d = a.ndim == 2 and b.ndim == 2 and a.shape[-1] == b.shape[-1]
        if self.recording:
            call = _Call()
            self.calls.append(call)
            if self._constant(a, b):
                output = self._direct(a, b, two_d)
                call.inputs, call.output = (a, b), output
                call.versions = (a._version, b._version, output._version)
                return output
            if not (two_d and a.shape[-1] == self.dim):
                return self._direct(a, b, two_d)
            values = self._compute(a, b, [d for d in self.dims if d <= self.dim])
            if index == 0:
                self.first = dict(values)
                self.first_versions = {dim: value._version for dim, value in values.items()}
            call.values = values
            return values.pop(self.dim)
        call = self.calls[index] if index < len(self.calls) else None
        if call is not None and call.inputs is not None:
            (ra, rb), (va, vb, vo) = call.inputs, call.versions
            if _same_input(a, ra, va) and _same_input(b, rb, vb) and call.output._version == vo:
                return call.output
        values = call.values if call is not None else None
        shape = (a.shape[0], b.shape[0]) if self.kind == "matrix" else (a.shape[0],)
        usable = two_d and a.shape[-1] == self.dim
        if usable and values is not None and self.dim in values and values[self.dim].shape == shape:
            return values.pop(self.dim)
        return self._direct(a, b, two_d)

    def _direct(self, a: Tensor, b: Tensor, two_d: bool) -> Tensor:
        """A call not served from the first dim's, computed at its own width: as a matrix product for 2-D inputs
        (a cosine matrix needs no ``(R, C, D)`` broadcast product), else by the loss's own function."""
        if two_d and (self.kind == "matrix" or a.shape[0] == b.shape[0]):
            return self._compute(a, b, [a.shape[-1]]).popitem()[1]
        return self.similarity_fct(a, b)
