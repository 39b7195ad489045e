from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from matryoshka_st.cli import main
from matryoshka_st.cli.search import parse_stages, read_texts
from matryoshka_st.search import FunnelIndex

pytest.importorskip("faiss")

TEXTS = [
    "the cat sat on the mat",
    "a dog ran in the park",
    "the stock market fell today",
    "rain is expected tomorrow",
    "she plays the piano",
    "he reads a book",
]


@pytest.fixture()
def model_dir(tiny_model, tmp_path):
    tiny_model.save(str(tmp_path / "model"))
    return tmp_path / "model"


@pytest.fixture()
def beir_corpus(tmp_path):
    path = tmp_path / "corpus.jsonl"
    rows = [{"_id": f"d{i}", "title": "", "text": text} for i, text in enumerate(TEXTS)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_parse_stages():
    assert parse_stages("64:1000,128:100") == [(64, 1000), (128, 100)]
    with pytest.raises(argparse.ArgumentTypeError, match="DIM:SHORTLIST"):
        parse_stages("64-1000")


def test_read_texts(tmp_path, beir_corpus):
    assert read_texts(beir_corpus) == ([f"d{i}" for i in range(len(TEXTS))], TEXTS)
    lines = tmp_path / "corpus.txt"
    lines.write_text("first text\n\nsecond text\n", encoding="utf-8")
    assert read_texts(lines) == (["0", "2"], ["first text", "second text"])
    packed = tmp_path / "rows.jsonl.gz"
    with gzip.open(packed, "wt", encoding="utf-8") as f:
        f.write(json.dumps({"positive": "long text", "title": "Title"}) + "\n")
    assert read_texts(packed, text_field="positive") == (["0"], ["Title long text"])
    with pytest.raises(ValueError, match="no field 'body'.*--text-field"):
        read_texts(beir_corpus, text_field="body")


def test_build_then_query(tmp_path, model_dir, beir_corpus, tiny_model, capsys):
    index_dir = tmp_path / "index"
    argv = ["search", "build", "--model", str(model_dir), "--corpus", str(beir_corpus), "--output", str(index_dir)]
    assert main([*argv, "--stages", "16:6,32:4", "--first-stage", "binary"]) == 0
    index = FunnelIndex.load(index_dir)
    assert index.stages == [(16, 6), (32, 4)] and index.first_stage == "binary" and index.doc_ids[0] == "d0"
    assert index.model_name_or_path == str(model_dir)

    assert main(["search", "query", "--index", str(index_dir), "--query", "the cat is on the mat", "--k", "3"]) == 0
    record = json.loads(capsys.readouterr().out.strip())
    _, expected = index.search(["the cat is on the mat"], k=3, model=tiny_model)
    assert record["ids"] == [f"d{i}" for i in expected[0]]
    assert record["query_id"] == "0" and len(record["scores"]) == 3

    assert main(["search", "query", "--index", str(index_dir), "--query", "cat", "--k", "5"]) == 2
    assert "k=5 is larger than the last shortlist (4" in capsys.readouterr().err


def test_console_subcommand_query(tmp_path, model_dir, beir_corpus):
    index_dir = tmp_path / "index"
    argv = ["search", "build", "--model", str(model_dir), "--corpus", str(beir_corpus), "--output", str(index_dir)]
    assert main([*argv, "--stages", "16:6"]) == 0
    queries = tmp_path / "queries.txt"
    queries.write_text("a dog in the park\nthe piano\n", encoding="utf-8")
    output = tmp_path / "results.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "matryoshka_st", "search", "query", "--index", str(index_dir)]
        + ["--queries", str(queries), "--k", "2", "--output", str(output)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert [r["query_id"] for r in records] == ["0", "1"]
    assert all(len(r["ids"]) == 2 and set(r["ids"]) <= {f"d{i}" for i in range(len(TEXTS))} for r in records)
    assert all(np.all(np.diff(r["scores"]) <= 0) for r in records)
