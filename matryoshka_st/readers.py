"""Reading the file formats the project accepts: JSON lines, BEIR retrieval folders, text lists, and the files a
saved model folder must hold (:func:`check_model_folder`).

Every error is a :class:`FormatError` (a ``ValueError``) whose message starts with ``FILE:LINE:`` where a line is
to blame, and says what was expected. Training, evaluation, search, adapt and the benchmarks all read through here.

Example:
    >>> beir = read_beir("matryoshka_st/data/dev_wordnet")  # doctest: +SKIP
    >>> len(beir.queries), len(beir.corpus), beir.split  # doctest: +SKIP
    (300, 3000, 'test')
"""

from __future__ import annotations

import csv
import gzip
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any


class FormatError(ValueError):
    """A file that cannot be read as the format it should have; the message names the file and line."""


class TextLines:
    """The lines of a UTF-8 text file (gunzipped if ``.gz``), as ``open(path)`` would iterate them; a line that is
    not UTF-8 raises :class:`FormatError` naming the file and line (Python's own error names neither)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._handle: IO[bytes] = gzip.open(self.path, "rb") if self.path.suffix == ".gz" else self.path.open("rb")

    def __iter__(self) -> Iterator[str]:
        for number, line in enumerate(self._handle, start=1):
            try:
                yield line.decode("utf-8-sig" if number == 1 else "utf-8").replace("\r\n", "\n")
            except UnicodeDecodeError as error:
                raise FormatError(
                    f"{self.path}:{number}: not UTF-8 text (byte {line[error.start]:#04x} at column "
                    f"{error.start + 1}): save the file as UTF-8."
                ) from None

    def read(self) -> str:
        return "".join(self)

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> TextLines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_text(path: str | os.PathLike) -> TextLines:
    """Open a UTF-8 text file for reading line by line, gunzipping a ``.gz`` one."""
    return TextLines(path)


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, row)`` for each non-empty line of a ``.jsonl[.gz]`` file; every line must be a JSON object."""
    with open_text(path) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise FormatError(
                    f"{path}:{number}: line {number} is not valid JSON ({error.msg}): one JSON object per line."
                ) from None
            if not isinstance(row, dict):
                raise FormatError(f"{path}:{number}: expected a JSON object per line, got {type(row).__name__}.")
            yield number, row


def read_jsonl(path: str | os.PathLike, *, what: str = "File") -> list[dict[str, Any]]:
    """The rows of a ``.jsonl[.gz]`` file; raises :class:`FormatError` when it has none."""
    rows = [row for _, row in iter_jsonl(path)]
    if not rows:
        raise FormatError(f"{what} {path} is empty.")
    return rows


def _jsonl_kind(path: Path) -> str:
    suffixes = [s for s in path.suffixes if s != ".gz"]
    return suffixes[-1] if suffixes else ""


def read_texts(
    path: str | os.PathLike, text_field: str = "text", id_field: str | None = None
) -> tuple[list[str], list[str]]:
    """``(ids, texts)`` from a ``.txt`` file (one text per line, ids are line numbers from 0) or a ``.jsonl[.gz]``.

    JSON lines take the text from ``text_field`` (prefixed by a non-empty ``title``, as in a BEIR ``corpus.jsonl``)
    and the id from ``id_field``, else ``_id`` or ``id``, else the line number.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No such file: {str(path)!r}.")
    ids, texts = [], []
    if _jsonl_kind(path) not in (".jsonl", ".json"):
        with open_text(path) as handle:
            for number, line in enumerate(handle):
                if line.strip():
                    ids.append(str(number))
                    texts.append(line.rstrip("\n"))
        return ids, texts
    for number, row in iter_jsonl(path):
        if text_field not in row:
            raise FormatError(
                f"{path}:{number}: line {number} has no field {text_field!r} (fields: {sorted(row)}): "
                "pass --text-field."
            )
        text = f"{row['title']} {row[text_field]}" if row.get("title") else row[text_field]
        key = id_field or next((name for name in ("_id", "id") if name in row), None)
        ids.append(str(row[key]) if key else str(number - 1))
        texts.append(text)
    return ids, texts


def read_unique_texts(path: str | os.PathLike, fields: Sequence[str] = ("text", "anchor", "positive")) -> list[str]:
    """The unique non-empty texts of a ``.txt`` file (one a line) or a ``.jsonl[.gz]`` file, in file order.

    JSON lines give every one of ``fields`` that the row has (so a pairs file contributes both sides).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No such texts file: {str(path)!r}.")
    kind = _jsonl_kind(path)
    if kind not in (".txt", ".jsonl"):
        raise FormatError(f"{path} is neither .txt (one text a line) nor .jsonl[.gz] (a text field a row).")
    texts: dict[str, None] = {}
    if kind == ".txt":
        with open_text(path) as handle:
            for line in handle:
                if line.strip():
                    texts.setdefault(line.strip(), None)
    else:
        for number, row in iter_jsonl(path):
            values = [row[name] for name in fields if name in row]
            if not values:
                raise FormatError(
                    f"{path}:{number}: line {number} has none of the fields {list(fields)} (found {sorted(row)}): "
                    "pass --text-field."
                )
            for value in values:
                if not isinstance(value, str):
                    raise FormatError(f"{path}:{number}: expected text, got {type(value).__name__} {value!r}.")
                if value.strip():
                    texts.setdefault(value, None)
    if not texts:
        raise FormatError(f"{path} holds no text: it must have at least one non-empty text to fit on.")
    return list(texts)


