"""Quality by dimension: one model's scores by task, precision and dim, and the numbers derived from them.

The one owner of "share of the full-dimension score", "smallest dim that keeps a share" (the recommended dim) and
"bytes per vector". The training evaluator, the eval report, ``matryoshka_config.json`` and the model card all read
these from here.

Example:
    >>> quality = QualityByDim.from_dim_scores({384: 0.60, 128: 0.59, 64: 0.50}, task="dev", metric="ndcg_at_10")
    >>> quality.recommended_dim, round(quality.share(MEAN, 64), 3), bytes_per_vector(64, "int8")
    (128, 0.833, 64)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MEAN = "mean"
# binary+rescore: documents stored as binary codes, shortlisted by Hamming distance, rescored with the float query
# (matryoshka_st.quantization.rescore_binary); it stores what binary stores. binary+int8-rescore: the same shortlist
# rescored against the documents' int8 codes (a binary index in RAM, int8 codes read for the shortlist): it stores both
PRECISIONS = ("float32", "int8", "binary", "binary+rescore", "binary+int8-rescore")
STORED_PRECISIONS = ("float32", "int8", "binary")  # the distinct storage formats
# main score -> (mteb task type, readable name), for the local task kinds (and mteb's reranking) that mteb cannot
# look up by task name; in order of preference where several metrics share the main score's value
METRICS = {
    "ndcg_at_10": ("Retrieval", "nDCG@10"),
    "cosine_spearman": ("STS", "Spearman (cosine)"),
    "accuracy": ("Classification", "accuracy"),
    "max_ap": ("PairClassification", "AP"),
    "v_measure": ("Clustering", "V-measure"),
    "map_at_1000": ("Reranking", "MAP@1000"),
}


def metric_name(metric: str) -> str:
    """A readable name of a main score, e.g. ``nDCG@10`` for ``ndcg_at_10``."""
    return METRICS.get(metric, (None, metric))[1]


def check_precisions(precisions: list[str] | tuple[str, ...]) -> list[str]:
    """The precisions, validated against :data:`PRECISIONS`."""
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad or not precisions:
        raise ValueError(f"Unknown precision(s) {bad or precisions!r}: use one or more of {list(PRECISIONS)}.")
    return list(dict.fromkeys(precisions))


def bytes_per_vector(dim: int, precision: str) -> int:
    """Storage of one vector: 4 bytes a coordinate for float32, 1 for int8, 1 bit (rounded up to bytes) for binary
    and binary+rescore (which stores the binary codes and rescores them with the float query); binary+int8-rescore
    stores both the binary codes (searched, in RAM) and the int8 codes (read for the shortlist only).

    Example:
        >>> [bytes_per_vector(384, p) for p in ("float32", "int8", "binary", "binary+rescore", "binary+int8-rescore")]
        [1536, 384, 48, 48, 432]
    """
    check_precisions([precision])
    bits = math.ceil(dim / 8)
    return {
        "float32": 4 * dim,
        "int8": dim,
        "binary": bits,
        "binary+rescore": bits,
        "binary+int8-rescore": bits + dim,
    }[precision]


def share_of_full(score: float | None, reference: float | None) -> float:
    """``score / reference``; NaN when either is missing or the reference is not positive."""
    if score is None or reference is None or not reference > 0:
        return math.nan
    return score / reference


def recommend_dim(scores: Mapping[int, float], keep: float = 0.98, full_dim: int | None = None) -> int | None:
    """The smallest dim whose score is at least ``keep`` times the full dim's score (``full_dim``, else the
    largest); the full dim itself when its score is not positive; ``None`` without scores.

    Example:
        >>> recommend_dim({384: 0.60, 128: 0.58, 64: 0.50}, keep=0.95)
        128
    """
    if not scores:
        return None
    reference_dim = full_dim if full_dim in scores else max(scores)
    reference = scores[reference_dim]
    if not reference > 0:
        return reference_dim
    return min(dim for dim, score in scores.items() if score >= keep * reference)


@dataclass
class QualityByDim:
    """The scores of one model: ``scores[precision][dim][task]``, plus ``MEAN`` over the tasks where all have one.

    Attributes:
        label: the model's label (e.g. ``tuned``, ``base``).
        tasks: task name -> main-score name.
        scores: ``scores[precision][dim][task]``; float32 holds the full-dimension reference.
        keep: the share of the full-dimension mean score the recommended dim keeps.
        name, revision: the model's name and revision in the results, where known.
    """

    label: str
    tasks: dict[str, str]
    scores: dict[str, dict[int, dict[str, float]]]
    keep: float = 0.98
    name: str | None = None
    revision: str | None = None

    def __post_init__(self) -> None:
        if not 0 < self.keep <= 1:
            raise ValueError(f"keep must be a share in (0, 1], e.g. 0.98, got {self.keep!r}.")
        for by_dim in self.scores.values():
            for by_task in by_dim.values():
                if MEAN not in by_task and self.tasks and all(task in by_task for task in self.tasks):
                    by_task[MEAN] = sum(by_task[t] for t in self.tasks) / len(self.tasks)
        # dims from largest to smallest, precisions in PRECISIONS order
        self.scores = {p: dict(sorted(self.scores[p].items(), reverse=True)) for p in PRECISIONS if p in self.scores}

    @classmethod
    def from_dim_scores(
        cls, scores: Mapping[int, float], *, task: str, metric: str, keep: float = 0.98, label: str = "model"
    ) -> QualityByDim:
        """One task's float32 scores by dim, e.g. a training evaluator's."""
        return cls(label, {task: metric}, {"float32": {int(d): {task: float(s)} for d, s in scores.items()}}, keep)

    @property
    def full_dim(self) -> int:
        return max(self.scores["float32"])

    def mean_scores(self, precision: str = "float32") -> dict[int, float]:
        """``{dim: mean score}`` at one precision, for the dims where every task has a score."""
        return {dim: by_task[MEAN] for dim, by_task in self.scores.get(precision, {}).items() if MEAN in by_task}

    def reference(self, task: str = MEAN) -> float:
        """``task``'s float32 score at the full dim (NaN when missing)."""
        return self.scores["float32"][self.full_dim].get(task, math.nan)

    def share(self, task: str, dim: int, precision: str = "float32") -> float:
        """``task``'s score at ``dim`` as a share of its float32 full-dimension score (NaN when undefined)."""
        return share_of_full(self.scores.get(precision, {}).get(dim, {}).get(task), self.reference(task))

    @property
    def recommended_dim(self) -> int:
        """The smallest float32 dim keeping ``keep`` of the full-dimension mean score."""
        means = self.mean_scores()
        return recommend_dim(means, self.keep, self.full_dim) if self.full_dim in means else self.full_dim

    def cheapest(self) -> dict[str, Any] | None:
        """The setting (dim, precision) with the fewest bytes per vector that keeps ``keep`` of the full score."""
        reference = self.reference()
        if not reference > 0:
            return None
        candidates = [
            (bytes_per_vector(d, p), -score, d, p)
            for p in self.scores
            for d, score in self.mean_scores(p).items()
            if score >= self.keep * reference
        ]
        best = min(candidates, default=None)
        if best is None:
            return None
        return {"dim": best[2], "precision": best[3], "bytes_per_vector": best[0], "mean_score": -best[1]}

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (one model's entry in the eval report's ``summary.json``)."""
        recommended = self.recommended_dim
        return {
            "name": self.name,
            "revision": self.revision,
            "tasks": {task: self.tasks[task] for task in sorted(self.tasks)},
            "full_dim": self.full_dim,
            "full_dim_mean_score": self.reference(),
            "keep": self.keep,
            "recommended_dim": recommended,
            "recommended_mean_score": self.scores["float32"][recommended].get(MEAN),
            "cheapest": self.cheapest(),
            "scores": {
                precision: {
                    str(dim): {
                        "bytes_per_vector": bytes_per_vector(dim, precision),
                        **{task: by_task[task] for task in [*sorted(self.tasks), MEAN] if task in by_task},
                        "share_of_full": self.share(MEAN, dim, precision) if MEAN in by_task else None,
                    }
                    for dim, by_task in by_dim.items()
                }
                for precision, by_dim in self.scores.items()
            },
        }


__all__ = [
    "MEAN",
    "METRICS",
    "PRECISIONS",
    "QualityByDim",
    "STORED_PRECISIONS",
    "bytes_per_vector",
    "check_precisions",
    "metric_name",
    "recommend_dim",
    "share_of_full",
]
