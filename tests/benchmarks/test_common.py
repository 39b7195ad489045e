"""benchmarks/_common.py: per-query nDCG@10 from pytrec_eval (as mteb scores) equals the numpy formula."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from matryoshka_st.dims import truncate_numpy

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "_common.py"
_spec = importlib.util.spec_from_file_location("benchmarks_common", _PATH)
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)


def test_pytrec_eval_matches_the_numpy_formula():
    pytest.importorskip("pytrec_eval")
    rng = np.random.default_rng(0)
    queries, docs = rng.normal(size=(30, 32)), rng.normal(size=(200, 32))
    query_ids, doc_ids = [f"q{i}" for i in range(30)], [f"d{i}" for i in range(200)]
    qrels = {}
    for i in range(0, 30, 2):  # every other query judged, with graded relevance
        relevant = rng.choice(200, size=5, replace=False)
        docs[relevant[0]] = queries[i] + 0.2 * rng.normal(size=32)  # one relevant doc near its query
        qrels[f"q{i}"] = {f"d{j}": int(grade) for j, grade in zip(relevant, rng.integers(1, 3, size=5))}
    for dim in (32, 8):
        scores = common.ndcg_at_10_per_query(queries, docs, query_ids, doc_ids, qrels, dim)
        top, _ = common._top10_of(truncate_numpy(queries, dim) @ truncate_numpy(docs, dim).T)
        expected = common._ndcg_numpy(top, query_ids, doc_ids, qrels)
        assert scores.shape == (15,)
        np.testing.assert_allclose(scores, expected, atol=1e-6)
        assert 0 < scores.mean() < 1


def test_hand_computed_case():
    # one query; its two relevant docs (grades 2 and 1) ranked 1st and 3rd
    queries = np.array([[1.0, 0.0]])
    docs = np.array([[1.0, 0.0], [0.9, 0.5], [0.5, 0.9], [-1.0, 0.0]])
    qrels = {"q": {"a": 2, "c": 1}}
    score = common.ndcg_at_10_per_query(queries, docs, ["q"], ["a", "b", "c", "d"], qrels, 2)
    ideal = 2 + 1 / np.log2(3)
    assert score == pytest.approx([(2 + 1 / np.log2(4)) / ideal], abs=1e-6)


def test_load_task_reads_the_shipped_dev_set():
    folder = Path(__file__).resolve().parents[2] / "matryoshka_st" / "data" / "dev_wordnet"
    query_ids, queries, doc_ids, docs, qrels = common.load_task(folder)
    assert len(query_ids) == len(queries) and len(doc_ids) == len(docs)
    assert set(qrels) <= set(query_ids) and all(set(d) <= set(doc_ids) for d in qrels.values())


def test_no_benchmark_script_edits_sys_path():
    """Python puts a script's own folder on sys.path; the package comes from the install, not a path edit."""
    scripts = sorted(_PATH.parent.glob("*.py"))
    assert len(scripts) > 3
    edits = [
        f"{path.name}:{number}"
        for path in scripts
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "sys.path." in line and not line.lstrip().startswith("#")
    ]
    assert edits == []