# --- BEIR folders ----------------------------------------------------------------------------------------------------


@dataclass
class BeirFolder:
    """A BEIR retrieval folder, read and checked.

    Attributes:
        name: the folder's name.
        corpus: document id -> ``{"title": ..., "text": ...}``, in file order.
        queries: query id -> text, in file order.
        qrels: split -> query id -> document id -> relevance grade.
        files: the files read (for a content hash).
    """

    name: str
    corpus: dict[str, dict[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, dict[str, int]]]
    files: list[Path]

    @property
    def split(self) -> str:
        """The evaluation split: ``test`` when there is one."""
        return next(iter(self.qrels))

    def document(self, doc_id: str) -> str:
        """A document's text, prefixed by its title when it has one."""
        row = self.corpus[doc_id]
        return f"{row['title']} {row['text']}".strip() if row["title"] else row["text"]


def read_beir(folder: str | os.PathLike) -> BeirFolder:
    """Read ``corpus.jsonl`` (``_id``, ``text``, optional ``title``), ``queries.jsonl`` (``_id``, ``text``) and
    ``qrels/<split>.tsv`` (header ``query-id corpus-id score``). Of several qrels files, ``test`` is used, else every
    one but ``train``.
    """
    folder = Path(folder)
    corpus_path, queries_path, qrels_dir = folder / "corpus.jsonl", folder / "queries.jsonl", folder / "qrels"
    missing = [str(p) for p in (corpus_path, queries_path, qrels_dir) if not p.exists()]
    if missing:
        raise FormatError(
            f"{folder} is not a BEIR retrieval folder: {missing} not found. Expected corpus.jsonl, queries.jsonl "
            "and qrels/<split>.tsv."
        )
    qrels_files = sorted(qrels_dir.glob("*.tsv"))
    if not qrels_files:
        raise FormatError(
            f"No qrels/<split>.tsv file in {folder}: add e.g. qrels/test.tsv (query-id, corpus-id, score)."
        )
    splits = [p.stem for p in qrels_files]
    if "test" in splits:
        splits = ["test"]
    elif len(splits) > 1:
        splits = [s for s in splits if s != "train"]
    corpus: dict[str, dict[str, str]] = {}
    for number, row in iter_jsonl(corpus_path):
        if row.get("_id") is None or row.get("text") is None:
            raise FormatError(f"{corpus_path}:{number}: a corpus row needs '_id' and 'text', got {row}.")
        corpus[str(row["_id"])] = {"title": row.get("title") or "", "text": row["text"]}
    queries: dict[str, str] = {}
    for number, row in iter_jsonl(queries_path):
        if row.get("_id") is None or row.get("text") is None:
            raise FormatError(f"{queries_path}:{number}: a query row needs '_id' and 'text', got {row}.")
        queries[str(row["_id"])] = row["text"]
    if not corpus or not queries:
        raise FormatError(f"{corpus_path if not corpus else queries_path} is empty.")
    qrels = {split: _read_qrels(qrels_dir / f"{split}.tsv", queries, corpus) for split in splits}
    return BeirFolder(folder.name, corpus, queries, qrels, [corpus_path, queries_path, *qrels_files])


def _read_qrels(path: Path, query_ids: dict[str, Any], corpus_ids: dict[str, Any]) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    with open_text(path) as handle:
        reader = csv.reader(handle, delimiter="\t")
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:3]] != ["query-id", "corpus-id", "score"]:
            raise FormatError(
                f"{path}:1: must start with the header line 'query-id<TAB>corpus-id<TAB>score', got {header}."
            )
        for number, fields in enumerate(reader, start=2):
            if not fields:
                continue
            if len(fields) < 3:
                raise FormatError(f"{path}:{number}: expected query-id, corpus-id and score, got {fields}.")
            query_id, corpus_id, score = fields[0], fields[1], fields[2]
            if query_id not in query_ids or corpus_id not in corpus_ids:
                unknown = query_id if query_id not in query_ids else corpus_id
                where = "queries.jsonl" if query_id not in query_ids else "corpus.jsonl"
                raise FormatError(f"{path}:{number}: id {unknown!r} is not in {where}.")
            try:
                qrels.setdefault(query_id, {})[corpus_id] = int(float(score))
            except ValueError:
                raise FormatError(f"{path}:{number}: score {score!r} is not a number.") from None
    if not qrels:
        raise FormatError(f"{path} has no relevance judgements.")
    return qrels


