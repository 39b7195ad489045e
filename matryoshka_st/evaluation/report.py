"""The quality-against-dimension report: tables, a JSON summary with the recommended dimension, and plots.

Reads mteb result folders as :func:`~matryoshka_st.evaluation.run.evaluate` writes them (each experiment folder holds
mteb's ``model_meta.json``, whose ``experiment_kwargs`` name the dimension and precision, next to one ``TaskResult``
JSON per task). Plain mteb result folders without experiments count as the model's full dimension at float32. The
scores are mteb's main scores; this module only tabulates and plots them, which neither mteb nor sentence-transformers
does per dimension.

Example:
    >>> report = render(["eval_out"], "eval_out/report", keep=0.98)
    >>> print(report.table)  # doctest: +SKIP
    >>> report.recommended  # doctest: +SKIP
    {'base': 256, 'fine-tuned': 128}
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mteb.results import TaskResult

from matryoshka_st.evaluation.quality import MEAN, METRICS, PRECISIONS, QualityByDim, bytes_per_vector

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Score:
    """One main score: a model at one dimension and precision on one task."""

    model: str
    revision: str
    task: str
    metric: str
    dim: int
    precision: str
    score: float


@dataclass
class Report:
    """What :func:`render` wrote, and the numbers people ask for first.

    Attributes:
        markdown, csv, summary: the paths of ``report.md``, ``scores.csv`` and ``summary.json``.
        plots: the PNG files (score vs dimension, score vs bytes per vector).
        table: the Markdown text of ``report.md``.
        recommended: per model label, the smallest dimension keeping ``keep`` of the full-dimension mean score.
        qualities: the scores of each model, as :class:`~matryoshka_st.evaluation.quality.QualityByDim`.
    """

    markdown: Path
    csv: Path
    summary: Path
    plots: list[Path] = field(default_factory=list)
    table: str = ""
    recommended: dict[str, int] = field(default_factory=dict)
    qualities: list[QualityByDim] = field(default_factory=list)


def load_scores(results_paths: Sequence[str | Path]) -> list[Score]:
    """Every main score under the given result folders (or single result JSON files)."""
    scores: dict[tuple[str, str, str, int, str], Score] = {}
    for root in map(Path, results_paths):
        if not root.exists():
            raise FileNotFoundError(f"Results path {str(root)!r} does not exist.")
        if root.is_file():
            folders = {root.parent: [root]}
        else:
            folders = {meta.parent: None for meta in sorted(root.rglob("model_meta.json"))}
        for folder, files in folders.items():
            for score in _folder_scores(folder, files):
                scores[(score.model, score.revision, score.task, score.dim, score.precision)] = score
    if not scores:
        raise ValueError(
            f"No mteb results found under {[str(p) for p in results_paths]}: pass the --output folder of "
            "`matryoshka-st eval` (it holds results/<model>/<revision>/experiments/...)."
        )
    return list(scores.values())


def _folder_scores(folder: Path, files: list[Path] | None) -> list[Score]:
    meta_path = folder / "model_meta.json"
    if not meta_path.exists():
        raise ValueError(f"{folder} has no model_meta.json: it is not an mteb result folder.")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(
            f"{meta_path} is not valid JSON ({error}): rerun `matryoshka-st eval` for this model with --overwrite."
        ) from None
    experiment = meta.get("experiment_kwargs") or {}
    dim = experiment.get("embed_dim", meta.get("embed_dim"))
    precision = experiment.get("output_dtypes", "float32")
    if isinstance(precision, list):
        precision = precision[0] if precision else "float32"
    if experiment.get("rescore"):  # binary codes shortlisted, rescored with the float query (TruncatedEncoder)
        with_codes = experiment.get("rescore_with")  # against the documents' int8 codes instead of their bits
        precision = f"{precision}+{with_codes}-rescore" if with_codes else f"{precision}+rescore"
    if dim is None or precision not in PRECISIONS:
        logger.warning("Skipping %s: dimension %r / precision %r not understood.", folder, dim, precision)
        return []
    scores = []
    for path in files or sorted(folder.glob("*.json")):
        if path.name == "model_meta.json":
            continue
        try:
            result = TaskResult.from_disk(path)
        except Exception as error:  # JSON or pydantic errors: half-written by a killed run
            logger.warning(
                "Skipping %s: not a complete result (%s). Rerun the same `matryoshka-st eval` command to redo it.",
                path,
                error,
            )
            continue
        scores.append(
            Score(
                model=str(meta.get("name")),
                revision=str(meta.get("revision")),
                task=result.task_name,
                metric=_main_score_name(result),
                dim=int(dim),
                precision=str(precision),
                score=float(result.get_score()),
            )
        )
    return scores


def _main_score_name(result: TaskResult) -> str:
    import mteb

    try:
        return mteb.get_task(result.task_name).metadata.main_score
    except KeyError:  # a local task: the metric whose value mteb copied into main_score
        first = next(iter(result.scores.values()))[0]
        matches = [k for k, v in first.items() if k != "main_score" and v == first["main_score"]]
        preferred = [k for k in METRICS if k in matches]
        return (preferred or matches or ["main_score"])[0]


def render(results_paths: Sequence[str | Path], output_dir: str | Path, keep: float = 0.98) -> Report:
    """Write ``report.md``, ``scores.csv``, ``summary.json`` and PNG plots for the results under ``results_paths``.

    Args:
        results_paths: result folders written by :func:`~matryoshka_st.evaluation.run.evaluate` (or mteb), or
            single result JSON files.
        output_dir: where to write the report (created if missing).
        keep: the share of the full-dimension mean score the recommended dimension must keep.

    Returns:
        The :class:`Report` with the written paths, the Markdown table and the recommended dimension per model.

    Example:
        >>> report = render(["eval_out"], "eval_out/report")
        >>> report.recommended["base"]  # doctest: +SKIP
        256
    """
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be a share in (0, 1], e.g. 0.98, got {keep!r}.")
    scores = load_scores(results_paths)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    tables = _tables(scores, keep)
    summary = _summary(tables, keep)

    markdown = _markdown(tables, summary, keep)
    report = Report(
        markdown=output_dir / "report.md",
        csv=output_dir / "scores.csv",
        summary=output_dir / "summary.json",
        table=markdown,
        recommended={label: s["recommended_dim"] for label, s in summary["models"].items()},
        qualities=tables,
    )
    report.markdown.write_text(markdown, encoding="utf-8")
    _write_csv(report.csv, tables)
    report.plots = _plots(tables, summary, output_dir, keep)
    summary["files"] = {
        "markdown": report.markdown.name,
        "csv": report.csv.name,
        "plots": [p.name for p in report.plots],
    }
    report.summary.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return report


# --- tables -----------------------------------------------------------------------------------------------------------


def _tables(scores: list[Score], keep: float = 0.98) -> list[QualityByDim]:
    revisions: dict[str, set[str]] = {}
    for s in scores:
        revisions.setdefault(s.model, set()).add(s.revision)
    tables: dict[tuple[str, str], tuple[str, dict[str, str], dict[str, dict[int, dict[str, float]]]]] = {}
    for s in sorted(scores, key=lambda s: (s.model, s.revision)):
        label = s.model.removeprefix("local/")
        if len(revisions[s.model]) > 1:
            label = f"{label}@{s.revision[:8]}"
        _, metrics, by_precision = tables.setdefault((s.model, s.revision), (label, {}, {}))
        metrics[s.task] = s.metric
        by_precision.setdefault(s.precision, {}).setdefault(s.dim, {})[s.task] = s.score
    result = []
    for (name, revision), (label, metrics, by_precision) in tables.items():
        if "float32" not in by_precision:
            logger.warning("Skipping %s: no float32 results, so no full-dimension reference score.", label)
            continue
        metrics = {task: metrics[task] for task in sorted(metrics)}
        result.append(QualityByDim(label, metrics, by_precision, keep, name, revision))
    if not result:
        raise ValueError("No model has float32 results: evaluate with precision float32 to get a reference score.")
    return result


def _summary(tables: list[QualityByDim], keep: float) -> dict[str, Any]:
    for table in tables:
        if not table.reference() > 0:
            logger.warning(
                "%s: full-dimension mean score %.4f <= 0; recommending the full dimension.",
                table.label,
                table.reference(),
            )
    return {"keep": keep, "models": {table.label: replace(table, keep=keep).to_dict() for table in tables}}


def _markdown(tables: list[QualityByDim], summary: dict[str, Any], keep: float) -> str:
    lines = [
        "# Quality against dimension",
        "",
        "mteb main score per task at each embedding dimension, with its share of the full-dimension float32 score.",
        "",
        f"## Recommended dimension (keeps >= {keep:.0%} of the full-dimension mean score)",
        "",
        "| model | full dim | full-dim mean | recommended dim | its mean | cheapest setting keeping the share |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for label, s in summary["models"].items():
        cheapest = s["cheapest"]
        cheap = (
            "none"
            if cheapest is None
            else (f"{cheapest['dim']} dims {cheapest['precision']} ({cheapest['bytes_per_vector']} bytes/vector)")
        )
        lines.append(
            f"| {label} | {s['full_dim']} | {s['full_dim_mean_score']:.4f} | **{s['recommended_dim']}** | "
            f"{s['recommended_mean_score']:.4f} | {cheap} |"
        )
    for table in tables:
        lines += _grid(table)
    for table in tables:
        for precision, by_dim in table.scores.items():
            dims = list(by_dim)
            lines += ["", f"## {table.label}: {precision}", ""]
            lines.append("| task (metric) | " + " | ".join(str(d) for d in dims) + " |")
            lines.append("| --- |" + " ---: |" * len(dims))
            for task in [*table.tasks, MEAN] if len(table.tasks) > 1 else list(table.tasks):
                name = f"**{MEAN}**" if task == MEAN else f"{task} ({table.tasks[task]})"
                cells = []
                for dim in dims:
                    score = by_dim[dim].get(task)
                    share = table.share(task, dim, precision)
                    cells.append(
                        "" if score is None else f"{score:.4f} ({share:.1%})" if share == share else f"{score:.4f}"
                    )
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
    all_dims = sorted({d for t in tables for by_dim in t.scores.values() for d in by_dim}, reverse=True)
    precisions = [p for p in PRECISIONS if any(p in t.scores for t in tables)]
    lines += ["", "## Bytes per vector", "", "| precision | " + " | ".join(str(d) for d in all_dims) + " |"]
    lines.append("| --- |" + " ---: |" * len(all_dims))
    for precision in precisions:
        lines.append(f"| {precision} | " + " | ".join(str(bytes_per_vector(d, precision)) for d in all_dims) + " |")
    return "\n".join(lines) + "\n"


def _grid(table: QualityByDim) -> list[str]:
    """One model's (dim, precision) grid: mean score, its share of the full float32 score and bytes per vector."""
    precisions = list(table.scores)
    dims = sorted({d for by_dim in table.scores.values() for d in by_dim}, reverse=True)
    task = MEAN if len(table.tasks) > 1 else next(iter(table.tasks))
    lines = [
        "",
        f"## {table.label}: every (dimension, precision)",
        "",
        f"{'Mean score' if task == MEAN else 'Score'}, share of the full-dimension float32 score, bytes per vector.",
        "",
        "| dim | " + " | ".join(precisions) + " |",
        "| ---: |" + " ---: |" * len(precisions),
    ]
    for dim in dims:
        cells = []
        for precision in precisions:
            score = table.scores[precision].get(dim, {}).get(task)
            share = table.share(task, dim, precision)
            cells.append(
                "" if score is None else f"{score:.4f} ({share:.1%}) · {bytes_per_vector(dim, precision):,} B"
            )
        lines.append(f"| {dim} | " + " | ".join(cells) + " |")
    return lines


def _write_csv(path: Path, tables: list[QualityByDim]) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["model", "revision", "task", "metric", "dim", "precision", "bytes_per_vector", "score", "share_of_full"]
        )
        for table in tables:
            for precision, by_dim in table.scores.items():
                for dim, by_task in by_dim.items():
                    for task, score in by_task.items():
                        share = table.share(task, dim, precision)
                        writer.writerow(
                            [
                                table.label,
                                table.revision,
                                task,
                                table.tasks.get(task, MEAN),
                                dim,
                                precision,
                                bytes_per_vector(dim, precision),
                                f"{score:.6f}",
                                "" if share != share else f"{share:.6f}",
                            ]
                        )


# --- plots ------------------------------------------------------------------------------------------------------------


def _plots(tables: list[QualityByDim], summary: dict[str, Any], output_dir: Path, keep: float) -> list[Path]:
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter
    except ImportError:
        logger.warning("matplotlib is not installed, so the report has no plots: pip install 'matryoshka_st[plot]'")
        return []
    colors = [f"C{i}" for i in range(10)]

    # score vs dimension: one panel per task (plus the mean), one line per model
    tasks = sorted({task for t in tables for task in t.tasks})
    panels = tasks + [MEAN] if len(tasks) > 1 else tasks
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    figure = Figure(figsize=(5 * columns, 3.8 * rows), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False).ravel()
    for ax, panel in zip(axes, panels, strict=False):
        all_dims = set()
        for i, table in enumerate(tables):
            by_dim = table.scores["float32"]
            points = sorted((d, s[panel]) for d, s in by_dim.items() if panel in s)
            if not points:
                continue
            all_dims.update(d for d, _ in points)
            ax.plot(*zip(*points), marker="o", color=colors[i % 10], label=table.label)
            reference = table.reference(panel)
            if reference > 0:
                ax.axhline(keep * reference, color=colors[i % 10], linestyle=":", linewidth=1)
            if panel == MEAN or len(tasks) == 1:
                best = summary["models"][table.label]["recommended_dim"]
                ax.plot([best], [by_dim[best][panel]], marker="*", markersize=14, color=colors[i % 10])
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_locator(FixedLocator(sorted(all_dims)))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([str(d) for d in sorted(all_dims)])
        metric = MEAN if panel == MEAN else next(t.tasks[panel] for t in tables if panel in t.tasks)
        ax.set_title(f"{panel} ({metric})" if panel != MEAN else "mean over tasks")
        ax.set_xlabel("embedding dimension (log2)")
        ax.set_ylabel("score")
        ax.grid(alpha=0.3)
        if ax is axes[0]:
            ax.legend(
                fontsize="small", title=f"dotted: {keep:.0%} of full\nstar: recommended", title_fontsize="x-small"
            )
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    by_dim_path = output_dir / "score_vs_dim.png"
    figure.savefig(by_dim_path, dpi=110)

    # score vs bytes per vector: mean score, one line per model and precision
    panel = MEAN if len(tasks) > 1 else tasks[0]
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    ax = figure.subplots()
    markers = {"float32": "o", "int8": "s", "binary": "^", "binary+rescore": "v", "binary+int8-rescore": "D"}
    styles = {"float32": "-", "int8": "--", "binary": ":", "binary+rescore": "-.", "binary+int8-rescore": (0, (5, 1))}
    for i, table in enumerate(tables):
        for precision, by_dim in table.scores.items():
            points = sorted((bytes_per_vector(d, precision), s[panel]) for d, s in by_dim.items() if panel in s)
            if points:
                ax.plot(
                    *zip(*points),
                    marker=markers[precision],
                    linestyle=styles[precision],
                    color=colors[i % 10],
                    label=f"{table.label} {precision}",
                )
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel("bytes per vector (log2)")
    ax.set_ylabel("mean score" if panel == MEAN else f"{panel} score")
    ax.set_title("Quality against storage")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    by_bytes_path = output_dir / "score_vs_bytes.png"
    figure.savefig(by_bytes_path, dpi=110)
    return [by_dim_path, by_bytes_path]
