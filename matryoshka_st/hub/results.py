"""The eval results a model card describes: one model's :class:`~matryoshka_st.evaluation.quality.QualityByDim`
picked from ``matryoshka-st eval`` output, and its ``model-index`` entries for the Hub.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult

from matryoshka_st.evaluation.quality import METRICS, QualityByDim, metric_name

logger = logging.getLogger(__name__)

# mteb task type -> Hub task id, as mteb maps them (TaskMetadata._hf_task_type)
HUB_TASK_TYPES = {
    "Retrieval": "text-retrieval",
    "Reranking": "text-ranking",
    "STS": "sentence-similarity",
    "Classification": "text-classification",
    "PairClassification": "text-classification",
    "Clustering": "text-classification",
}


class CardError(ValueError):
    """Eval results or card inputs that cannot be used; the message names them and says what to do."""


@dataclass
class EvalSummary(QualityByDim):
    """The model the card describes, with its scores at every dimension and precision (a
    :class:`~matryoshka_st.evaluation.quality.QualityByDim`), the other models in the same results (e.g. the base
    model) and the quality-against-dimension plot (``None`` without matplotlib)."""

    others: dict[str, QualityByDim] = field(default_factory=dict)
    plot: Path | None = None


def load_eval_results(
    results_paths: Sequence[str | os.PathLike],
    report_dir: str | os.PathLike,
    *,
    model: str | None = None,
    model_dir: str | os.PathLike | None = None,
    keep: float = 0.98,
) -> EvalSummary:
    """Render the eval report of ``results_paths`` into ``report_dir`` and pick one model's scores from it.

    Args:
        results_paths: ``matryoshka-st eval`` output folders (or their ``results/`` folders, or mteb result files).
        report_dir: where :func:`~matryoshka_st.evaluation.report.render` writes its tables and plots.
        model: the label of the model to describe, when the results hold several (e.g. ``tuned``).
        model_dir: the model folder being described; with several models in the results and no ``model``, the one
            whose parameters match it (the eval revision is a hash of the parameters) is picked.
        keep: the share of the full-dimension mean score the recommended dimension must keep.

    Raises:
        CardError: when the results hold no scores, or several models and none can be matched.
    """
    from matryoshka_st.evaluation.report import render

    for path in results_paths:
        if not Path(path).exists():
            raise CardError(
                f"Results path {str(path)!r} does not exist: pass the --output folder of `matryoshka-st eval`."
            )
    try:
        report = render(list(results_paths), report_dir, keep=keep)
    except (ValueError, FileNotFoundError) as error:
        raise CardError(str(error)) from error
    qualities = {quality.label: quality for quality in report.qualities}
    chosen = qualities[_pick_model(qualities, model, model_dir)]
    return EvalSummary(
        **{f.name: getattr(chosen, f.name) for f in fields(QualityByDim)},
        others={label: quality for label, quality in qualities.items() if label != chosen.label},
        plot=next((p for p in report.plots if p.name == "score_vs_dim.png"), None),
    )


def _pick_model(qualities: dict[str, QualityByDim], model: str | None, model_dir: str | os.PathLike | None) -> str:
    labels = list(qualities)
    if model is not None:
        matches = [label for label in labels if model in (label, qualities[label].name)]
        if not matches:
            raise CardError(f"No results for model {model!r} in the eval results; they hold {labels}.")
        return matches[0]
    if len(labels) == 1:
        return labels[0]
    if model_dir is not None:
        from sentence_transformers import SentenceTransformer

        from matryoshka_st.evaluation.cache import model_revision

        revision = model_revision(SentenceTransformer(str(model_dir), device="cpu"))
        matches = [label for label in labels if qualities[label].revision == revision]
        if len(matches) == 1:
            logger.info("Eval results: describing %s, whose parameters match %s.", matches[0], model_dir)
            return matches[0]
    raise CardError(
        f"The eval results hold several models {labels} and none has the parameters of the model folder: name the "
        "one to describe with --results-model LABEL (model=LABEL in Python)."
    )


# --- model-index ---------------------------------------------------------------------------------------------------


def eval_results(results: EvalSummary) -> list[EvalResult]:
    """``model-index`` entries: one per task, dimension and precision, the dimension in ``metric_args``.

    Every dimension of a task is one metric of the same dataset entry, named e.g. ``nDCG@10 at 128 dims`` and
    with ``metric_args: {truncate_dim: 128}`` (plus ``precision`` for int8/binary).
    """
    entries = []
    for task in sorted(results.tasks):
        metric = results.tasks[task]
        task_type, dataset_type, dataset_revision = _task_metadata(task, metric)
        for precision, by_dim in results.scores.items():
            for dim in sorted(by_dim, reverse=True):
                score = by_dim[dim].get(task)
                if score is None:
                    continue
                args: dict[str, Any] = {"truncate_dim": dim}
                name = f"{metric_name(metric)} at {dim} dims"
                if precision != "float32":
                    args["precision"] = precision
                    name += f" ({precision})"
                entries.append(
                    EvalResult(
                        task_type=HUB_TASK_TYPES.get(task_type, "feature-extraction"),
                        task_name=task_type,
                        dataset_type=dataset_type,
                        dataset_name=task,
                        dataset_revision=dataset_revision,
                        metric_type=metric,
                        metric_value=round(float(score), 6),
                        metric_name=name,
                        metric_args=args,
                    )
                )
    return entries


def _task_metadata(task: str, metric: str) -> tuple[str, str, str | None]:
    """(mteb task type, dataset id, dataset revision): from mteb for its tasks, from the metric for local ones."""
    import mteb

    try:
        metadata = mteb.get_task(task).metadata
    except Exception:  # a local task, unknown to mteb's registry
        return METRICS.get(metric, ("Retrieval", metric))[0], task, None
    return metadata.type, metadata.dataset["path"], metadata.dataset.get("revision")


__all__ = ["CardError", "EvalSummary", "eval_results", "load_eval_results"]
