"""Small test data shared by several test packages: a six-query retrieval task and a jsonl writer."""

from __future__ import annotations

import json
from pathlib import Path

QUERIES = ["a cat on a mat", "dogs in the park", "the market fell", "rain tomorrow", "piano music", "reading books"]
DOCS = [
    "the cat sat on the mat",
    "a dog ran in the park",
    "the stock market fell today",
    "rain is expected tomorrow",
    "she plays the piano",
    "he reads a book every night",
    "the train left the station",
    "bread is baked in an oven",
]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_beir(folder: Path) -> Path:
    """Six queries, eight documents, query i relevant to document i, in BEIR layout."""
    write_jsonl(folder / "corpus.jsonl", [{"_id": f"d{i}", "title": "", "text": t} for i, t in enumerate(DOCS)])
    write_jsonl(folder / "queries.jsonl", [{"_id": f"q{i}", "text": t} for i, t in enumerate(QUERIES)])
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    lines = ["query-id\tcorpus-id\tscore"] + [f"q{i}\td{i}\t1" for i in range(len(QUERIES))]
    (folder / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder
