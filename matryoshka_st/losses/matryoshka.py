"""The Matryoshka loss adapter: one encoder pass, the inner loss re-applied at every nested dimension.

What it adds to sentence-transformers' ``MatryoshkaLoss`` (heads per dimension, renormalised distillation targets,
models with ``truncate_dim``, per-dimension loss components) is listed in docs/train.md.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.losses.gradcache import uses_gradient_cache
from sentence_transformers.base.losses.merged_forward import embed_columns
from torch import Tensor, nn

from matryoshka_st.dims import full_embedding_dim, truncate, validate_dims
from matryoshka_st.losses._replay import CachedForward, NoHelper, RepeatedForward, patched
from matryoshka_st.losses._shells import ShellSimilarity, reads_only_cosines, shell_target
from matryoshka_st.losses.distill import distillation_from_cosines, similarity_distillation
from matryoshka_st.losses.heads import HEAD_MODES, HeadMode, MatryoshkaHeads
from matryoshka_st.losses.paths import computes_from_embeddings
from matryoshka_st.losses.quant import check_quant_arguments, fake_quantize

logger = logging.getLogger(__name__)


def check_recipe_arguments(
    distill_weight: float = 0.0,
    distill_temperature: float = 1.0,
    full_dim_share: float | None = None,
    quant_weight: float = 0.0,
    quant_precision: str | Sequence[str] = "binary",
    quant_dims: Sequence[int] | None = None,
    quant_warmup: int = 0,
) -> None:
    """``ValueError`` unless ``distill_weight >= 0``, ``distill_temperature > 0`` (both finite numbers),
    ``full_dim_share`` is ``None`` or in ``(0, 1)``, and the quantization terms' arguments pass
    :func:`~matryoshka_st.losses.quant.check_quant_arguments`. The checks of :class:`MatryoshkaLoss`, also run by
    :class:`matryoshka_st.recipes.Recipe` so that a training run fails before it loads anything."""
    check_quant_arguments(quant_weight, quant_precision, quant_dims, quant_warmup)
    for name, value in (("distill_weight", distill_weight), ("distill_temperature", distill_temperature)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}.")
    if distill_weight < 0:
        raise ValueError(f"distill_weight must be >= 0 (0 turns self-distillation off), got {distill_weight}.")
    if distill_temperature <= 0:
        raise ValueError(f"distill_temperature must be > 0, got {distill_temperature}.")
    if full_dim_share is not None:
        if isinstance(full_dim_share, bool) or not isinstance(full_dim_share, (int, float)):
            raise ValueError(f"full_dim_share must be a number in (0, 1) or None, got {full_dim_share!r}.")
        if not 0 < full_dim_share < 1:
            raise ValueError(f"full_dim_share must be in (0, 1) (a share of the total weight), got {full_dim_share}.")


def _share_full(weights: list[float], share: float) -> list[float]:
    """Weights with the full (first, largest) dim at ``share`` of the total and the others in their proportions."""
    total, others = sum(weights), sum(weights[1:])
    if others == 0:
        raise ValueError("full_dim_share needs a non-zero weight on at least one dim below the full one.")
    return [share * total] + [(1 - share) * total * w / others for w in weights[1:]]


class MatryoshkaLoss(nn.Module):
    #: With a GradCache inner loss (``Cached*``): the loss-side autograd memory, as :meth:`_one_graph_bytes` estimates
    #: it, up to which every dim of a step is computed in one graph and back-propagated once; above it, dim by dim
    #: through the inner loss's own chunked backward, which holds one mini-batch's score rows at a time. ``0``: always
    #: dim by dim. Set it on the class or on one loss.
    one_graph_max_bytes: int = 256 * 2**20

    def __init__(
        self,
        model: SentenceTransformer,
        loss: nn.Module,
        matryoshka_dims: Sequence[int] | None = None,
        matryoshka_weights: Sequence[float] | None = None,
        n_dims_per_step: int = -1,
        head_mode: HeadMode = "separate",
        log_per_dim: bool = True,
        distill_weight: float = 0.0,
        distill_temperature: float = 1.0,
        full_dim_share: float | None = None,
        quant_weight: float = 0.0,
        quant_precision: str | Sequence[str] = "binary",
        quant_dims: Sequence[int] | None = None,
        quant_warmup: int = 0,
    ) -> None:
        """Train embeddings that still work when cut to their first ``d`` coordinates, for every ``d`` in
        ``matryoshka_dims`` (Matryoshka Representation Learning).

        The encoder runs once per step. For each dimension ``d`` the embeddings are truncated to their first ``d``
        coordinates and L2-renormalised, the inner loss is applied to them, multiplied by the dimension's weight,
        and the weighted losses are summed. A drop-in replacement for
        ``sentence_transformers.losses.MatryoshkaLoss`` (same leading arguments), which also:

        - works with losses that hold a learned head (``SoftmaxLoss``): a head per dimension (``head_mode="separate"``,
          MRL) or one weight matrix sliced per dimension (``head_mode="shared"``, MRL-E);
        - truncates *and renormalises* teacher embeddings passed as labels (``MSELoss`` distillation), so a
          student equal to its teacher has zero loss at every dimension;
        - accepts models loaded with ``truncate_dim`` (training always sees the full embedding);
        - returns the weighted per-dimension losses as ``{"loss_dim_384": ..., "loss_dim_64": ...}``, which
          ``SentenceTransformerTrainer`` sums and logs separately, so each nesting level can be watched learning.

        Args:
            model: the SentenceTransformer being trained.
            loss: the inner loss, e.g. ``MultipleNegativesRankingLoss(model)``, ``CoSENTLoss(model)``,
                ``CachedMultipleNegativesRankingLoss(model)`` or ``SoftmaxLoss(model, ...)``.
            matryoshka_dims: the nested dimensions, e.g. ``[384, 256, 128, 64, 32]``. ``None`` uses the model's full
                dimension and the powers of two below it down to 32.
            matryoshka_weights: one non-negative weight per dimension; ``None`` weighs all dimensions 1.
            n_dims_per_step: train on this many randomly drawn dimensions per step; ``-1`` uses all of them.
            head_mode: for losses with a ``classifier`` head: ``"separate"`` or ``"shared"``.
            log_per_dim: return a dict of per-dimension losses (summed and logged by the trainer). Set ``False`` to
                return one tensor, e.g. when another loss modifier such as ``AdaptiveLayerLoss`` wraps this one.
            distill_weight: weight ``lambda`` of self-distillation across dimensions: at every dim below the full one,
                ``lambda * KL(p_full || p_d)`` between the in-batch similarity distributions of the full (detached,
                the teacher) and the truncated embeddings is added to that dim's loss (times its weight) and logged
                as ``distill_dim_<d>``. ``0`` (the default) is the reference behaviour. See
                :func:`matryoshka_st.losses.distill.similarity_distillation`.
            distill_temperature: the temperature ``tau`` of that distribution (on top of the inner loss's ``scale``).
            full_dim_share: if set, the full dimension's weight is rescaled to this share of the total weight (the
                other dims keep their proportions, the total is unchanged), so the full-size embedding is not
                starved by the small ones. ``None`` keeps ``matryoshka_weights`` as given.
            quant_weight: weight of quantization-aware training: at each of ``quant_dims`` and each of
                ``quant_precision``, ``quant_weight * weight_d * inner_loss(codes)`` on the fake-quantized prefixes
                (straight-through gradients, :func:`matryoshka_st.losses.quant.fake_quantize`) is added and logged as
                ``quant_<precision>_dim_<d>``. ``0`` (the default) turns it off.
            quant_precision: ``"binary"``, ``"int8"`` or both (a list).
            quant_dims: the dims with quantization terms, a subset of ``matryoshka_dims``; ``None`` uses all of them.
            quant_warmup: the terms' weight grows linearly from 0 over this many training steps (forward passes in
                training mode, counted by the loss in ``quant_step``); ``0`` applies it from the first step.

        References:
            - Kusupati et al., Matryoshka Representation Learning, https://arxiv.org/abs/2205.13147
            - Li et al., ESE: Espresso Sentence Embeddings (2DMSE), https://arxiv.org/abs/2402.14776
            - Zhuang et al., Starbucks: Improved Training for 2D Matryoshka Embeddings, https://arxiv.org/abs/2410.13230

        Inputs:
            +---------------------------------------+--------+
            | Inputs                                | Labels |
            +=======================================+========+
            | any (those of the inner loss)         | any    |
            +---------------------------------------+--------+

        Example:
            ::

                from datasets import Dataset
                from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, losses
                from matryoshka_st import MatryoshkaLoss

                model = SentenceTransformer("sentence-transformers/all-MiniLM-L6-v2")
                train_dataset = Dataset.from_dict({
                    "anchor": ["It's nice weather outside today.", "He drove to work."],
                    "positive": ["It's so sunny.", "He took the car to the office."],
                })
                loss = MatryoshkaLoss(model, losses.MultipleNegativesRankingLoss(model), [384, 256, 128, 64, 32])
                trainer = SentenceTransformerTrainer(model=model, train_dataset=train_dataset, loss=loss)
                trainer.train()
                embeddings = model.encode(["A short vector"], truncate_dim=64)
        """
        super().__init__()
        self.model = model
        self.loss = loss
        full_dim = full_embedding_dim(model)
        if matryoshka_dims is None:
            if full_dim is None:
                raise ValueError("The model does not report its embedding dimension: pass matryoshka_dims explicitly.")
            from matryoshka_st.dims import default_dims

            matryoshka_dims = default_dims(full_dim)
        self.full_dim = full_dim
        self.matryoshka_dims, self.matryoshka_weights = validate_dims(matryoshka_dims, full_dim, matryoshka_weights)
        if isinstance(n_dims_per_step, bool) or not isinstance(n_dims_per_step, int):
            raise ValueError(f"n_dims_per_step must be an integer, got {n_dims_per_step!r}.")
        if n_dims_per_step == 0 or n_dims_per_step < -1 or n_dims_per_step > len(self.matryoshka_dims):
            raise ValueError(
                f"n_dims_per_step must be -1 (all dims) or between 1 and {len(self.matryoshka_dims)} "
                f"(the number of matryoshka_dims), got {n_dims_per_step}."
            )
        if head_mode not in HEAD_MODES:
            raise ValueError(f"head_mode must be one of {HEAD_MODES}, got {head_mode!r}.")
        check_recipe_arguments(
            distill_weight,
            distill_temperature,
            full_dim_share,
            quant_weight,
            quant_precision,
            quant_dims,
            quant_warmup,
        )
        self.quant_precision = check_quant_arguments(quant_weight, quant_precision, quant_dims, quant_warmup)
        if quant_dims is not None and not set(quant_dims) <= set(self.matryoshka_dims):
            raise ValueError(
                f"quant_dims {list(quant_dims)} must be among matryoshka_dims {self.matryoshka_dims}: "
                "the quantization terms reuse each dim's weight and truncation."
            )
        self.quant_weight = float(quant_weight)
        self.quant_dims = sorted(quant_dims or self.matryoshka_dims, reverse=True)
        self.quant_warmup = quant_warmup
        self.quant_step = 0
        if full_dim_share is not None:
            if full_dim not in self.matryoshka_dims or len(self.matryoshka_dims) < 2:
                raise ValueError(
                    f"full_dim_share needs the full dimension {full_dim} and at least one smaller dim in "
                    f"matryoshka_dims, got {self.matryoshka_dims}."
                )
            self.matryoshka_weights = _share_full(self.matryoshka_weights, full_dim_share)
        self.distill_weight = float(distill_weight)
        self.distill_temperature = float(distill_temperature)
        self.full_dim_share = full_dim_share
        self.n_dims_per_step = n_dims_per_step
        self.head_mode = head_mode
        self.log_per_dim = log_per_dim
        self.uses_gradient_cache = uses_gradient_cache(loss)
        if getattr(loss, "projection", None) is not None:
            raise ValueError(
                f"{type(loss).__name__} has a projection_dim: its projection reads full-size student embeddings and "
                "cannot take truncated ones. Distil into a student of the teacher's dimension instead."
            )
        self.heads: MatryoshkaHeads | None = None
        classifier = getattr(loss, "classifier", None)
        if isinstance(classifier, nn.Linear):
            if self.uses_gradient_cache:
                raise ValueError(
                    f"{type(loss).__name__} has both a classifier head and gradient caching: unsupported."
                )
            self.heads = MatryoshkaHeads(classifier, full_dim, self.matryoshka_dims, head_mode)
        self.last_dim_losses: dict[int, Tensor] = {}
        self.last_gradient_cache_path: str | None = None  # "one_graph" or "per_dim": what the last GradCache step took

    # -- forward paths ---------------------------------------------------------------------------------------------
    def _active(self) -> list[tuple[int, float]]:
        pairs = list(zip(self.matryoshka_dims, self.matryoshka_weights))
        if 0 < self.n_dims_per_step < len(pairs):
            pairs = sorted(random.sample(pairs, self.n_dims_per_step), key=lambda pair: pair[0], reverse=True)
        return pairs

    def _dim_labels(self, labels: Any, dim: int) -> Any:
        # Labels shaped like embeddings (one teacher vector per row, or per column per row) are distillation
        # targets: cut and renormalise them exactly like the student's embeddings.
        if (
            isinstance(labels, Tensor)
            and labels.is_floating_point()
            and labels.ndim in (2, 3)
            and self.full_dim is not None
            and labels.size(-1) == self.full_dim
        ):
            return truncate(labels, dim)
        return labels

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor) -> Tensor | dict[str, Tensor]:
        sentence_features = list(sentence_features)
        active = self._active()
        quant = self._quant_terms(active)
        distilled: dict[int, Tensor] = {}
        quantized: dict[str, Tensor] = {}
        if self.uses_gradient_cache:
            losses = self._forward_gradient_cache(sentence_features, labels, active, distilled, quant, quantized)
        elif self.heads is None and computes_from_embeddings(type(self.loss)):
            embeddings = embed_columns(self.model, sentence_features)  # one (B, D) tensor per column
            losses = {}
            with self._shells(active) as shells:
                for dim, weight in active:
                    if shells is not None:
                        shells.start(dim)
                    truncated = [_prefix(embedding, dim, shells) for embedding in embeddings]
                    losses[dim] = weight * self.loss.compute_loss_from_embeddings(
                        truncated, self._dim_labels(labels, dim)
                    )
            distilled = self._distill(embeddings, active, shells)
            for (dim, precision), factor in quant.items():
                codes = [self._fake_quantize(truncate(embedding, dim), precision) for embedding in embeddings]
                value = self.loss.compute_loss_from_embeddings(codes, self._dim_labels(labels, dim))
                quantized[f"quant_{precision}_dim_{dim}"] = factor * value
        else:
            losses, embeddings, shells = self._forward_replay(sentence_features, labels, active, quant, quantized)
            distilled = self._distill(embeddings, active, shells)
        if self.training and torch.is_grad_enabled():
            self.quant_step += 1
        # detached tensors, not floats: converting would force a device sync on every step
        self.last_dim_losses = {
            dim: (value + distilled[dim] if dim in distilled else value).detach() for dim, value in losses.items()
        }
        if self.log_per_dim:
            components = {f"loss_dim_{dim}": value for dim, value in losses.items()}
            components.update({f"distill_dim_{dim}": value for dim, value in distilled.items()})
            components.update(quantized)
            return components
        return torch.stack(list(losses.values()) + list(distilled.values()) + list(quantized.values())).sum()

    @contextmanager
    def _shells(self, active: list[tuple[int, float]]):
        """Serve the inner loss's similarities shell by shell (:class:`ShellSimilarity`) for the block when they are
        ones :func:`shell_target` knows and more than one dim is active; else yield ``None``."""
        target = shell_target(self.loss)
        if target is None or len(active) < 2:
            yield None
            return
        shells = ShellSimilarity(target.function, [dim for dim, _ in active], target.kind, target.eps)
        shells.scale_free = reads_only_cosines(self.loss)  # read before the shells stand in for its similarity
        with patched(target.owner, target.name, shells):
            yield shells

    def _distill(
        self, embeddings: list[Tensor], active: list[tuple[int, float]], shells: ShellSimilarity | None = None
    ) -> dict[int, Tensor]:
        """``weight * distill_weight * KL`` per active dim below the full one (empty when distillation is off).

        Reuses the inner loss's own similarities when its first one at every dim was the anchors against all
        candidates (:meth:`_shared_cosines`); otherwise computes them, shell by shell, against the candidates of
        every process when the inner loss gathers them."""
        if not self.distill_weight or not embeddings:
            return {}
        full_dim = embeddings[0].shape[-1]
        dims = [dim for dim, _ in active if dim < full_dim]
        scale, temperature = self._similarity_scale(), self.distill_temperature
        shared = self._shared_cosines(embeddings, full_dim, dims, shells)
        if shared is not None:
            terms = distillation_from_cosines(shared, full_dim, dims, temperature, scale)
        else:
            terms = similarity_distillation(embeddings, dims, temperature, scale, gather=_gathers(self.loss))
        weights = dict(active)
        return {dim: weights[dim] * self.distill_weight * terms[dim] for dim in dims}

    def _shared_cosines(
        self, embeddings: list[Tensor], full_dim: int, dims: list[int], shells: ShellSimilarity | None
    ) -> dict[int, Tensor] | None:
        """The inner loss's first similarities at the full dim and at ``dims`` when they are the anchors against all
        candidates: a matrix ``cos_sim`` of a loss whose first direction is ``query_to_doc`` (the
        ``MultipleNegativesRankingLoss`` family), of the expected shape, unchanged since; else ``None``."""
        if shells is None or shells.kind != "matrix" or len(embeddings) < 2:
            return None
        if tuple(getattr(self.loss, "directions", ()))[:1] != ("query_to_doc",):
            return None
        world = torch.distributed.get_world_size() if _gathers(self.loss) else 1
        shape = (len(embeddings[0]), world * sum(len(column) for column in embeddings[1:]))
        wanted = [full_dim, *dims]
        first, versions = shells.first, shells.first_versions
        if not all(dim in first and tuple(first[dim].shape) == shape for dim in wanted):
            return None
        if any(first[dim]._version != versions[dim] for dim in wanted):  # written into by the inner loss
            return None
        return {dim: first[dim] for dim in wanted}

    def _quant_terms(self, active: list[tuple[int, float]]) -> dict[tuple[int, str], float]:
        """``{(dim, precision): weight_d * quant_weight * warm-up factor}`` for the active quantized dims (empty when
        the terms are off or still at a zero warm-up factor)."""
        if not self.quant_weight:
            return {}
        ramp = min(1.0, self.quant_step / self.quant_warmup) if self.quant_warmup else 1.0
        if ramp == 0:
            return {}
        return {
            (dim, precision): weight * self.quant_weight * ramp
            for dim, weight in active
            if dim in self.quant_dims
            for precision in self.quant_precision
        }

    def _fake_quantize(self, prefixes: Tensor, precision: str) -> Tensor:
        return fake_quantize(prefixes, precision, self.matryoshka_dims)

    def _similarity_scale(self) -> float:
        scale = getattr(self.loss, "scale", None)
        return float(scale) if isinstance(scale, (int, float)) and not isinstance(scale, bool) else 20.0

    def _forward_replay(
        self,
        sentence_features: list[dict[str, Tensor]],
        labels: Any,
        active: list[tuple[int, float]],
        quant: dict[tuple[int, str], float],
        quantized: dict[str, Tensor],
    ) -> tuple[dict[int, Tensor], list[Tensor], ShellSimilarity | None]:
        """Fallback for losses without ``compute_loss_from_embeddings``: ``model.forward`` is replaced for the
        duration of this call so that only the first (largest) dimension runs the encoder. Returns the losses, the
        full-size embeddings the encoder produced (one per call) and the shell similarities, if they served."""
        cached = CachedForward(self.model.forward)
        losses = {}
        with patched(self.model, "forward", cached), self._helpers_once() as helpers:
            with self._shells(active) as shells:
                for dim, weight in active:
                    if shells is not None:
                        shells.start(dim)
                    cached.start(dim, renormalise=not (shells is not None and shells.scale_free))
                    helpers.start()
                    with self._head(dim):
                        losses[dim] = weight * self.loss(sentence_features, self._dim_labels(labels, dim))
            for (dim, precision), factor in quant.items():
                cached.start(dim, lambda prefixes, p=precision: self._fake_quantize(prefixes, p))
                helpers.start()
                with self._head(dim):
                    value = self.loss(sentence_features, self._dim_labels(labels, dim))
                quantized[f"quant_{precision}_dim_{dim}"] = factor * value
        return losses, cached.full, shells

    @contextmanager
    def _helpers_once(self):
        """On the replay path, run a helper model of the inner loss (``GISTEmbedLoss``'s ``guide``) once per step
        instead of once per dim (:class:`RepeatedForward`); a guide that is the trained model itself is left to the
        model's own replay."""
        guide = getattr(self.loss, "guide", None)
        if not isinstance(guide, nn.Module) or guide is self.model:
            yield NoHelper()
            return
        repeated = RepeatedForward(guide.forward)
        with patched(guide, "forward", repeated):
            yield repeated

    @contextmanager
    def _head(self, dim: int):
        if self.heads is None:
            yield
            return
        original = self.loss.classifier
        self.loss.classifier = self.heads.head(dim)
        try:
            yield
        finally:
            self.loss.classifier = original

    def _forward_gradient_cache(
        self,
        sentence_features: list[dict[str, Tensor]],
        labels: Any,
        active: list[tuple[int, float]],
        distilled: dict[int, Tensor],
        quant: dict[tuple[int, str], float],
        quantized: dict[str, Tensor],
    ) -> dict[int, Tensor]:
        """For GradCache losses (``Cached*``): their ``calculate_loss`` sees every mini-batch's embeddings at once,
        so it is wrapped, for this call only, to run at each dimension (and on each fake-quantized prefix).

        Two ways, chosen per step by :meth:`_one_graph_bytes`: while every dim's loss graph fits in
        ``one_graph_max_bytes``, all dims are computed as one graph, their similarities shell by shell, and
        back-propagated once (:meth:`_gradient_cache_one_graph`); beyond it, each dim runs the inner loss's own
        chunked backward (one mini-batch's score rows at a time) and the gradients of all of them are pushed through
        the truncation in one backward call (:meth:`_gradient_cache_per_dim`)."""
        calculate_loss = self.loss.calculate_loss
        per_dim: dict[int, Tensor] = {}
        # (dim, weight, precision or None): the inner loss's runs on the float prefixes, then on the codes
        runs = [(dim, weight, None) for dim, weight in active]
        runs += [(dim, factor, precision) for (dim, precision), factor in quant.items()]

        def matryoshka_calculate_loss(reps: list[list[Tensor]], *args: Any, with_backward: bool = False, **kwargs):
            def run(inputs: list[list[Tensor]], **backward: bool) -> Tensor:
                return calculate_loss(inputs, *args, **kwargs, **backward)

            step = _GradientCacheStep(run, reps, active, runs, with_backward, per_dim, distilled, quantized)
            if self._one_graph_bytes(reps, len(runs)) <= self.one_graph_max_bytes:
                self.last_gradient_cache_path = "one_graph"
                return self._gradient_cache_one_graph(step)
            self.last_gradient_cache_path = "per_dim"
            return self._gradient_cache_per_dim(step)

        with patched(self.loss, "calculate_loss", matryoshka_calculate_loss):
            total = self.loss(sentence_features, labels)
        # `total` carries the GradCache backward hook: route the gradient through the first component and give the
        # others their detached values, so that the components still sum to the total.
        first, *rest = per_dim
        detached = [per_dim[dim].detach() for dim in rest] + list(distilled.values()) + list(quantized.values())
        losses = {first: total - sum(detached)}
        losses.update({dim: per_dim[dim].detach() for dim in rest})
        return losses

    def _one_graph_bytes(self, reps: list[list[Tensor]], n_runs: int) -> int:
        """An upper estimate of the loss-side autograd memory of all runs at once: four float32 ``(B, C)`` score
        matrices per run and similarity direction (scores, shell sums, the softmax's input and output; GIST's guide
        matrices are no larger), ``B`` this process's anchors, ``C`` the candidates of every process. Measured on
        CMNRL, the saved tensors come to about 3.5 of them."""
        anchors = sum(len(rep) for rep in reps[0])
        world = torch.distributed.get_world_size() if _gathers(self.loss) else 1
        candidates = world * sum(len(rep) for column in reps[1:] for rep in column) or anchors
        # MNRL's directions, or GIST's anchor-candidate, anchor-anchor and positive-positive matrices
        directions = len(tuple(getattr(self.loss, "directions", ()))) or 1 + sum(
            bool(getattr(self.loss, name, False)) for name in ("contrast_anchors", "contrast_positives")
        )
        return 16 * n_runs * directions * anchors * candidates

    def _gradient_cache_one_graph(self, step: _GradientCacheStep) -> Tensor:
        """Every run on the truncated ``reps`` in one graph (the first dim computes every dim's similarities shell
        by shell, :class:`ShellSimilarity`), the distillation reusing them, and one backward into ``reps``."""
        run, reps, active, runs = step.run, step.reps, step.active, step.runs
        per_dim, distilled, quantized = step.per_dim, step.distilled, step.quantized
        total = 0.0
        with self._shells(active) as shells:
            for dim, weight in active:
                if shells is not None:
                    shells.start(dim)
                prefixes = [[_prefix(rep, dim, shells) for rep in column] for column in reps]
                per_dim[dim] = weight * run(prefixes)
                total = total + per_dim[dim]
        for dim, factor, precision in runs[len(active) :]:
            # one set of int8 scales per column, as on the other paths
            codes = [
                list(self._fake_quantize(truncate(torch.cat(column), dim), precision).split([len(r) for r in column]))
                for column in reps
            ]
            value = factor * run(codes)
            quantized[f"quant_{precision}_dim_{dim}"] = value.detach()
            total = total + value
        # self-distillation reads every mini-batch's full embeddings at once (the whole batch is the teacher)
        terms = self._distill([torch.cat(column) for column in reps], active, shells)
        for dim, term in terms.items():
            distilled[dim] = term.detach()
            total = total + term
        if not step.with_backward:
            return total
        total.backward()
        for dim in per_dim:
            per_dim[dim] = per_dim[dim].detach()
        return total.detach()

    def _gradient_cache_per_dim(self, step: _GradientCacheStep) -> Tensor:
        """Each run through the inner loss's own chunked backward, into detached copies of the truncated ``reps``;
        then one backward call pushes all of their gradients (and the distillation's) through the truncation."""
        run, reps, active, runs = step.run, step.reps, step.active, step.runs
        per_dim, distilled, quantized = step.per_dim, step.distilled, step.quantized
        truncated_all, grads_all = [], []
        total = 0.0
        for dim, weight, precision in runs:
            truncated = [[truncate(rep, dim) for rep in column] for column in reps]
            inputs = [[rep.detach().requires_grad_() for rep in column] for column in truncated]
            leaves = inputs
            if precision is not None:  # one set of int8 scales per column, as on the other paths
                inputs = [
                    list(self._fake_quantize(torch.cat(column), precision).split([len(r) for r in column]))
                    for column in (inputs if step.with_backward else truncated)
                ]
            elif not step.with_backward:
                inputs = truncated
            if step.with_backward:
                value = run(inputs, with_backward=True)
                for column, leaf_column in zip(truncated, leaves):
                    for rep, leaf in zip(column, leaf_column):
                        if leaf.grad is not None:
                            truncated_all.append(rep)
                            grads_all.append(leaf.grad * weight)
            else:
                value = run(inputs)
            if precision is None:
                per_dim[dim] = weight * value
            else:
                quantized[f"quant_{precision}_dim_{dim}"] = (weight * value).detach()
            total = total + weight * value
        # self-distillation reads every mini-batch's full embeddings at once (the whole batch is the teacher)
        terms = self._distill([torch.cat(column) for column in reps], active)
        for dim, term in terms.items():
            distilled[dim] = term.detach()
            total = total + term.detach() if step.with_backward else total + term
        if step.with_backward and terms:
            truncated_all.append(torch.stack(list(terms.values())).sum())
            grads_all.append(torch.ones((), device=truncated_all[-1].device))
        if truncated_all:
            torch.autograd.backward(truncated_all, grads_all)
        return total.detach() if step.with_backward else total

    # -- sentence-transformers loss contract ---------------------------------------------------------------------
    def get_config_dict(self) -> dict[str, Any]:
        config = {
            "loss": type(self.loss).__name__,
            "matryoshka_dims": list(self.matryoshka_dims),
            "matryoshka_weights": list(self.matryoshka_weights),
            "n_dims_per_step": self.n_dims_per_step,
        }
        if self.distill_weight:
            config.update(distill_weight=self.distill_weight, distill_temperature=self.distill_temperature)
        if self.full_dim_share is not None:
            config["full_dim_share"] = self.full_dim_share
        if self.quant_weight:
            config.update(
                quant_weight=self.quant_weight,
                quant_precision=list(self.quant_precision),
                quant_dims=list(self.quant_dims),
                quant_warmup=self.quant_warmup,
            )
        if self.heads is not None:
            config["head_mode"] = self.head_mode
        return config

    def save_heads(self, path: str) -> None:
        """Save the per-dimension heads (if the inner loss has a classifier) into the folder ``path``."""
        if self.heads is None:
            raise ValueError(f"{type(self.loss).__name__} has no classifier head to save.")
        self.heads.save(path)

    def load_heads(self, path: str) -> None:
        """Load heads saved by :meth:`save_heads` into this loss (and its inner loss's full-dim classifier)."""
        if self.heads is None:
            raise ValueError(f"{type(self.loss).__name__} has no classifier head to load into.")
        loaded = MatryoshkaHeads.load(path, device=self.heads.full.weight.device)
        if loaded.get_config_dict() != self.heads.get_config_dict():
            raise ValueError(
                f"The heads in {path!r} were saved for {loaded.get_config_dict()}, "
                f"but this loss has {self.heads.get_config_dict()}."
            )
        self.heads.load_state_dict(loaded.state_dict())

    @property
    def citation(self) -> str:
        return """
@misc{kusupati2024matryoshka,
    title={Matryoshka Representation Learning},
    author={Aditya Kusupati and Gantavya Bhatt and Aniket Rege and Matthew Wallingford and Aditya Sinha and Vivek Ramanujan and William Howard-Snyder and Kaifeng Chen and Sham Kakade and Prateek Jain and Ali Farhadi},
    year={2024},
    eprint={2205.13147},
    archivePrefix={arXiv},
    primaryClass={cs.LG}
}
"""


@dataclass
class _GradientCacheStep:
    """What both ways of a GradCache step read (the inner loss's ``calculate_loss`` with this call's arguments, the
    mini-batch embeddings, the active dims and every run) and fill (the per-dim, distillation and quantized terms)."""

    run: Callable[..., Tensor]
    reps: list[list[Tensor]]
    active: list[tuple[int, float]]
    runs: list[tuple[int, float, str | None]]
    with_backward: bool
    per_dim: dict[int, Tensor]
    distilled: dict[int, Tensor]
    quantized: dict[str, Tensor]


def _prefix(embeddings: Tensor, dim: int, shells: ShellSimilarity | None) -> Tensor:
    """The first ``dim`` coordinates as the inner loss gets them: renormalised (:func:`truncate`), or as they are when
    the shells serve a loss that reads them only through cosines (``shells.scale_free``), which ignore a row's
    length."""
    if shells is not None and shells.scale_free:
        return embeddings[..., :dim]
    return truncate(embeddings, dim)


def _gathers(loss: nn.Module) -> bool:
    """Whether the inner loss compares with the candidates of every process (and a process group is running)."""
    return bool(getattr(loss, "gather_across_devices", False)) and torch.distributed.is_initialized()