__all__ = [
    "BeirFolder",
    "FormatError",
    "check_model_folder",
    "iter_jsonl",
    "open_text",
    "read_beir",
    "read_jsonl",
    "read_texts",
    "read_unique_texts",
]


def check_utf8(path: str | os.PathLike, error: type[ValueError] = FormatError) -> None:
    """Raise ``error`` naming ``FILE:LINE`` unless the (optionally gzipped) text file is UTF-8, reading it line by line:
    ``datasets`` reads such a file anyway and fails only when the rows are first used, after the model has loaded."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as bad:
                raise error(
                    f"{path}:{number}: not UTF-8 text (byte {line[bad.start]:#04x} at column {bad.start + 1}): "
                    "save the file as UTF-8."
                ) from None


def check_jsonl(path: str | os.PathLike, error: type[ValueError] = FormatError) -> None:
    """Raise ``error`` (with :func:`iter_jsonl`'s ``FILE:LINE`` message) unless every line is a UTF-8 JSON object:
    ``datasets`` reports a bad line as a character offset and bad bytes only when the rows are first used."""
    try:
        for _ in iter_jsonl(path):
            pass
    except FormatError as bad:
        raise error(str(bad)) from None


# What sentence-transformers reads when it loads a module, by the last part of its modules.json "type": the
# Transformer's weights (transformers' names, sharded or not, or a PEFT adapter's), the torch weights every module
# saved with ``save_torch_weights`` needs, and the modules that need no folder at all (no config, no weights).
TRANSFORMER_WEIGHTS = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
)
MODULE_WEIGHTS = ("model.safetensors", "pytorch_model.bin")
TRANSFORMER_MODULES = ("Transformer", "MLMTransformer")
WEIGHTED_MODULES = (
    "CNN",
    "Dense",
    "LSTM",
    "LayerNorm",
    "SparseAutoEncoder",
    "SparseStaticEmbedding",
    "StaticEmbedding",
    "WeightedLayerPooling",
    "WordEmbeddings",
    "WordWeights",
)
FOLDERLESS_MODULES = ("Normalize",)


def check_model_folder(name_or_path: str | os.PathLike) -> None:
    """Refuse a local model folder that cannot load, naming the file that is missing; a Hub id passes.

    What ``modules.json`` lists is checked without loading anything: every module's folder exists, the transformer
    has its ``config.json`` and weights (``model.safetensors`` or ``pytorch_model.bin``, sharded or not), and every
    module that holds weights (``Dense``, ``LayerNorm``, ...) has them. A folder without ``modules.json`` is
    checked as a plain transformers model (``config.json`` and weights at its root), which sentence-transformers
    loads with mean pooling. Run wherever a model folder the project did not just write is taken (train, eval,
    adapt, search, info, push), before any expensive work.

    Raises:
        FormatError: naming the folder, the module and the missing file.

    Example:
        >>> check_model_folder("output/matryoshka-minilm/final")  # doctest: +SKIP
        >>> check_model_folder("sentence-transformers/all-MiniLM-L6-v2")  # a Hub id: nothing to check here
    """
    folder = Path(name_or_path)
    if not folder.is_dir():
        return
    fix = "copy the whole folder SentenceTransformer.save_pretrained() wrote (e.g. OUTPUT_DIR/final), or save it again"
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        if not (folder / "config.json").is_file():
            raise FormatError(
                f"{folder} is not a model folder: it has neither modules.json (sentence-transformers) nor config.json "
                f"(transformers). Pass the folder a model was saved to, or a Hub id."
            )
        _check_weights(folder, "", "Transformer", TRANSFORMER_WEIGHTS, fix)
        return
    try:
        modules = json.loads(modules_file.read_text(encoding="utf-8"))
        if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
            raise ValueError("not a list of modules")
    except (ValueError, UnicodeDecodeError) as error:
        raise FormatError(f"{modules_file} is not a valid modules.json ({error}): {fix}.") from None
    for module in modules:
        relative = str(module.get("path") or "")
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        where = folder / relative
        if kind in FOLDERLESS_MODULES:
            continue
        if not where.is_dir():
            raise FormatError(
                f"{where} is missing: {modules_file} lists the {kind or 'unnamed'} module in {relative!r}, so the "
                f"model cannot load; {fix}."
            )
        if kind in TRANSFORMER_MODULES:
            if not (where / "config.json").is_file():
                raise FormatError(
                    f"{where / 'config.json'} is missing: the {kind} module cannot load without it; {fix}."
                )
            _check_weights(where, relative, kind, TRANSFORMER_WEIGHTS, fix)
        elif kind in WEIGHTED_MODULES:
            _check_weights(where, relative, kind, MODULE_WEIGHTS, fix)


def _check_weights(where: Path, relative: str, kind: str, names: Sequence[str], fix: str) -> None:
    if not any((where / name).is_file() for name in names):
        module = f"the {kind} module in {relative!r}" if relative else f"the {kind} module at the folder's root"
        raise FormatError(
            f"{where / names[0]} is missing: {module} has no weights ({' or '.join(names[:2])}), so the model "
            f"cannot load; {fix}."
        )
