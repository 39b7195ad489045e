"""The Matryoshka-Adaptor's settings (:class:`AdaptorConfig`), checked where they are defined."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass
class AdaptorConfig:
    """How :meth:`MatryoshkaAdaptor.fit` trains.

    Attributes:
        hidden_dim: width of the MLP's hidden layer (``None``: the embedding dimension).
        pca_init: rotate the embeddings by a PCA rotation fitted on them before the residual MLP (measured on the
            dev sets: a better start than the identity at the same number of steps).
        steps: optimiser steps (each draws ``batch_size`` anchors and their neighbours).
        batch_size: anchors per step; the pairwise loss uses all pairs among them.
        learning_rate: AdamW learning rate, decayed to 0 on a cosine schedule.
        weight_decay: AdamW weight decay.
        k: nearest neighbours per anchor for the top-k loss.
        topk_weight: weight of the top-k neighbour similarity loss.
        pairwise_weight: weight of the in-batch pairwise similarity loss.
        reconstruction_weight: weight of ``mean |f(x) - x|``.
        supervised_weight: weight of the ranking loss on pairs (only used when pairs are given).
        scale: inverse temperature of the ranking loss (sentence-transformers' MNRL default, 20).
        max_seconds: stop early after this many seconds of wall time (``None``: run all ``steps``).
        num_threads: torch CPU threads while fitting (restored afterwards; ``None``: leave torch's setting). One
            thread is the default because each step is many small operations that extra threads mostly wait on.
        seed: seeds initialisation and sampling.
        show_progress_bar: tqdm bar over the steps.
    """

    hidden_dim: int | None = None
    pca_init: bool = True
    steps: int = 1000
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    k: int = 10
    topk_weight: float = 1.0
    pairwise_weight: float = 1.0
    reconstruction_weight: float = 0.01
    supervised_weight: float = 1.0
    scale: float = 20.0
    max_seconds: float | None = None
    num_threads: int | None = 1
    seed: int = 0
    show_progress_bar: bool = True

    def __post_init__(self) -> None:
        positive = {
            "steps": self.steps,
            "batch_size": self.batch_size,
            "k": self.k,
            "learning_rate": self.learning_rate,
        }
        bad = {name: value for name, value in positive.items() if not value > 0}
        for name in ("hidden_dim", "num_threads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                bad[name] = getattr(self, name)
        weights = ("topk_weight", "pairwise_weight", "reconstruction_weight", "supervised_weight", "weight_decay")
        bad.update({name: getattr(self, name) for name in weights if not getattr(self, name) >= 0})
        if bad:
            raise ValueError(
                f"Invalid adaptor settings {bad}: sizes, steps and the learning rate must be > 0, weights >= 0."
            )
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 for the pairwise loss, got {self.batch_size}.")


def resolve_config(config: AdaptorConfig | None, overrides: dict[str, Any]) -> AdaptorConfig:
    config = config or AdaptorConfig()
    names = {field.name for field in dataclasses.fields(AdaptorConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ValueError(f"Unknown adaptor setting(s) {unknown}: valid ones are {sorted(names)}.")
    return dataclasses.replace(config, **overrides)
