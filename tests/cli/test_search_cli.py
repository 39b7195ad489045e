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


def test_build_hnsw_query_with_overrides(tmp_path, model_dir, beir_corpus, tiny_model, capsys, monkeypatch):
    index_dir = tmp_path / "index"
    argv = ["search", "build", "--model", str(model_dir), "--corpus", str(beir_corpus), "--output", str(index_dir)]
    argv += ["--stages", "16:5", "--first-stage", "hnsw", "--hnsw-m", "4", "--ef-construction", "20"]
    assert main([*argv, "--ef-search", "33"]) == 0
    index = FunnelIndex.load(index_dir)
    assert (index.params.kind, index.params.hnsw_m, index.params.ef_construction, index.params.ef_search) == (
        "hnsw",
        4,
        20,
        33,
    )
    used = []  # what the query's search ran with
    search = FunnelIndex.search

    def recording_search(self, *args, **kwargs):
        used.append((self.params.ef_search, self._index.hnsw.efSearch, list(self.stages)))
        return search(self, *args, **kwargs)

    monkeypatch.setattr(FunnelIndex, "search", recording_search)
    query = ["search", "query", "--index", str(index_dir), "--query", "a dog", "--k", "6"]
    assert main([*query, "--stages", "16:6", "--ef-search", "50"]) == 0
    record = json.loads(capsys.readouterr().out.strip())
    monkeypatch.undo()
    # the query's overrides reach FAISS for this search only; the saved index keeps the build's ef_search
    assert used == [(50, 50, [(16, 6)])]
    saved = FunnelIndex.load(index_dir)
    assert (saved.params.ef_search, saved._index.hnsw.efSearch, saved.stages) == (33, 33, [(16, 5)])
    # a 6-text corpus, a shortlist of 6 and k=6: the full-dim rerank sees every text, so the result is the exact
    # cosine ranking of the whole corpus
    corpus, query_vector = tiny_model.encode(TEXTS), tiny_model.encode(["a dog"])[0]  # unit rows, (6, 64) and (64,)
    cosines = corpus @ query_vector
    order = np.argsort(-cosines)
    assert record["ids"] == [f"d{i}" for i in order]
    np.testing.assert_allclose(record["scores"], cosines[order], atol=1e-5)
    # a new folder: an existing index is refused before anything else
    assert main([*argv, "--output", str(tmp_path / "other"), "--ef-search", "0"]) == 2
    assert "ef_search must be a positive integer, got 0" in capsys.readouterr().err


def test_console_subcommand_tune(tmp_path, model_dir, tiny_model):
    rng = np.random.default_rng(0)
    dim = tiny_model.get_sentence_embedding_dimension()
    scale = np.linspace(2.0, 0.3, dim)  # a Matryoshka-like spectrum: the 16-dim prefix carries most of the signal
    corpus = (rng.normal(size=(500, dim)) * scale).astype(np.float32)
    FunnelIndex.from_embeddings(corpus, stages=[(16, 50)], first_stage="hnsw", hnsw_m=8).save(tmp_path / "index")
    queries = tmp_path / "queries.npy"
    np.save(queries, (corpus[:100] + 0.3 * rng.normal(size=(100, dim)) * scale).astype(np.float32))
    result = subprocess.run(
        [sys.executable, "-m", "matryoshka_st", "search", "tune", "--index", str(tmp_path / "index")]
        + ["--queries", str(queries), "--target-recall", "0.9", "--k", "5", "--output", str(tmp_path / "tuned")]
        + ["--shortlists", "5,10,20,50,100,200", "--ef-searches", "16,64,256"],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    tuned = FunnelIndex.load(tmp_path / "tuned")
    assert summary["tune_recall"] >= 0.9 and summary["num_holdout_queries"] == 50
    assert [list(s) for s in tuned.stages] == summary["stages"] and tuned.params.ef_search == summary["ef_search"]
    assert tuned.tuning["target_recall"] == 0.9


def test_tune_reports_bad_arguments(tmp_path, capsys):
    FunnelIndex.from_embeddings(np.eye(16, dtype=np.float32), stages=[(8, 10)]).save(tmp_path / "index")
    np.save(tmp_path / "q.npy", np.eye(16, dtype=np.float32))
    argv = ["search", "tune", "--index", str(tmp_path / "index"), "--queries", str(tmp_path / "q.npy")]
    assert main([*argv, "--target-recall", "2"]) == 2
    assert "target_recall must be a number in [0.0, 1.0], got 2.0" in capsys.readouterr().err


def test_build_defaults_are_the_library_defaults(tmp_path, model_dir, beir_corpus):
    from matryoshka_st.search import FirstStageParams

    index_dir = tmp_path / "index"
    argv = ["search", "build", "--model", str(model_dir), "--corpus", str(beir_corpus), "--output", str(index_dir)]
    assert main([*argv, "--stages", "16:5", "--first-stage", "hnsw"]) == 0
    assert FunnelIndex.load(index_dir).params == FirstStageParams("hnsw")
    assert FirstStageParams().ef_construction == 100


def test_bad_first_stage_flag_fails_before_the_model_loads(tmp_path, beir_corpus, capsys, monkeypatch):
    import matryoshka_st.cli.search as search_cli

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the flags were checked")

    monkeypatch.setattr(search_cli, "_load_model", no_model)
    argv = ["search", "build", "--model", "unused", "--corpus", str(beir_corpus), "--output", str(tmp_path / "i")]
    assert main([*argv, "--stages", "16:5", "--first-stage", "hnsw", "--ef-construction", "0"]) == 2
    assert "ef_construction must be a positive integer, got 0" in capsys.readouterr().err
