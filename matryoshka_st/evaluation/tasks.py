"""Local files as mteb tasks, and mteb tasks by name.

Each local file becomes an instance of mteb's own task class for its kind (``AbsTaskRetrieval``, ``AbsTaskSTS``,
``AbsTaskClassification``, ``AbsTaskPairClassification``, ``AbsTaskClustering``), so every metric is mteb's. What this
module adds is only the reading and checking of the files, and the task metadata: the task is named after the file or
folder, and its dataset revision is a hash of the file contents, so results of an edited file are not mistaken for
finished ones.

Formats (one JSON object per line; see docs/evaluation.md):

- retrieval: a BEIR folder with ``corpus.jsonl`` (``_id``, ``text``, optional ``title``), ``queries.jsonl``
  (``_id``, ``text``) and ``qrels/<split>.tsv`` (``query-id``, ``corpus-id``, ``score``, with a header line).
- STS: ``sentence1``, ``sentence2``, ``score`` (any numeric range).
- classification: ``text``, ``label``, optional ``split`` (``train`` plus one or more evaluation splits; without
  it, mteb's 5-fold cross-validation is used).
- pair classification: ``sentence1``, ``sentence2``, ``label`` (0 or 1).
- clustering: ``text``, ``cluster`` (or ``text``, ``label`` with the ``clustering:`` prefix).

Example:
    >>> from matryoshka_st._bundled import SAMPLE_DEV_RETRIEVAL
    >>> task = load_task(SAMPLE_DEV_RETRIEVAL)
    >>> task.metadata.name, task.metadata.main_score
    ('dev_wordnet', 'ndcg_at_10')
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict
from mteb.abstasks import (
    AbsTask,
    AbsTaskClassification,
    AbsTaskClustering,
    AbsTaskPairClassification,
    AbsTaskRetrieval,
    AbsTaskSTS,
)
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
from mteb.abstasks.task_metadata import TaskMetadata

from matryoshka_st.readers import FormatError, read_beir, read_jsonl

logger = logging.getLogger(__name__)

LOCAL_RETRIEVAL_K_VALUES = (1, 3, 5, 10, 20, 100)
TASK_KINDS = ("retrieval", "sts", "classification", "pair-classification", "clustering")

# Column sets that identify a jsonl file's kind when no ``KIND:`` prefix is given.
_KIND_BY_COLUMNS = (
    ({"sentence1", "sentence2", "score"}, "sts"),
    ({"sentence1", "sentence2", "label"}, "pair-classification"),
    ({"text", "cluster"}, "clustering"),
    ({"text", "label"}, "classification"),
)
_REQUIRED_COLUMNS = {
    "sts": ("sentence1", "sentence2", "score"),
    "pair-classification": ("sentence1", "sentence2", "label"),
    "classification": ("text", "label"),
    "clustering": ("text",),
}


def load_task(spec: str | Path | AbsTask) -> AbsTask:
    """One task from an mteb task object, a local file or folder, ``KIND:PATH``, or an mteb task name.

    Args:
        spec: an ``AbsTask`` (returned as is); a BEIR folder; a ``.jsonl`` file whose columns name its kind; the
            same prefixed with its kind (``retrieval:``, ``sts:``, ``classification:``, ``pair-classification:``,
            ``clustering:``); or the name of an mteb task such as ``"STS12"``.

    Raises:
        ValueError: when the spec is neither an existing path nor a known mteb task name, or a file is malformed.
        FileNotFoundError: when a ``KIND:PATH`` spec names a missing path.

    Example:
        >>> load_task("tests/fixtures/sts_sample.jsonl").metadata.type
        'STS'
    """
    if isinstance(spec, AbsTask):
        return spec
    text = str(spec)
    kind = None
    prefix, sep, rest = text.partition(":")
    if sep and prefix.lower() in TASK_KINDS:
        kind, text = prefix.lower(), rest
        if not Path(text).exists():
            raise FileNotFoundError(f"Task file {text!r} (given as {str(spec)!r}) does not exist.")
    path = Path(text)
    if path.exists():
        return _load_local_task(path, kind)
    return _load_mteb_task(text)


def load_tasks(specs: Iterable[str | Path | AbsTask]) -> list[AbsTask]:
    """:func:`load_task` for each spec; task names must be unique, as they name the result files."""
    tasks = [load_task(spec) for spec in specs]
    if not tasks:
        raise ValueError("No tasks given: pass a BEIR folder, a task .jsonl file or an mteb task name.")
    names = [task.metadata.name for task in tasks]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(
            f"Task names {duplicates} occur more than once in {names}: a local task is named after its file or "
            "folder, so rename one of them."
        )
    return tasks


def ensure_task_data(task: AbsTask) -> None:
    """Load the task's data now, turning an unreachable Hub into an error that says what is missing.

    Called before any model is loaded or any text encoded, so a missing dataset fails fast.
    """
    if task.data_loaded:
        return
    try:
        task.load_data()
    except (ConnectionError, OSError) as error:
        dataset = task.metadata.dataset
        raise ConnectionError(
            f"mteb task {task.metadata.name!r} needs the dataset {dataset.get('path')!r} (revision "
            f"{dataset.get('revision')!r}) from the Hugging Face Hub, which could not be reached ({error}). "
            "Run once with internet access (and HF_HUB_OFFLINE unset) so that it lands in the datasets cache, "
            "or evaluate on a local task file instead (see docs/evaluation.md)."
        ) from error


def _load_mteb_task(name: str) -> AbsTask:
    import mteb

    try:
        return mteb.get_task(name)
    except KeyError:
        raise ValueError(
            f"Task {name!r} is neither an existing file or folder nor an mteb task name. Pass a BEIR folder "
            f"(corpus.jsonl, queries.jsonl, qrels/test.tsv), a .jsonl file, KIND:PATH with KIND one of "
            f"{', '.join(TASK_KINDS)}, or an mteb task name such as 'STS12'."
        ) from None


def _load_local_task(path: Path, kind: str | None) -> AbsTask:
    if path.is_dir():
        if kind not in (None, "retrieval"):
            raise ValueError(f"{str(path)!r} is a folder, which can only hold a BEIR retrieval task, not {kind!r}.")
        return _retrieval_task(path)
    if kind == "retrieval":
        raise ValueError(f"A retrieval task is a BEIR folder, but {str(path)!r} is a file.")
    rows = read_jsonl(path, what="Task file")
    kind = kind or _detect_kind(path, rows)
    required = _REQUIRED_COLUMNS[kind]
    if kind == "clustering":
        required = ("text", "cluster" if "cluster" in rows[0] else "label")
    for number, row in enumerate(rows, start=1):
        missing = [column for column in required if row.get(column) is None]
        if missing:
            raise ValueError(
                f"{path}:{number}: a {kind} row needs the columns {list(required)}, but {missing} is missing in {row}."
            )
    return {
        "sts": _sts_task,
        "pair-classification": _pair_classification_task,
        "classification": _classification_task,
        "clustering": _clustering_task,
    }[kind](path, rows)


def _detect_kind(path: Path, rows: list[dict[str, Any]]) -> str:
    columns = set(rows[0])
    for needed, kind in _KIND_BY_COLUMNS:
        if needed <= columns:
            return kind
    raise ValueError(
        f"Cannot tell the task kind of {path} from its columns {sorted(columns)}. Expected sentence1/sentence2/score "
        "(STS), sentence1/sentence2/label (pair classification), text/label (classification) or text/cluster "
        f"(clustering), or prefix the path with its kind, one of {', '.join(TASK_KINDS)}, e.g. clustering:{path}."
    )


def _hash_files(paths: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _metadata(
    name: str, path: Path, revision: str, task_type: str, main_score: str, splits: list[str]
) -> TaskMetadata:
    return TaskMetadata(
        name=name,
        description=f"Local {task_type} task read from {path}.",
        dataset={"path": str(path.resolve()), "revision": revision},
        type=task_type,
        category="t2t",
        modalities=["text"],
        eval_splits=splits,
        eval_langs=["und-Zyyy"],  # unknown language, any script: the files do not say
        main_score=main_score,
    )


def _instantiate(base: type[AbsTask], metadata: TaskMetadata, **attributes: Any) -> AbsTask:
    # mteb keeps a task's metadata on its class (``unload_data`` restores it from there), so each local task gets a
    # subclass of its own.
    cls = type(f"Local{base.__name__.removeprefix('AbsTask')}Task", (_LocalTaskMixin, base), {"metadata": metadata})
    task = cls()
    for key, value in attributes.items():
        setattr(task, key, value)
    return task


class _LocalTaskMixin:
    """Builds ``self.dataset`` from rows read when the task was created, so loading is cheap and repeatable."""

    _build: Any = None

    def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
        if self.data_loaded:
            return
        self.dataset = self._build()
        self.data_loaded = True


# --- retrieval -----------------------------------------------------------------------------------------------------


def _retrieval_task(folder: Path) -> AbsTask:
    beir = read_beir(folder)
    splits = list(beir.qrels)
    corpus = [{"id": doc_id, **row} for doc_id, row in beir.corpus.items()]
    queries = [{"id": query_id, "text": text} for query_id, text in beir.queries.items()]
    qrels = beir.qrels

    def build() -> dict[str, dict[str, RetrievalSplitData]]:
        data = {}
        for split in splits:
            wanted = set(qrels[split])
            data[split] = RetrievalSplitData(
                corpus=Dataset.from_list(corpus),
                queries=Dataset.from_list([q for q in queries if q["id"] in wanted]),
                relevant_docs=qrels[split],
                top_ranked=None,
            )
        return {"default": data}

    revision = _hash_files(beir.files)
    metadata = _metadata(folder.name, folder, revision, "Retrieval", "ndcg_at_10", splits)
    # mteb ranks the top 1000 documents per query for its metrics at k=1000; for a local dev set, k up to 100 says as
    # much and makes scoring each extra dimension several times cheaper
    return _instantiate(
        AbsTaskRetrieval,
        metadata,
        _build=build,
        k_values=LOCAL_RETRIEVAL_K_VALUES,
        _top_k=max(LOCAL_RETRIEVAL_K_VALUES),
    )


# --- pair tasks ------------------------------------------------------------------------------------------------------


def _sts_task(path: Path, rows: list[dict[str, Any]]) -> AbsTask:
    scores = []
    for number, row in enumerate(rows, start=1):
        try:
            scores.append(float(row["score"]))
        except (TypeError, ValueError):
            raise FormatError(
                f"{path}: row {number} has score {row['score']!r}: STS scores must be numbers (any range), "
                "e.g. 0.8; for class labels use a 'label' column (pair classification)."
            ) from None

    def build() -> DatasetDict:
        return DatasetDict(
            {
                "test": Dataset.from_dict(
                    {
                        "sentence1": [str(r["sentence1"]) for r in rows],
                        "sentence2": [str(r["sentence2"]) for r in rows],
                        "score": scores,
                    }
                )
            }
        )

    metadata = _metadata(path.stem, path, _hash_files([path]), "STS", "cosine_spearman", ["test"])
    # min/max only rescale the gold scores, which leaves the Spearman correlation unchanged
    return _instantiate(AbsTaskSTS, metadata, _build=build, min_score=min(scores), max_score=max(scores))


def _pair_classification_task(path: Path, rows: list[dict[str, Any]]) -> AbsTask:
    labels = [int(row["label"]) for row in rows]
    if set(labels) - {0, 1}:
        raise ValueError(f"Pair classification labels in {path} must be 0 or 1, got {sorted(set(labels))}.")

    def build() -> DatasetDict:
        data = {
            "sentence1": [str(r["sentence1"]) for r in rows],
            "sentence2": [str(r["sentence2"]) for r in rows],
            "labels": labels,
        }
        return DatasetDict({"test": Dataset.from_dict(data)})

    metadata = _metadata(path.stem, path, _hash_files([path]), "PairClassification", "max_ap", ["test"])
    return _instantiate(AbsTaskPairClassification, metadata, _build=build)


# --- classification and clustering ------------------------------------------------------------------------------------


def _classification_task(path: Path, rows: list[dict[str, Any]]) -> AbsTask:
    label_ids = {label: i for i, label in enumerate(sorted({str(r["label"]) for r in rows}))}
    has_split = any("split" in r for r in rows)
    if has_split:
        by_split: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_split.setdefault(str(row.get("split") or "test"), []).append(row)
        if "train" not in by_split or len(by_split) < 2:
            raise ValueError(
                f"{path} has a 'split' column with values {sorted(by_split)}: it needs 'train' and at least one "
                "evaluation split such as 'test' (or drop the column to use 5-fold cross-validation)."
            )
        eval_splits = sorted(s for s in by_split if s != "train")
        attributes: dict[str, Any] = {}
    else:
        # no split given: mteb's cross-validation over all rows, stored under the split name "test"
        by_split = {"test": rows}
        eval_splits = ["test"]
        attributes = {"is_cross_validation": True, "train_split": "test"}

    def build() -> DatasetDict:
        return DatasetDict(
            {
                split: Dataset.from_dict(
                    {
                        "text": [str(r["text"]) for r in split_rows],
                        "label": [label_ids[str(r["label"])] for r in split_rows],
                    }
                )
                for split, split_rows in by_split.items()
            }
        )

    metadata = _metadata(path.stem, path, _hash_files([path]), "Classification", "accuracy", eval_splits)
    return _instantiate(AbsTaskClassification, metadata, _build=build, **attributes)


def _clustering_task(path: Path, rows: list[dict[str, Any]]) -> AbsTask:
    column = "cluster" if "cluster" in rows[0] else "label"
    label_ids = {label: i for i, label in enumerate(sorted({str(r[column]) for r in rows}))}
    if len(label_ids) < 2:
        raise ValueError(f"Clustering file {path} has a single cluster {list(label_ids)}: it needs at least two.")

    def build() -> DatasetDict:
        data = {"sentences": [str(r["text"]) for r in rows], "labels": [label_ids[str(r[column])] for r in rows]}
        return DatasetDict({"test": Dataset.from_dict(data)})

    metadata = _metadata(path.stem, path, _hash_files([path]), "Clustering", "v_measure", ["test"])
    # mteb embeds a 4% sample of large benchmark sets and bootstraps 16k-document clusterings from it; a local file
    # is used whole, and a bootstrap sample is never larger than the file
    return _instantiate(
        AbsTaskClustering,
        metadata,
        _build=build,
        max_fraction_of_documents_to_embed=None,
        max_document_to_embed=None,
        max_documents_per_cluster=min(AbsTaskClustering.max_documents_per_cluster, len(rows)),
    )
