"""What a training run produced: :class:`TrainResult` (the model's path and its score at every dim)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from matryoshka_st.evaluation.quality import QualityByDim, share_of_full


@dataclass
class TrainResult:
    """What a run produced: where the model is, and its score at every dim before and after training."""

    output_dir: str
    model_path: str | None
    dims: list[int]
    metric: str | None = None  # e.g. "dev_wordnet_dim_{dim}_cosine_ndcg@10"
    scores_before: dict[int, float] = field(default_factory=dict)
    scores_after: dict[int, float] = field(default_factory=dict)
    recommended_truncate_dim: int | None = None
    global_step: int = 0
    train_runtime: float = 0.0

    def quality(self, keep: float = 0.98, after: bool = True) -> QualityByDim | None:
        """The evaluator's scores after (or before) training as a :class:`QualityByDim`; ``None`` without scores."""
        scores = self.scores_after if after else self.scores_before
        if not scores:
            return None
        # e.g. "dev_wordnet_dim_{dim}_cosine_ndcg@10": task "dev_wordnet", metric "ndcg@10"
        task, metric = (
            (self.metric.split("_dim_")[0], self.metric.rsplit("_", 1)[-1]) if self.metric else ("score", "score")
        )
        label = "fine-tuned" if after else "base"
        return QualityByDim.from_dim_scores(scores, task=task, metric=metric, keep=keep, label=label)

    def table(self) -> str:
        """A plain-text table: dim, base score, fine-tuned score, and each as a % of its own full-dim score."""
        if not self.scores_after:
            return ""
        label = (self.metric or "score").rsplit("_", 1)[-1]
        full = max(self.scores_after)

        rows = [("dim", f"base {label}", f"fine-tuned {label}", f"base % of {full}", f"fine-tuned % of {full}")]
        for dim in sorted(self.scores_after, reverse=True):
            before = self.scores_before.get(dim)
            rows.append(
                (
                    str(dim),
                    f"{before:.4f}" if before is not None else "-",
                    f"{self.scores_after[dim]:.4f}",
                    _percent(share_of_full(before, self.scores_before.get(full))),
                    _percent(share_of_full(self.scores_after[dim], self.scores_after[full])),
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in rows]
        lines.insert(1, "  ".join("-" * width for width in widths))
        return "\n".join(lines)


def _percent(share: float) -> str:
    return "-" if math.isnan(share) else f"{share:.1%}"
