"""Helpers the benchmark scripts share: the dev sets through the project's reader, and per-query nDCG@10 scored by
pytrec_eval, the evaluator mteb uses (a numpy version of the same formula stands in when pytrec_eval is missing).

The scripts import it as ``from _common import ...``: Python puts a script's own folder on ``sys.path``.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from matryoshka_st.dims import truncate_numpy
from matryoshka_st.readers import iter_jsonl, read_beir

Task = tuple[list[str], list[str], list[str], list[str], dict[str, dict[str, int]]]


def command_line(script: str, argv: Sequence[str] | None) -> str:
    """How the benchmark ``script`` (its ``__file__``) was run, for the head of its results file."""
    return " ".join(["python", f"benchmarks/{Path(script).name}", *(argv if argv is not None else sys.argv[1:])])


def load_task(folder: Path) -> Task:
    """``(query_ids, queries, doc_ids, docs, qrels)`` of a BEIR folder, read by :func:`matryoshka_st.readers.read_beir`;
    a document is its title and text."""
    beir = read_beir(folder)
    doc_ids = list(beir.corpus)
    return (
        list(beir.queries),
        list(beir.queries.values()),
        doc_ids,
        [beir.document(d) for d in doc_ids],
        beir.qrels[beir.split],
    )


def pairs_by_source(data: Path, seed: int, sources: Iterable[str]) -> dict[str, list[dict[str, str]]]:
    """Every pair of ``train/pairs.jsonl.gz`` by source, each source ordered by a hash of (seed, anchor, positive).

    Ranking by a hash of the pair (not by a shuffle of the file) makes any sample a prefix of that order, so a file
    holding only the sampled pairs yields exactly the same sample. ``ValueError`` when one of ``sources`` is missing.
    """
    path = data / "train" / "pairs.jsonl.gz"
    if not path.is_file():
        raise FileNotFoundError(f"No training pairs at {path}: pass --data, the folder that holds train/ and dev/.")
    by_source: dict[str, list[dict[str, str]]] = {}
    for _, row in iter_jsonl(path):
        by_source.setdefault(row["source"], []).append(
            {"anchor": row["anchor"], "positive": row["positive"], "source": row["source"]}
        )
    missing = sorted(set(sources) - set(by_source))
    if missing:
        raise ValueError(f"{path} has no pairs from the sources {missing}; it has {sorted(by_source)}.")
    for rows in by_source.values():
        rows.sort(key=lambda row: hashlib.sha1(f"{seed}:{row['anchor']}:{row['positive']}".encode()).hexdigest())
    return by_source


def pair_texts(data: Path) -> list[dict[str, str]]:
    """The rows of ``train/pairs.jsonl.gz`` under the shared data folder."""
    return [row for _, row in iter_jsonl(data / "train" / "pairs.jsonl.gz")]


def _top10_of(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 10 best documents of each query of a ``(Q, D)`` score matrix: ``(Q, k)`` doc indices and scores."""
    k = min(10, scores.shape[1])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    top_scores = np.take_along_axis(scores, top, axis=1)
    order = np.argsort(-top_scores, axis=1)
    return np.take_along_axis(top, order, axis=1), np.take_along_axis(top_scores, order, axis=1)


def ndcg_at_10_per_query(
    query_emb: np.ndarray,
    doc_emb: np.ndarray,
    query_ids: list[str],
    doc_ids: list[str],
    qrels: dict[str, dict[str, int]],
    dim: int,
) -> np.ndarray:
    """nDCG@10 of each query that has qrels, in ``query_ids`` order, exact cosine search on the first ``dim``
    coordinates (renormalised), scored by pytrec_eval's ``ndcg_cut.10`` as in mteb."""
    return ndcg_at_10_from_scores(
        truncate_numpy(query_emb, dim) @ truncate_numpy(doc_emb, dim).T, query_ids, doc_ids, qrels
    )


def ndcg_at_10_from_scores(
    scores: np.ndarray, query_ids: list[str], doc_ids: list[str], qrels: dict[str, dict[str, int]]
) -> np.ndarray:
    """nDCG@10 of each query that has qrels, in ``query_ids`` order, from a ``(Q, D)`` score matrix (any scoring:
    float, int8 codes, Hamming, rescored), by pytrec_eval's ``ndcg_cut.10`` as in mteb."""
    top, top_scores = _top10_of(scores)
    try:
        import pytrec_eval
    except ImportError:
        return _ndcg_numpy(top, query_ids, doc_ids, qrels)
    asked = [query_id for query_id in query_ids if qrels.get(query_id)]
    run = {
        query_id: {doc_ids[i]: float(s) for i, s in zip(top[row], top_scores[row])}
        for row, query_id in enumerate(query_ids)
        if qrels.get(query_id)
    }
    evaluator = pytrec_eval.RelevanceEvaluator({q: qrels[q] for q in asked}, {"ndcg_cut.10"})
    scores = evaluator.evaluate(run)
    return np.array([scores[query_id]["ndcg_cut_10"] for query_id in asked])


def _ndcg_numpy(
    top: np.ndarray, query_ids: list[str], doc_ids: list[str], qrels: dict[str, dict[str, int]]
) -> np.ndarray:
    """The same nDCG@10 without pytrec_eval: gain = relevance grade, discount log2(rank + 1)."""
    discounts = 1.0 / np.log2(np.arange(2, 12))
    values = []
    for row, query_id in enumerate(query_ids):
        relevant = qrels.get(query_id)
        if not relevant:
            continue
        gains = np.array([relevant.get(doc_ids[i], 0) for i in top[row]], dtype=np.float64)
        ideal = np.sort(np.array(list(relevant.values()), dtype=np.float64))[::-1][:10]
        values.append(float(gains @ discounts[: len(gains)]) / float(ideal @ discounts[: len(ideal)]))
    return np.array(values)
