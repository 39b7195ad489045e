from __future__ import annotations

import json
from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

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


@pytest.fixture()
def beir_folder(tmp_path) -> Path:
    """Six queries, eight documents, query i relevant to document i."""
    folder = tmp_path / "tiny_beir"
    write_jsonl(folder / "corpus.jsonl", [{"_id": f"d{i}", "title": "", "text": t} for i, t in enumerate(DOCS)])
    write_jsonl(folder / "queries.jsonl", [{"_id": f"q{i}", "text": t} for i, t in enumerate(QUERIES)])
    (folder / "qrels").mkdir()
    lines = ["query-id\tcorpus-id\tscore"] + [f"q{i}\td{i}\t1" for i in range(len(QUERIES))]
    (folder / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


@pytest.fixture()
def sts_file() -> Path:
    return FIXTURES / "sts_sample.jsonl"


@pytest.fixture()
def classification_file(tmp_path) -> Path:
    rows = [{"text": t, "label": "animal"} for t in ("a cat", "the dog", "a bird sings", "the horse runs", "cats")]
    rows += [{"text": t, "label": "money"} for t in ("the bank", "stock prices", "a market", "cash and coins", "tax")]
    return write_jsonl(tmp_path / "topics.jsonl", rows)
