"""The model card of a Matryoshka model: sentence-transformers' generated ``README.md`` plus a Matryoshka section.

sentence-transformers writes a full card when it saves a trained model (architecture, training data, loss,
hyperparameters); this module keeps it and adds what it cannot know: quality at each dimension from
``matryoshka-st eval`` results, bytes per vector per precision, the recommended dimension, a ``truncate_dim`` usage
snippet and the quality-against-dimension plot. The YAML metadata is read and written with ``huggingface_hub``'s
``ModelCard``/``ModelCardData``; the per-dimension scores go into ``model-index`` as ``EvalResult`` entries. The
section itself is the shipped Jinja template ``card_template.md``; the scores, shares and plot come from
:func:`matryoshka_st.evaluation.report.render`.

Example:
    >>> card = build_card("output/matryoshka-minilm/final", repo_id="you/minilm-matryoshka",
    ...                   results=load_eval_results(["eval_out"], "/tmp/report"))  # doctest: +SKIP
    >>> card.save("upload/README.md")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard

from matryoshka_st.evaluation.quality import MEAN as _MEAN
from matryoshka_st.evaluation.quality import PRECISIONS, STORED_PRECISIONS, bytes_per_vector, metric_name
from matryoshka_st.hub.results import EvalSummary, eval_results
from matryoshka_st.usage import matryoshka_info

logger = logging.getLogger(__name__)

TEMPLATE_PATH = Path(__file__).with_name("card_template.md")
PLOT_NAME = "matryoshka_quality_vs_dim.png"
SECTION_START = "<!-- matryoshka-st:start -->"
SECTION_END = "<!-- matryoshka-st:end -->"
TAGS = ("sentence-transformers", "matryoshka")
PLACEHOLDER_MODEL_ID = "sentence_transformers_model_id"  # what sentence-transformers writes before a push
_MAX_TASK_COLUMNS = 4
# --- the Markdown section ------------------------------------------------------------------------------------------


def _cell(score: float | None, share: float) -> str:
    if score is None:
        return ""
    return f"{score:.4f}" if share != share else f"{score:.4f} ({share:.1%})"


def _quality_table(results: EvalSummary) -> tuple[list[str], list[dict[str, Any]], str]:
    tasks = sorted(results.tasks)
    shown = tasks if len(tasks) <= _MAX_TASK_COLUMNS else []
    columns = [f"{task} {metric_name(results.tasks[task])}" for task in shown]
    keys: list[tuple[str, str]] = [(task, "float32") for task in shown]
    if len(tasks) > 1:
        columns.append("mean")
        keys.append((_MEAN, "float32"))
    quantized = [p for p in PRECISIONS if p != "float32" and p in results.scores]
    score_key = _MEAN if len(tasks) > 1 else tasks[0]
    for precision in quantized:
        columns.append(f"{precision}{' mean' if len(tasks) > 1 else ''}")
        keys.append((score_key, precision))
    for other in results.others:
        columns.append(f"{other} (mean)" if len(tasks) > 1 else other)
    float32 = results.scores["float32"]
    rows = []
    for dim in sorted(float32, reverse=True):
        cells = [
            _cell(results.scores.get(p, {}).get(dim, {}).get(task), results.share(task, dim, p)) for task, p in keys
        ]
        for other in results.others.values():
            cells.append(_cell(other.mean_scores().get(dim), other.share(_MEAN, dim)))
        label = f"**{dim}**" if dim == results.recommended_dim else str(dim)
        rows.append({"dim": label, "cells": cells})
    task_list = ", ".join(f"`{task}` ({metric_name(results.tasks[task])})" for task in tasks)
    caption = (
        f"mteb main score{'s' if len(tasks) > 1 else ''} on {task_list} at each embedding dimension, with the "
        f"share of the full {results.full_dim}-dimension float32 score in brackets."
    )
    if quantized:
        caption += f" {' and '.join(quantized)}: the truncated vectors quantised with sentence-transformers' `quantize_embeddings`."
    if results.others:
        caption += f" Also shown for comparison: {', '.join(f'`{o}`' for o in results.others)}, each against its own full-dimension score."
    return columns, rows, caption


def _bytes_table(dims: list[int], recommended: int) -> tuple[list[dict[str, Any]], str]:
    rows = [
        {"precision": precision, "cells": [f"{bytes_per_vector(dim, precision):,}" for dim in dims]}
        for precision in STORED_PRECISIONS
    ]
    sizes = [bytes_per_vector(recommended, p) * 1_000_000 for p in STORED_PRECISIONS]
    readable = [f"{size / 1e6:,.0f} MB" if size >= 1e6 else f"{size / 1e3:,.0f} kB" for size in sizes]
    caption = (
        f"One million vectors at {recommended} dimensions take {readable[0]} as float32, {readable[1]} as int8 "
        f"and {readable[2]} as binary (`quantize_embeddings` in sentence-transformers), before any index overhead."
    )
    return rows, caption


def render_section(
    model_dir: str | os.PathLike,
    *,
    model_id: str = PLACEHOLDER_MODEL_ID,
    results: EvalSummary | None = None,
    plot_name: str | None = PLOT_NAME,
) -> str:
    """The Markdown of the Matryoshka section for the model in ``model_dir``, between its start/end markers.

    Args:
        model_dir: the model folder; its ``matryoshka_config.json`` gives the trained dims.
        model_id: the Hub id used in the usage snippet.
        results: eval scores from :func:`load_eval_results`; without them the section has no quality table.
        plot_name: the plot's file name in the repository, or ``None`` for no image.
    """
    import jinja2

    info = matryoshka_info(model_dir)
    full_dim = info["full_dim"] or (results.full_dim if results else None)
    dims = info["dims"] or (sorted(results.scores["float32"], reverse=True) if results else [full_dim])
    weights = info["weights"] or [1.0] * len(dims)
    if results is not None:
        recommended = results.recommended_dim
        reason = f"the smallest that keeps at least {results.keep:.0%} of the full-dimension score in the table below"
        below = sorted((d for d in results.scores["float32"] if d < results.full_dim), reverse=True)
        if recommended == results.full_dim and below:
            key = _MEAN if len(results.tasks) > 1 else next(iter(results.tasks))
            reason = (
                f"the full size: no smaller dimension keeps {results.keep:.0%} of its score in the table below; "
                f"{below[0]} keeps {results.share(key, below[0]):.1%}"
            )
    elif info["recommended_truncate_dim"]:
        recommended = info["recommended_truncate_dim"]
        rec = info["recommendation"] or {}
        threshold = rec.get("threshold")
        metric = (rec.get("metric") or "").replace("_dim_{dim}", "")
        reason = (
            f"the smallest that kept at least {threshold:.0%} of the full-dimension {metric} during training"
            if threshold and metric
            else ""
        )
    else:
        recommended, reason = full_dim, "no evaluation results: pass them to find a smaller one"
    # the snippet shows truncation even when the full size is recommended
    serve_dim = recommended if recommended < full_dim or len(dims) == 1 else max(d for d in dims if d < full_dim)
    smaller = [d for d in dims if d < serve_dim]
    columns, rows, caption = _quality_table(results) if results is not None else ([], [], "")
    bytes_dims = sorted(set(dims) | (set(results.scores["float32"]) if results else set()), reverse=True)
    bytes_rows, bytes_caption = _bytes_table(bytes_dims, recommended)
    template = jinja2.Template(TEMPLATE_PATH.read_text(encoding="utf-8"), keep_trailing_newline=True)
    section = template.render(
        dims=dims,
        weights=[f"{w:g}" for w in weights],
        weighted=len(set(weights)) > 1,
        loss=info["loss"],
        recipe=info["recipe"],
        full_dim=full_dim,
        recommended_dim=recommended,
        recommended_reason=reason,
        serve_dim=serve_dim,
        small_dim=max(smaller) if smaller else serve_dim,
        quality_columns=columns,
        quality_rows=rows,
        quality_caption=caption,
        plot=plot_name if results is not None and results.plot is not None else None,
        bytes_dims=bytes_dims,
        bytes_rows=bytes_rows,
        bytes_caption=bytes_caption,
        model_id=model_id,
        ends_with_normalize=info["ends_with_normalize"],
        has_metadata=info["matryoshka"],
    )
    return re.sub(r"\n{3,}", "\n\n", section).strip() + "\n"


def _as_list(value: str | Sequence[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


# --- the card ------------------------------------------------------------------------------------------------------


def build_card(
    model_dir: str | os.PathLike,
    *,
    repo_id: str | None = None,
    results: EvalSummary | None = None,
    base_model: str | None = None,
    datasets: str | Sequence[str] | None = None,
    license: str | None = None,
    language: str | Sequence[str] | None = None,
    model_name: str | None = None,
    tags: Sequence[str] = (),
    plot_name: str = PLOT_NAME,
) -> ModelCard:
    """sentence-transformers' card of ``model_dir`` with the Matryoshka section and metadata added.

    The section goes after the card's introduction (replacing one added before); the YAML front matter gains the
    ``matryoshka`` and ``sentence-transformers`` tags, the given base model, datasets, licence and language, and
    per-dimension ``model-index`` results. Everything sentence-transformers wrote is kept.

    Args:
        model_dir: a sentence-transformers model folder (normally saved by ``matryoshka-st train``).
        repo_id: the Hub id the card is for; it replaces sentence-transformers' placeholder in usage snippets.
        results: eval scores from :func:`load_eval_results`.
        base_model, datasets, license, language: card metadata (Hub ids / licence id / ISO codes) for the YAML front
            matter; kept from the existing card when not given. The card's text is sentence-transformers' own, filled
            at training time from ``model.model_card_data`` (``matryoshka-st train --base_model --license
            --language``); it is not rewritten here.
        model_name: the card's title and ``model-index`` name; default: the existing one, or the repository name
            when the existing one is sentence-transformers' generic "SentenceTransformer".
        tags: more tags.
        plot_name: the file name of the plot in the repository.

    Returns:
        A ``huggingface_hub.ModelCard``; ``card.save(path)`` writes it.

    Example:
        >>> card = build_card("output/matryoshka-minilm/final", repo_id="you/minilm-matryoshka",
        ...                   base_model="sentence-transformers/all-MiniLM-L6-v2", license="apache-2.0")  # doctest: +SKIP
    """
    model_dir = Path(model_dir)
    matryoshka_info(model_dir)  # fails early with a clear message on a folder that is not a model
    model_id = repo_id or PLACEHOLDER_MODEL_ID
    readme = model_dir / "README.md"
    if readme.is_file():
        card = ModelCard.load(readme, ignore_metadata_errors=True)
    else:
        card = ModelCard(_generated_card(model_dir, repo_id))
    text = card.text.replace(f'("{PLACEHOLDER_MODEL_ID}")', f'("{model_id}")')

    # title: keep a real one, replace sentence-transformers' generic default
    title_match = re.search(r"^# (.+)$", text, flags=re.MULTILINE)
    current_title = title_match.group(1).strip() if title_match else None
    generic = current_title in (None, "SentenceTransformer", "Sentence Transformer model") or (
        current_title.startswith("SentenceTransformer based on ")  # sentence-transformers' default with a base model
    )
    title = model_name or (repo_id.split("/")[-1] if generic and repo_id else current_title)
    if title and title_match and title != current_title:
        text = text[: title_match.start()] + f"# {title}" + text[title_match.end() :]

    section = render_section(model_dir, model_id=model_id, results=results, plot_name=plot_name)
    text = _insert_section(text, section)

    data = card.data  # edited in place, so the front matter keeps sentence-transformers' key order
    for key, value in (("base_model", base_model), ("license", license), ("language", language)):
        if value and data.get(key) and data.get(key) != value:
            logger.warning(
                "The card's text states %s %r (set at training time); its metadata now says %r. Train with "
                "--%s to have both agree.",
                key,
                data.get(key),
                value,
                key,
            )
    data.tags = list(dict.fromkeys([*(data.tags or []), *TAGS, *tags]))
    if base_model:
        data.base_model = base_model
    if datasets:
        data.datasets = list(dict.fromkeys([*_as_list(data.datasets), *_as_list(datasets)]))
    if license:
        data.license = license
    if language:
        data.language = language
    data.library_name = data.library_name or "sentence-transformers"
    if results is not None:
        ours = eval_results(results)
        # entries written by an earlier build_card (they carry truncate_dim) are replaced, not repeated
        kept = [r for r in data.eval_results or [] if "truncate_dim" not in (r.metric_args or {})]
        data.eval_results = [*kept, *ours]
        data.metrics = list(dict.fromkeys([*(data.metrics or []), *(r.metric_type for r in ours)]))
    if data.eval_results:
        data.model_name = title or data.model_name or "SentenceTransformer"
    for key, hint in (("base_model", "--base-model"), ("license", "--license")):
        if not data.get(key):
            logger.warning("The model card has no %s: pass %s to add it.", key, hint)
    card.text = text
    return card


def _insert_section(text: str, section: str) -> str:
    """Replace an earlier Matryoshka section, or put it after the introduction (before the first ``##`` heading)."""
    start, end = text.find(SECTION_START), text.find(SECTION_END)
    if start != -1 and end > start:
        return text[:start] + section.rstrip("\n") + text[end + len(SECTION_END) :]
    heading = re.search(r"^## ", text, flags=re.MULTILINE)
    if heading is None:
        return text.rstrip("\n") + "\n\n" + section
    return text[: heading.start()] + section + "\n" + text[heading.start() :]


def _generated_card(model_dir: Path, repo_id: str | None) -> str:
    """sentence-transformers' card for a folder saved without one."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.model_card import generate_model_card

    model = SentenceTransformer(str(model_dir), device="cpu")
    if repo_id and repo_id.count("/") == 1:
        model.model_card_data.set_model_id(repo_id)
    return generate_model_card(model)


__all__ = ["PLOT_NAME", "build_card", "render_section"]
