"""Training data for ``matryoshka-st train``: files, folders or Hub datasets -> ``datasets.Dataset``, and the loss
that fits its columns.

Loading is ``datasets.load_dataset``'s and the losses are sentence-transformers'. Written here: the checks that
run before any model is loaded (file exists and parses, dataset not empty, columns fit the loss, loss name and
keyword arguments valid), the column-to-loss table, and the BEIR/STS readers for evaluation sets.

Column roles (after ``column_mapping``):

=================================================  ==========================================================
columns                                            loss
=================================================  ==========================================================
anchor, positive [, negative | negative_1 ...]     MultipleNegativesRankingLoss
sentence1, sentence2, score (float)                CoSENTLoss
sentence1, sentence2, label (int or str)           SoftmaxLoss, with a classifier head per Matryoshka dim
text, label (int or str)                           BatchAllTripletLoss (batches grouped by label)
=================================================  ==========================================================
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from datasets import ClassLabel, Dataset, DatasetDict, Value

from matryoshka_st.readers import check_jsonl, check_utf8

logger = logging.getLogger(__name__)

LABEL_COLUMNS = ("label", "score")
# builder name and extra load_dataset kwargs per file suffix
FILE_FORMATS: dict[str, tuple[str, dict[str, Any]]] = {
    ".jsonl": ("json", {}),
    ".json": ("json", {}),
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"delimiter": "\t"}),
    ".parquet": ("parquet", {}),
}
# Losses that wrap another loss: MatryoshkaLoss is always applied by us, so these cannot be the inner loss.
MODIFIER_LOSSES = ("MatryoshkaLoss", "Matryoshka2dLoss", "AdaptiveLayerLoss")


class DataError(ValueError):
    """Data or loss settings that cannot be trained on; the message names the problem and the fix."""


@dataclass(frozen=True)
class LossRequirement:
    """What a loss reads: the number of text columns (``max_texts=None``: no upper bound) and its label."""

    min_texts: int
    max_texts: int | None
    label: str | None  # None: no label column; "float", "int" or "any"
    example: str


LOSS_REQUIREMENTS: dict[str, LossRequirement] = {
    **{
        name: LossRequirement(2, None, None, "anchor, positive [, negative ...]")
        for name in (
            "MultipleNegativesRankingLoss",
            "CachedMultipleNegativesRankingLoss",
            "MultipleNegativesSymmetricRankingLoss",
            "CachedMultipleNegativesSymmetricRankingLoss",
            "GISTEmbedLoss",
            "CachedGISTEmbedLoss",
            "MegaBatchMarginLoss",
        )
    },
    **{
        name: LossRequirement(2, 2, "float", "sentence1, sentence2, score")
        for name in ("CoSENTLoss", "AnglELoss", "CosineSimilarityLoss")
    },
    "SoftmaxLoss": LossRequirement(2, 2, "int", "sentence1, sentence2, label (integer class)"),
    "ContrastiveLoss": LossRequirement(2, 2, "any", "sentence1, sentence2, label (1 similar, 0 not)"),
    "OnlineContrastiveLoss": LossRequirement(2, 2, "any", "sentence1, sentence2, label (1 similar, 0 not)"),
    "TripletLoss": LossRequirement(3, 3, None, "anchor, positive, negative"),
    **{
        name: LossRequirement(1, 1, "int", "text, label (integer class)")
        for name in (
            "BatchAllTripletLoss",
            "BatchHardTripletLoss",
            "BatchSemiHardTripletLoss",
            "BatchHardSoftMarginTripletLoss",
        )
    },
}


# losses that score each row against the other rows of its batch, and losses that need same-label rows in a batch
IN_BATCH_LOSSES = {n for n, r in LOSS_REQUIREMENTS.items() if r.min_texts == 2 and r.max_texts is None}
GROUPED_LOSSES = {n for n, r in LOSS_REQUIREMENTS.items() if r.min_texts == 1}


@dataclass
class LossSpec:
    """The chosen loss and the columns it reads, in order (texts first, then the label column if any)."""

    name: str
    text_columns: list[str]
    label_column: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    num_labels: int | None = None

    @property
    def columns(self) -> list[str]:
        return self.text_columns + ([self.label_column] if self.label_column else [])


# -- parsing small option values ------------------------------------------------------------------------------------
def parse_mapping(value: dict | str | None, what: str) -> dict[str, Any]:
    """``{"a": "b"}``, its JSON text, or ``a=b,c=d`` -> dict."""
    if value is None or value == "":
        return {}
    if isinstance(value, dict):
        return dict(value)
    text = str(value).strip()
    if text.startswith("{"):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as error:
            raise DataError(f"{what} is not valid JSON: {text!r} ({error}).") from error
        if not isinstance(parsed, dict):
            raise DataError(f"{what} must be a JSON object, got {text!r}.")
        return parsed
    result = {}
    for pair in text.split(","):
        key, sep, val = pair.partition("=")
        if not sep or not key.strip():
            raise DataError(f"{what} must be JSON or key=value pairs separated by commas, got {text!r}.")
        result[key.strip()] = val.strip()
    return result


# -- loading ------------------------------------------------------------------------------------------------------
def _format_of(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def _local_files(path: Path) -> tuple[list[str], str]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and _format_of(p) in FILE_FORMATS)
        if not files:
            raise DataError(
                f"The folder {str(path)!r} holds no data files: expected {', '.join(FILE_FORMATS)} (optionally .gz)."
            )
        formats = {_format_of(p) for p in files}
        if len({(FILE_FORMATS[f][0], FILE_FORMATS[f][1].get("delimiter")) for f in formats}) > 1:
            raise DataError(f"The folder {str(path)!r} mixes file formats {sorted(formats)}: keep one format.")
    else:
        if _format_of(path) not in FILE_FORMATS:
            raise DataError(
                f"Unsupported data file {str(path)!r}: expected {', '.join(FILE_FORMATS)} (optionally .gz), "
                "a folder of such files, or a Hub dataset name."
            )
        files = [path]
    for file in files:
        if not os.access(file, os.R_OK):
            raise DataError(f"Cannot read data file {str(file)!r}: permission denied.")
        if file.stat().st_size == 0:
            raise DataError(f"The data file {str(file)!r} is empty: it needs at least one row.")
        if _format_of(file) == ".jsonl":
            check_jsonl(file, DataError)
        elif _format_of(file) != ".parquet":
            check_utf8(file, DataError)
    return [str(f) for f in files], _format_of(files[0])


def _looks_like_path(spec: str) -> bool:
    # Hub ids look like "org/name": only explicit paths and data-file suffixes are treated as local.
    return spec.startswith((".", "/", "~")) or _format_of(Path(spec)) in FILE_FORMATS


def load_data(spec: str, split: str = "train", config_name: str | None = None) -> Dataset:
    """Load a local file, a folder of files, or a Hub dataset split as one ``datasets.Dataset``.

    Raises:
        DataError: missing, unreadable, empty or unparsable files; a Hub dataset that cannot be loaded.

    Example:
        >>> pairs = load_data("pairs.jsonl")  # doctest: +SKIP
    """
    path = Path(spec).expanduser()
    if path.exists():
        files, fmt = _local_files(path)
        builder, kwargs = FILE_FORMATS[fmt]
        from datasets import load_dataset

        try:
            dataset = load_dataset(builder, data_files=files, split="train", **kwargs)
        except Exception as error:  # datasets raises many types for malformed files
            if "corresponds to no data" in str(error):
                raise DataError(f"The data {spec!r} is empty: it needs at least one row.") from error
            raise DataError(f"Cannot parse {spec!r} as {fmt.lstrip('.')}: {error}") from error
    elif _looks_like_path(spec):
        raise DataError(f"Data file or folder {spec!r} does not exist (resolved to {str(path.resolve())!r}).")
    else:
        from datasets import load_dataset

        try:
            dataset = load_dataset(spec, config_name, split=split)
        except Exception as error:
            from huggingface_hub import constants

            offline = constants.HF_HUB_OFFLINE
            hint = " HF_HUB_OFFLINE is set: only datasets already in the local cache can be loaded." if offline else ""
            raise DataError(
                f"Cannot load {spec!r} (split {split!r}) as a local path or a Hugging Face Hub dataset: "
                f"{type(error).__name__}: {error}.{hint}"
            ) from error
    if len(dataset) == 0:
        raise DataError(f"The dataset {spec!r} (split {split!r}) is empty: it needs at least one row.")
    return dataset


def rename_columns(dataset: Dataset, mapping: dict[str, str], name: str) -> Dataset:
    missing = sorted(set(mapping) - set(dataset.column_names))
    if missing:
        raise DataError(f"column_mapping renames {missing}, but the {name} data has columns {dataset.column_names}.")
    return dataset.rename_columns(mapping) if mapping else dataset


# -- choosing the loss --------------------------------------------------------------------------------------------
def _label_kind(dataset: Dataset, column: str) -> str:
    feature = dataset.features[column]
    if isinstance(feature, ClassLabel):
        return "int"
    if isinstance(feature, Value):
        if feature.dtype.startswith(("int", "uint", "bool")):
            return "int"
        if feature.dtype.startswith("float"):
            return "float"
        if feature.dtype in ("string", "large_string"):
            return "str"
    return "other"


def _negatives(columns: list[str]) -> list[str]:
    negatives = [c for c in columns if c == "negative" or (c.startswith("negative_") and c[9:].isdigit())]
    return sorted(negatives, key=lambda c: int(c[9:]) if c != "negative" else 0)


def _roles(dataset: Dataset) -> tuple[list[str], str | None] | None:
    """Text and label columns by their standard names, or None when no standard set is present."""
    columns = dataset.column_names
    label = next((c for c in LABEL_COLUMNS if c in columns), None)
    if "anchor" in columns and "positive" in columns:
        return ["anchor", "positive", *_negatives(columns)], None
    if "sentence1" in columns and "sentence2" in columns:
        return ["sentence1", "sentence2"], label
    if "text" in columns:
        return ["text"], label
    return None


def available_losses() -> list[str]:
    from sentence_transformers.sentence_transformer import losses

    return sorted(
        name
        for name in dir(losses)
        if name.endswith("Loss") and inspect.isclass(getattr(losses, name)) and name not in MODIFIER_LOSSES
    )


def resolve_loss_class(name: str) -> type:
    """A sentence-transformers loss class by (case-insensitive) name."""
    from sentence_transformers.sentence_transformer import losses

    if name in MODIFIER_LOSSES or name.lower() in (m.lower() for m in MODIFIER_LOSSES):
        raise DataError(
            f"--loss {name} is a loss modifier; MatryoshkaLoss is always applied. Give the inner loss, e.g. "
            "MultipleNegativesRankingLoss, and set the dims with --matryoshka_dims."
        )
    names = {n.lower(): n for n in available_losses()}
    if name.lower() not in names:
        raise DataError(f"Unknown loss {name!r}. Available sentence-transformers losses: {', '.join(names.values())}.")
    return getattr(losses, names[name.lower()])


def check_loss_kwargs(loss_class: type, kwargs: dict[str, Any]) -> None:
    parameters = inspect.signature(loss_class.__init__).parameters
    accepted = [p for p in parameters if p not in ("self", "model")]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise DataError(
            f"{loss_class.__name__} does not accept the keyword arguments {unknown}; it accepts {accepted}."
        )


def infer_loss_spec(dataset: Dataset, loss: str | None = None, loss_kwargs: dict[str, Any] | None = None) -> LossSpec:
    """Choose the loss (or check the one given) against the dataset's columns.

    Raises:
        DataError: unknown loss, bad keyword arguments, or columns that do not fit the loss.
    """
    kwargs = dict(loss_kwargs or {})
    columns = dataset.column_names
    roles = _roles(dataset)
    if loss is None:
        if roles is None:
            raise DataError(
                f"Cannot choose a loss from the columns {columns}. Expected (anchor, positive[, negative]), "
                "(sentence1, sentence2, score|label) or (text, label): rename columns with --column_mapping, e.g. "
                '\'{"question": "anchor", "answer": "positive"}\', or pass --loss NAME.'
            )
        texts, label = roles
        kind = _label_kind(dataset, label) if label else None
        if texts[0] == "anchor":
            name = "MultipleNegativesRankingLoss"
        elif texts[0] == "sentence1" and kind == "float":
            name = "CoSENTLoss"
        elif texts[0] == "sentence1" and label == "score" and kind == "str":
            raise DataError(
                f"Column 'score' holds text (e.g. {dataset[0]['score']!r}), but 'score' means a similarity number "
                "(CoSENTLoss). Write numbers, or rename it to 'label' with --column_mapping '{\"score\": \"label\"}' "
                "to train SoftmaxLoss on them as classes."
            )
        elif texts[0] == "sentence1" and kind in ("int", "str"):
            name = "SoftmaxLoss"
        elif texts == ["text"] and kind in ("int", "str"):
            name = "BatchAllTripletLoss"
        else:
            raise DataError(
                f"Cannot choose a loss from the columns {columns}: {texts} needs a "
                + (
                    "label column ('score' float or 'label' class)"
                    if label is None
                    else f"usable label, {label!r} is {kind}"
                )
                + ". Pass --loss NAME or fix the columns."
            )
    else:
        name = resolve_loss_class(loss).__name__
        if roles is not None:
            texts, label = roles
        else:
            label = next((c for c in LABEL_COLUMNS if c in columns), None)
            texts = [c for c in columns if c not in LABEL_COLUMNS]
    loss_class = resolve_loss_class(name)
    check_loss_kwargs(loss_class, kwargs)

    requirement = LOSS_REQUIREMENTS.get(name)
    if requirement is not None:
        if requirement.label is None:
            label = None  # e.g. an unused 'label' next to anchor/positive
        problems = []
        if len(texts) < requirement.min_texts or (requirement.max_texts and len(texts) > requirement.max_texts):
            problems.append(f"text columns {texts}")
        if requirement.label is not None and label is None:
            problems.append("no label/score column")
        kind = _label_kind(dataset, label) if label else None
        if requirement.label == "float" and kind not in ("float", "int"):
            problems.append(f"label column {label!r} of type {kind}, not a number")
        if requirement.label == "int" and kind not in ("int", "str"):
            problems.append(f"label column {label!r} of type {kind}, not a class")
        if problems:
            raise DataError(
                f"The columns {columns} do not fit {name}: it needs ({requirement.example}), got "
                + "; ".join(problems)
                + ". Rename columns with --column_mapping or choose another --loss."
            )
    for column in texts:
        if _label_kind(dataset, column) != "str":
            raise DataError(f"Column {column!r} should hold text for {name}, but holds {dataset.features[column]}.")
    return LossSpec(name, list(texts), label, kwargs)


def prepare_dataset(dataset: Dataset, spec: LossSpec, name: str, keep: tuple[str, ...] = ()) -> Dataset:
    """Keep the loss's columns in order (then ``keep``); encode string class labels as integers."""
    dropped = [c for c in dataset.column_names if c not in spec.columns and c not in keep]
    if dropped:
        logger.info("Ignoring %s columns %s (not read by %s).", name, dropped, spec.name)
    dataset = dataset.select_columns(spec.columns + list(keep))
    if spec.label_column and _label_kind(dataset, spec.label_column) == "str":
        dataset = dataset.class_encode_column(spec.label_column)
    requirement = LOSS_REQUIREMENTS.get(spec.name)
    if spec.label_column and requirement is not None and requirement.label == "float":
        dataset = dataset.cast_column(spec.label_column, Value("float32"))
    return dataset


