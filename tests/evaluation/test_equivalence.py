"""Our numbers against a direct computation with sentence-transformers' evaluators, on the bundled real model.

sentence-transformers' ``truncate_dim`` cuts without renormalising, but both sides score by cosine similarity, which
ignores vector length, so the metrics must agree.
"""

from __future__ import annotations

import csv
import json

import pytest
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.evaluation import (
    EmbeddingSimilarityEvaluator,
    InformationRetrievalEvaluator,
)
from sentence_transformers.util import cos_sim

from matryoshka_st._bundled import SAMPLE_DEV_RETRIEVAL
from matryoshka_st.evaluation import evaluate

DIMS = [384, 256, 128, 64, 32]
# sentence-transformers' evaluator encodes the corpus again for every dim: three dims keep the test near a minute
IR_DIMS = [384, 128, 32]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def minilm(bundled_model_path) -> SentenceTransformer:
    model = SentenceTransformer(bundled_model_path, device="cpu")
    model.max_seq_length = 128  # the dev texts are short; this halves the padding cost on CPU
    return model


def read_jsonl(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def test_ndcg_matches_information_retrieval_evaluator(minilm, tmp_path):
    runs = evaluate(
        {"minilm": minilm}, SAMPLE_DEV_RETRIEVAL, dims=DIMS, output_folder=tmp_path, show_progress_bar=False
    )
    ours = {run.dim: run.result.scores["test"][0]["ndcg_at_10"] for run in runs}
    assert sorted(ours) == sorted(DIMS)

    corpus = {row["_id"]: row["text"] for row in read_jsonl(SAMPLE_DEV_RETRIEVAL / "corpus.jsonl")}
    queries = {row["_id"]: row["text"] for row in read_jsonl(SAMPLE_DEV_RETRIEVAL / "queries.jsonl")}
    relevant: dict[str, set[str]] = {}
    with open(SAMPLE_DEV_RETRIEVAL / "qrels" / "test.tsv", encoding="utf-8") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            if int(row["score"]) > 0:
                relevant.setdefault(row["query-id"], set()).add(row["corpus-id"])
    theirs = {}
    for dim in IR_DIMS:
        evaluator = InformationRetrievalEvaluator(
            queries,
            corpus,
            relevant,
            truncate_dim=dim,
            score_functions={"cosine": cos_sim},
            name="dev",
            batch_size=64,
        )
        theirs[dim] = evaluator(minilm)["dev_cosine_ndcg@10"]
    for dim in IR_DIMS:
        assert ours[dim] == pytest.approx(theirs[dim], abs=1e-3), (dim, ours, theirs)
    # and the quality falls with the dimension, as MiniLM was not trained with Matryoshka
    assert ours[384] > ours[128] > ours[32]


def test_spearman_matches_embedding_similarity_evaluator(minilm, tmp_path, sts_file):
    runs = evaluate({"minilm": minilm}, sts_file, dims=DIMS, output_folder=tmp_path, show_progress_bar=False)
    ours = {run.dim: run.result.scores["test"][0]["cosine_spearman"] for run in runs}
    rows = read_jsonl(sts_file)
    for dim in DIMS:
        evaluator = EmbeddingSimilarityEvaluator(
            [r["sentence1"] for r in rows],
            [r["sentence2"] for r in rows],
            [r["score"] / 5 for r in rows],
            main_similarity="cosine",
            similarity_fn_names=["cosine"],
            truncate_dim=dim,
            name="sts",
        )
        theirs = evaluator(minilm)["sts_spearman_cosine"]
        assert ours[dim] == pytest.approx(theirs, abs=1e-3), (dim, ours[dim], theirs)
    assert ours[384] > 0.7  # the hand-made pairs are easy for a real model
