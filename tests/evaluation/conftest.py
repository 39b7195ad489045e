from __future__ import annotations

from pathlib import Path

import pytest

from tests._data import DOCS, QUERIES, write_beir, write_jsonl  # noqa: F401  (re-exported to the tests)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


@pytest.fixture()
def beir_folder(tmp_path) -> Path:
    """Six queries, eight documents, query i relevant to document i."""
    return write_beir(tmp_path / "tiny_beir")


@pytest.fixture()
def sts_file() -> Path:
    return FIXTURES / "sts_sample.jsonl"


@pytest.fixture()
def classification_file(tmp_path) -> Path:
    rows = [{"text": t, "label": "animal"} for t in ("a cat", "the dog", "a bird sings", "the horse runs", "cats")]
    rows += [{"text": t, "label": "money"} for t in ("the bank", "stock prices", "a market", "cash and coins", "tax")]
    return write_jsonl(tmp_path / "topics.jsonl", rows)