def check_group_column(dataset: Dataset, column: str, name: str) -> None:
    """The ``group_by`` column exists and holds text or integers.

    Raises:
        DataError: a missing column or one of another type.
    """
    if column not in dataset.column_names:
        raise DataError(
            f"group_by {column!r} is not a column of the {name} data: it has {dataset.column_names}. "
            "Give the column whose values name each row's source, e.g. 'source'."
        )
    if _label_kind(dataset, column) not in ("str", "int"):
        raise DataError(
            f"group_by {column!r} should hold source names (text or integers), but holds {dataset.features[column]}."
        )


def group_rows(dataset: Dataset, groups: Sequence[Any], column: str, spec: LossSpec, batch_size: int) -> DatasetDict:
    """One dataset per value of ``groups`` (row ``i`` of ``dataset`` is in group ``groups[i]``, read from the
    ``group_by`` column ``column``), in order of first appearance, for sentence-transformers' multi-dataset training:
    each batch then holds rows of one group only.

    Raises:
        DataError: an empty group value, or a group of one row for a loss that scores rows against their batch.
    """
    indices: dict[str, list[int]] = {}
    for row, value in enumerate(groups):
        if value is None or str(value) == "":
            raise DataError(f"Row {row} has no value in the group_by column {column!r}: every row needs a group.")
        indices.setdefault(str(value), []).append(row)
    if spec.name in IN_BATCH_LOSSES:
        single = sorted(key for key, rows in indices.items() if len(rows) < 2)
        if single:
            raise DataError(
                f"group_by {column!r}: the groups {single[:5]} have one row each. {spec.name} scores each row "
                "against the other rows of its batch, and a batch holds one group, so these rows learn nothing. "
                "Merge small groups or drop group_by."
            )
    small = {key: len(rows) for key, rows in indices.items() if len(rows) < batch_size}
    if small:
        logger.warning("group_by %r: groups with fewer rows than a batch of %d: %s.", column, batch_size, small)
    return DatasetDict({key: dataset.select(group) for key, group in indices.items()})


def count_labels(datasets: list[Dataset], column: str) -> int:
    values = set()
    for dataset in datasets:
        values.update(dataset.unique(column))
    bad = sorted(v for v in values if not isinstance(v, int) or v < 0)
    if bad:
        raise DataError(f"Class labels must be integers >= 0 (or strings), got {bad[:5]} in column {column!r}.")
    return max(values) + 1


def split_eval(dataset: Dataset, eval_size: float, seed: int) -> tuple[Dataset, Dataset | None]:
    if not eval_size:
        return dataset, None
    if eval_size < 0 or (eval_size >= 1 and eval_size != int(eval_size)):
        raise DataError(f"eval_size must be a fraction in (0, 1) or a whole number of rows, got {eval_size}.")
    size = eval_size if eval_size < 1 else int(eval_size)
    if (size if isinstance(size, int) else round(size * len(dataset))) >= len(dataset):
        raise DataError(f"eval_size {eval_size} leaves no training rows out of {len(dataset)}.")
    parts = dataset.train_test_split(test_size=size, seed=seed)
    return parts["train"], parts["test"]
