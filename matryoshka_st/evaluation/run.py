"""Evaluate models x tasks x dims x precisions with mteb, encoding each text once per model.

mteb runs the tasks, computes every metric and writes the results (``mteb.evaluate`` with a ``ResultCache``); this
module only orders the runs, hands mteb one :class:`~matryoshka_st.evaluation.cache.TruncatedEncoder` per dimension and
precision (all sharing one :class:`~matryoshka_st.evaluation.cache.EmbeddingCache`), and decides which results are
already finished. Results land in mteb's own layout, one experiment folder per dimension and precision::

    OUTPUT/results/<org>__<model>/<revision>/experiments/embed_dim_<d>[__output_dtypes_<p>]/<Task>.json

Example:
    >>> from matryoshka_st._bundled import SAMPLE_DEV_RETRIEVAL, bundled_model_path
    >>> runs = evaluate(bundled_model_path(), [SAMPLE_DEV_RETRIEVAL], dims=[384, 128, 32], output_folder="eval_out")
    >>> {run.dim: round(run.score, 3) for run in runs}  # doctest: +SKIP
    {384: 0.6, 128: 0.55, 32: 0.33}
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mteb
import numpy as np
from mteb.abstasks import AbsTask
from mteb.cache import ResultCache
from mteb.results import TaskResult
from sentence_transformers import SentenceTransformer
from tqdm.auto import tqdm

from matryoshka_st.dims import default_dims, validate_dims
from matryoshka_st.evaluation.cache import EmbeddingCache, TruncatedEncoder
from matryoshka_st.evaluation.quality import PRECISIONS, check_precisions
from matryoshka_st.evaluation.report import Report, render
from matryoshka_st.evaluation.tasks import ensure_task_data, load_tasks
from matryoshka_st.metadata import read_matryoshka_config
from matryoshka_st.quantization import BinaryCalibration, Int8Calibration
from matryoshka_st.readers import check_model_folder
from matryoshka_st.usage import load_binary_calibration

logger = logging.getLogger(__name__)

ModelSpec = str | Path | SentenceTransformer


@dataclass
class RunResult:
    """One model at one dimension and precision on one task, as mteb stored it.

    Attributes:
        model: the model name in mteb's results, e.g. ``local/base``.
        revision: the model revision (a hash of its parameters unless given).
        dim: the embedding dimension evaluated.
        precision: ``float32``, ``int8`` or ``binary``.
        full_dim: the model's untruncated dimension.
        result: mteb's ``TaskResult``.
        path: the JSON file mteb wrote.
        skipped: True when the result was finished by an earlier run and loaded instead of recomputed.
    """

    model: str
    revision: str
    dim: int
    precision: str
    full_dim: int
    result: TaskResult
    path: Path
    skipped: bool = False

    @property
    def task(self) -> str:
        return self.result.task_name

    @property
    def score(self) -> float:
        """The task's main score (mteb's ``main_score``), averaged over splits and subsets."""
        return float(self.result.get_score())


def evaluate(
    models: ModelSpec | Sequence[ModelSpec] | Mapping[str, ModelSpec],
    tasks: str | Path | AbsTask | Sequence[str | Path | AbsTask],
    dims: Sequence[int] | None = None,
    precisions: Sequence[str] = ("float32",),
    output_folder: str | Path = "matryoshka_eval",
    overwrite: bool = False,
    *,
    batch_size: int = 32,
    device: str | None = None,
    show_progress_bar: bool = True,
) -> list[RunResult]:
    """Evaluate every model on every task at every dimension and precision, encoding each text once per model.

    Args:
        models: a model path or Hub id, a ``SentenceTransformer``, a list of them, or a mapping from a label to one
            (e.g. ``{"base": ..., "fine-tuned": ...}``). A label without ``/`` is stored as ``local/<label>``; a path
            without a label is named after its last two folders.
        tasks: task specs as accepted by :func:`~matryoshka_st.evaluation.tasks.load_task`: BEIR folders, ``.jsonl``
            files, ``KIND:PATH`` or mteb task names.
        dims: dimensions to evaluate; default: the model's full dimension and the powers of two below it down to
            32. The full dimension is always added (at float32), as the reference for "% of full".
        precisions: any of ``float32``, ``int8``, ``binary``, ``binary+rescore`` (the Hamming shortlist rescored
            with the float query against the sign codes), ``binary+int8-rescore`` (against the int8 codes). int8 uses
            the scales a model
            folder saved at training time where it has them (``matryoshka_config.json``), else ranges fitted on
            each task's texts; binary codes are taken after the model's saved prefix rotations where it has them.
        output_folder: mteb's result cache folder; results go to ``<output_folder>/results/...``.
        overwrite: recompute results that are already finished.
        batch_size: encoding batch size.
        device: device to load models given by path on (default: sentence-transformers' choice).
        show_progress_bar: show progress over the runs and while encoding.

    Returns:
        One :class:`RunResult` per model, task, dimension and precision.

    Raises:
        ValueError: on bad dims, precisions, task files or model names, before any text is encoded.

    Example:
        >>> runs = evaluate({"base": "path/to/model"}, ["data/dev_wordnet"], dims=[384, 64], precisions=["float32", "int8"])
    """
    # float32 first: its runs encode every text, which int8 calibration then sees whole
    precisions = sorted(check_precisions(list(precisions)), key=PRECISIONS.index)
    if dims is not None:
        dims = _check_dims(dims)
    task_list = load_tasks([tasks] if isinstance(tasks, str | Path | AbsTask) else tasks)
    result_cache = _AtomicResultCache(cache_path=Path(output_folder))

    # Load and check everything (models, dims, task data) before the first text is encoded.
    named = _name_models(models)
    for spec in named.values():
        if not isinstance(spec, SentenceTransformer):
            check_model_folder(str(spec))  # every folder before any model loads
    plans = []
    for name, spec in named.items():
        model = spec if isinstance(spec, SentenceTransformer) else _load_model(str(spec), device)
        int8, binary = _saved_calibrations(spec)
        cache = EmbeddingCache(model, name=name, int8_calibration=int8, binary_calibration=binary)
        model_dims = _dims_for(dims, cache.full_dim)
        combos = [(cache.full_dim, "float32")] + [
            (d, p) for p in precisions for d in model_dims if (d, p) != (cache.full_dim, "float32")
        ]
        plans.append((cache, combos))
    todo = []
    for cache, combos in plans:
        for task in task_list:
            for dim, precision in combos:
                view = cache.view(dim, precision)
                path = result_cache.get_task_result_path(task.metadata.name, view.mteb_model_meta)
                finished = None if overwrite else _finished_result(path, task)
                todo.append((cache, task, view, path, finished))
    loaded_here = [task for task in task_list if not task.data_loaded]
    for task in task_list:
        if any(finished is None and t is task for _, t, _, _, finished in todo):
            ensure_task_data(task)

    runs = []
    encode_kwargs = {"batch_size": batch_size, "show_progress_bar": show_progress_bar}
    progress = tqdm(todo, desc="Evaluating", disable=not show_progress_bar)
    for cache, task, view, path, finished in progress:
        progress.set_postfix_str(f"{task.metadata.name} dim={view.dim} {view.precision}")
        if finished is not None:
            logger.info("Skipping %s at dim %d %s: finished in %s", task.metadata.name, view.dim, view.precision, path)
            result, skipped = finished, True
        else:
            if view.precision == "int8" and not cache.has_task(task.metadata.name):
                # int8 ranges are calibrated on all of the task's texts: have them all encoded first
                _run_mteb(cache.view(cache.full_dim), task, None, encode_kwargs)
            result, skipped = _run_mteb(view, task, result_cache, encode_kwargs), False
        runs.append(
            RunResult(
                model=cache.meta.name,
                revision=cache.meta.revision,
                dim=view.dim,
                precision=view.precision,
                full_dim=cache.full_dim,
                result=result,
                path=path,
                skipped=skipped,
            )
        )
    for task in loaded_here:
        if task.data_loaded:
            task.unload_data()
    for cache, _ in plans:
        logger.info("%s: encoded %d texts in %d calls", cache.meta.name, cache.num_encoded, cache.num_calls)
    return runs


def compare(
    models: Mapping[str, ModelSpec],
    task: str | Path | AbsTask,
    dims: Sequence[int] | None = None,
    output_dir: str | Path = "matryoshka_eval",
    *,
    precisions: Sequence[str] = ("float32",),
    keep: float = 0.98,
    **kwargs: Any,
) -> Report:
    """Evaluate labelled models (e.g. base vs fine-tuned) on one task and render the report.

    Results go to ``<output_dir>/results`` and the report to ``<output_dir>/report``.

    Args:
        models: label to model, e.g. ``{"base": base_path, "fine-tuned": output_path}``.
        task: a task spec, typically the shipped dev set ``matryoshka_st._bundled.SAMPLE_DEV_RETRIEVAL``.
        dims: dimensions to evaluate (default: the full dimension and powers of two down to 32).
        output_dir: folder for results and report.
        precisions: any of ``float32``, ``int8``, ``binary``.
        keep: share of the full-dimension score the recommended dimension must keep.
        **kwargs: passed on to :func:`evaluate` (``batch_size``, ``device``, ``overwrite``, ``show_progress_bar``).

    Returns:
        The :class:`~matryoshka_st.evaluation.report.Report`: file paths, Markdown table, recommended dims.

    Example:
        >>> from matryoshka_st._bundled import SAMPLE_DEV_RETRIEVAL, bundled_model_path
        >>> report = compare({"base": bundled_model_path(), "fine-tuned": "out/final"}, SAMPLE_DEV_RETRIEVAL,
        ...                  dims=[384, 256, 128, 64, 32], output_dir="out/eval")
        >>> print(report.table)  # doctest: +SKIP
    """
    output_dir = Path(output_dir)
    evaluate(models, [task], dims=dims, precisions=precisions, output_folder=output_dir, **kwargs)
    return render([output_dir / "results"], output_dir / "report", keep=keep)


def _run_mteb(
    view: TruncatedEncoder, task: AbsTask, result_cache: ResultCache | None, encode_kwargs: dict[str, Any]
) -> TaskResult:
    # Sampling tasks (clustering, classification) draw from the task's RNG: reset it so that every dim sees the
    # same samples and differences between dims come from the embeddings alone.
    task.rng_state, task.np_rng = random.Random(task.seed), np.random.default_rng(task.seed)
    model_result = mteb.evaluate(
        view,
        task,
        cache=result_cache,
        overwrite_strategy="always",
        encode_kwargs=dict(encode_kwargs),
        co2_tracker=False,
        show_progress_bar=False,
    )
    return model_result.task_results[0]


def _load_model(name_or_path: str, device: str | None) -> SentenceTransformer:
    try:
        return SentenceTransformer(name_or_path, device=device)
    except OSError as error:  # not a folder, and not on the Hub (or no network)
        message = " ".join(str(error).split())
        raise ValueError(f"Cannot load model {name_or_path!r} as a local folder or a Hub id: {message}") from error


class _AtomicResultCache(ResultCache):
    """mteb's ``ResultCache`` writing each result JSON under a temporary name, then renaming it: a killed run
    leaves the previous result or none, never half a file."""

    _writing: Path | None = None

    def get_task_result_path(self, *args: Any, **kwargs: Any) -> Path:
        return self._writing or super().get_task_result_path(*args, **kwargs)

    def save_to_cache(self, task_result: TaskResult, model_name: Any, model_revision: Any = None, **kwargs: Any):
        path = super().get_task_result_path(
            task_name=task_result.task_name, model_name=model_name, model_revision=model_revision
        )
        self._writing = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            super().save_to_cache(task_result, model_name, model_revision, **kwargs)
            os.replace(self._writing, path)
        finally:
            if self._writing.exists():
                self._writing.unlink()
            self._writing = None


def _finished_result(path: Path, task: AbsTask) -> TaskResult | None:
    if not path.exists():
        return None
    try:
        result = TaskResult.from_disk(path)
    except Exception as error:  # JSON or pydantic errors: a file an older, killed run left half-written
        logger.warning("%s is not a complete result (%s): treating it as unfinished and recomputing it.", path, error)
        return None
    if result.dataset_revision != task.metadata.revision:
        logger.info("%s was computed on another revision of %s: recomputing.", path, task.metadata.name)
        return None
    if result.get_missing_evaluations(task):
        return None
    return result


def _saved_calibrations(spec: ModelSpec) -> tuple[Int8Calibration | None, BinaryCalibration | None]:
    """The int8 scales and binary rotations a model folder saved at training time (``matryoshka_config.json``)."""
    if isinstance(spec, SentenceTransformer) or not Path(str(spec)).is_dir():
        return None, None
    config = read_matryoshka_config(str(spec))
    int8 = Int8Calibration.from_dict(config.int8_calibration) if config and config.int8_calibration else None
    return int8, load_binary_calibration(str(spec))


def _check_dims(dims: Sequence[int]) -> list[int]:
    if not isinstance(dims, str | bytes):
        dims = list(dict.fromkeys(dims))  # a dim given twice is evaluated once
    return validate_dims(dims, name="dims")[0]


def _dims_for(dims: list[int] | None, full_dim: int) -> list[int]:
    if dims is None:
        return default_dims(full_dim)
    if full_dim not in dims:
        logger.info("Adding the full dimension %d to dims %s as the reference score.", full_dim, dims)
    return validate_dims(sorted({full_dim, *dims}, reverse=True), full_dim, name="dims")[0]


def _name_models(models: ModelSpec | Sequence[ModelSpec] | Mapping[str, ModelSpec]) -> dict[str, ModelSpec]:
    """mteb model names (``org/name``) for each model; mteb requires the slash."""
    if isinstance(models, Mapping):
        labelled = list(models.items())
    else:
        specs = [models] if isinstance(models, str | Path | SentenceTransformer) else list(models)
        labelled = [(_default_name(spec, i), spec) for i, spec in enumerate(specs)]
    if not labelled:
        raise ValueError("No models given: pass a model path, a Hub id or a SentenceTransformer.")
    named: dict[str, ModelSpec] = {}
    for label, spec in labelled:
        name = label if "/" in label else f"local/{label}"
        if name in named:
            raise ValueError(
                f"Two models are both named {name!r}: give them labels, e.g. {{'base': ..., 'fine-tuned': ...}} "
                "(on the command line: base=PATH fine-tuned=PATH)."
            )
        named[name] = spec
    return named


def _default_name(spec: ModelSpec, index: int) -> str:
    if isinstance(spec, SentenceTransformer):
        return f"model-{index}"
    path = Path(spec)
    if path.exists():
        parts = path.resolve().parts
        return "/".join(parts[-2:]) if len(parts) >= 2 else parts[-1]
    return str(spec)  # a Hub id such as sentence-transformers/all-MiniLM-L6-v2
