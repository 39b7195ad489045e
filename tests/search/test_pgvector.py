"""The pgvector backend against a real PostgreSQL + pgvector server (``pg_server`` / ``pg_dsn`` in tests/_postgres.py)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

import matryoshka_st.search.pgvector as pg
from matryoshka_st.search.pgvector import PgvectorError, PgvectorIndex, redact_dsn
from matryoshka_st.search.tune import recall_at_k
from tests._postgres import restart_server, start_server, stop_server, with_password

psycopg = pytest.importorskip("psycopg")  # in the dev extra with the server; here for a clear name in the error

DIM = 64
SECRET = "hunter2-very-secret"


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    # Matryoshka-like: variance falls with the coordinate, so a prefix carries most of the signal.
    rng = np.random.default_rng(0)
    scale = np.linspace(2.0, 0.3, DIM)
    corpus = _unit(rng.normal(size=(2000, DIM)) * scale)
    queries = _unit(corpus[rng.choice(2000, 300, replace=False)] + 0.4 * rng.normal(size=(300, DIM)) * scale)
    return corpus, queries


def _exact(corpus: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(queries @ corpus.T), axis=1, kind="stable")[:, :k]


def _sql(dsn: str, query: str, params=()) -> list[tuple]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(query, params).fetchall()


def _build(corpus, dsn, table, **options) -> PgvectorIndex:
    options = {"stages": [(16, 200)], "hnsw_m": 8, "ef_construction": 32, "show_progress_bar": False, **options}
    return PgvectorIndex.from_embeddings(corpus, table=table, dsn=dsn, **options)


@pytest.mark.parametrize("first_stage", ["hnsw", "halfvec_hnsw", "binary_hnsw"])
def test_build_and_search_use_the_expression_index(data, pg_dsn, first_stage):
    corpus, queries = data
    dim = 32 if first_stage == "binary_hnsw" else 16
    table = f"docs_{first_stage}"
    index = _build(corpus, pg_dsn, table, stages=[(dim, 400), (48, 40)], first_stage=first_stage, ef_search=400)
    assert len(index) == 2000 and index.stages == [(dim, 400), (48, 40)]
    name = f"{table}_{first_stage}_{dim}"
    (definition,) = _sql(pg_dsn, "SELECT indexdef FROM pg_indexes WHERE indexname = %s", [name])[0]
    opclass = {"hnsw": "vector_cosine_ops", "halfvec_hnsw": "halfvec_cosine_ops", "binary_hnsw": "bit_hamming_ops"}
    assert "USING hnsw" in definition and opclass[first_stage] in definition
    # The funnel statement's plan scans that index.
    index._set_session(ef_search=400)
    with index._conn.cursor() as cursor:
        cursor.execute("EXPLAIN " + index._search_sql(10), index._query_params(queries[0]))
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert f"Index Scan using {name}" in plan
    scores, ids = index.search(queries, k=10)
    assert scores.shape == ids.shape == (300, 10)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
    exact = _exact(corpus, queries, 10)
    assert recall_at_k(ids, exact) >= {"hnsw": 0.9, "halfvec_hnsw": 0.9, "binary_hnsw": 0.6}[first_stage]
    # Scores are full-dim cosines of the stored unit vectors.
    np.testing.assert_allclose(scores[:, 0], np.sum(queries * corpus[ids[:, 0]], axis=1), atol=1e-5)
    memory = index.memory_report()
    assert memory.num_vectors == 2000 and 0 < memory.first_stage_bytes_per_vector
    assert memory.rerank_bytes_per_vector >= 4 * DIM  # the float32 vectors, in the heap
    index.close()


def test_generous_funnel_equals_exact_search(data, pg_dsn):
    corpus, queries = data
    corpus = corpus[:600]
    index = _build(corpus, pg_dsn, "docs_generous", stages=[(32, 600), (48, 300)], ef_search=1000)
    scores, ids = index.search(queries[:50], k=10)
    np.testing.assert_array_equal(ids, _exact(corpus, queries[:50], 10))
    np.testing.assert_array_equal(index._exact_top_k(queries[:50], 10), _exact(corpus, queries[:50], 10))
    index.close()


def test_halfvec_table_and_doc_ids(data, pg_dsn):
    corpus, queries = data
    doc_ids = [f"doc-{i}" for i in range(300)]
    index = _build(corpus[:300], pg_dsn, "docs_half", vector_type="halfvec", doc_ids=doc_ids, stages=[(32, 100)])
    assert _sql(pg_dsn, "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'docs_half'::regclass AND attname = 'embedding'") == [("halfvec(64)",)]  # fmt: skip
    scores, ids = index.search(corpus[:3], k=2)
    assert ids[:, 0].tolist() == [0, 1, 2]
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=2e-3)  # float16 storage
    assert index.doc_ids_of(ids) == [[doc_ids[i] for i in row] for row in ids]
    index.close()


def test_rerun_loads_nothing_twice_and_keeps_the_schedule(data, pg_dsn, monkeypatch):
    corpus, queries = data
    index = _build(corpus, pg_dsn, "docs_rerun", chunk_rows=300)
    index.set_search_params(stages=[(16, 120)], ef_search=160)
    index.save()
    index.close()
    calls = []
    real = pg.truncate_numpy
    monkeypatch.setattr(pg, "truncate_numpy", lambda rows, dim: calls.append(len(rows)) or real(rows, dim))
    again = _build(corpus, pg_dsn, "docs_rerun", chunk_rows=300)
    assert calls == []  # no chunk was read, let alone copied
    assert _sql(pg_dsn, "SELECT count(*), count(DISTINCT id), min(id), max(id) FROM docs_rerun") == [
        (2000, 2000, 0, 1999)
    ]
    assert again.stages == [(16, 120)] and again.params.ef_search == 160  # the stored schedule, not the build's
    again.close()


def test_tune_stores_the_schedule_for_every_client(data, pg_dsn):
    corpus, queries = data
    index = _build(corpus, pg_dsn, "docs_tune", stages=[(16, 100)])
    result = index.tune(
        queries, target_recall=0.95, k=10, first_dims=[16, 32], shortlists=[10, 20, 30, 50, 100, 200], ef_searches=[40, 100, 200, 400]
    )  # fmt: skip
    assert result.tune_recall >= 0.95
    assert result.holdout_recall >= 0.95 - 0.02  # 150 held-back queries: a sampling margin
    assert result.num_tune_queries == result.num_holdout_queries == 150
    assert index.stages == result.stages and index.params.ef_search == result.ef_search and result.nprobe is None
    assert all(c["recall"] >= 0.95 for c in result.candidates)
    # What tune reports is what the index now does, and a fresh client reads the same schedule.
    assert recall_at_k(index.search(queries, k=10)[1], _exact(corpus, queries, 10)) >= 0.93
    other = PgvectorIndex.load(pg_dsn, "docs_tune")
    assert other.stages == result.stages and other.params.ef_search == result.ef_search
    assert other.tuning["holdout_recall"] == pytest.approx(result.holdout_recall)
    # The index built only for tuning is gone unless it was chosen.
    assert other.first_stage_indexes() == sorted({("hnsw", 16), ("hnsw", result.stages[0][0])})
    other.close()
    index.close()


def test_tune_checks_its_arguments_before_searching(data, pg_dsn):
    corpus, queries = data
    index = _build(corpus[:500], pg_dsn, "docs_tune_bad")
    with pytest.raises(ValueError, match="nprobes is for IVF"):
        index.tune(queries, nprobes=[4])
    with pytest.raises(ValueError, match=r"ef_searches must be an integer in \[1, 1000\]"):
        index.tune(queries, ef_searches=[2000])
    assert index.stages == [(16, 200)]
    index.close()


def test_a_failed_tune_leaves_the_index_as_it_was(data, pg_dsn):
    corpus, queries = data
    index = _build(corpus[:800], pg_dsn, "docs_tune_fail", stages=[(16, 100), (32, 50)], ef_search=120)
    with pytest.raises(ValueError, match="No schedule"):
        index.tune(queries, target_recall=1.0, k=10, first_dims=[16, 24], shortlists=[10], ef_searches=[10])
    assert index.stages == [(16, 100), (32, 50)] and index.params.ef_search == 120
    assert index.first_stage_indexes() == [("hnsw", 16)]  # the 24-dim index tuning built is dropped
    other = PgvectorIndex.load(pg_dsn, "docs_tune_fail")
    assert other.stages == [(16, 100), (32, 50)] and other.params.ef_search == 120 and other.tuning is None
    other.close()
    index.close()


@pytest.mark.slow  # a second server, stopped and recovered: about 10 s
def test_server_stopped_mid_load_then_restarted_finishes_with_every_row_once(data, monkeypatch):
    corpus, _ = data
    server = start_server()
    dsn = server.get_uri()
    real = pg.truncate_numpy
    chunks, stopped = [], []

    class StopHalfway:
        """The third chunk's rows: the server is stopped while they are being copied."""

        def __init__(self, rows):
            self.rows = rows

        def __len__(self):
            return len(self.rows)

        def __iter__(self):
            for number, row in enumerate(self.rows):
                if number == len(self.rows) // 2:
                    stop_server(server)
                yield row

    def rows(values, dim):
        chunks.append(len(values))
        out = real(values, dim)
        return StopHalfway(out) if len(chunks) == 3 and not stopped else out

    monkeypatch.setattr(pg, "truncate_numpy", rows)
    try:
        with pytest.raises(PgvectorError, match=r"loading rows 800-1199 .*\(800 of 2000 rows are committed\).*again"):
            _build(corpus, dsn, "docs_crash", chunk_rows=400)
        stopped.append(True)
        dsn = restart_server(server)
        assert _sql(dsn, "SELECT count(*) FROM docs_crash") == [(800,)]  # the cut chunk left nothing
        chunks.clear()
        index = _build(corpus, dsn, "docs_crash", chunk_rows=400)
        assert chunks == [400, 400, 400]  # only the missing chunks were read
        assert _sql(dsn, "SELECT count(*), count(DISTINCT id), min(id), max(id) FROM docs_crash") == [
            (2000, 2000, 0, 1999)
        ]
        stored = np.concatenate([vectors for _, vectors in index._iter_vectors()])
        ids = np.concatenate([ids for ids, _ in index._iter_vectors()])
        np.testing.assert_array_equal(stored[np.argsort(ids)], real(corpus, DIM))  # bit for bit
        assert index.search(corpus[:2], k=1)[1].tolist() == [[0], [1]]
        index.close()
    finally:
        server.cleanup()


def test_wrong_dim_for_an_existing_table_changes_nothing(data, pg_dsn):
    corpus, _ = data
    _build(corpus[:200, :32], pg_dsn, "docs_dim").close()
    before = _sql(pg_dsn, "SELECT config, tuning, updated_at FROM matryoshka_st_funnels WHERE table_name = 'docs_dim'")
    with pytest.raises(
        ValueError, match=r"^Table 'docs_dim' holds 32-dim vector vectors, not 64-dim vector: .*nothing was changed"
    ):
        _build(corpus[:200], pg_dsn, "docs_dim")
    with pytest.raises(ValueError, match=r"holds another corpus \(200 rows"):
        _build(corpus[:300, :32], pg_dsn, "docs_dim")
    assert (
        _sql(pg_dsn, "SELECT config, tuning, updated_at FROM matryoshka_st_funnels WHERE table_name = 'docs_dim'")
        == before
    )
    assert _sql(pg_dsn, "SELECT count(*) FROM docs_dim") == [(200,)]


def test_a_table_made_by_something_else_is_left_alone(data, pg_dsn):
    corpus, _ = data
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE their_docs (id int, body text)")
        conn.execute("INSERT INTO their_docs VALUES (1, 'x')")
    for overwrite in (False, True):
        with pytest.raises(ValueError, match="^Table 'their_docs' exists but was not made by matryoshka-st"):
            _build(corpus[:100], pg_dsn, "their_docs", overwrite=overwrite)
    with pytest.raises(ValueError, match="exists but was not made by matryoshka-st"):
        PgvectorIndex.load(pg_dsn, "their_docs")
    assert _sql(pg_dsn, "SELECT * FROM their_docs") == [(1, "x")]
    assert _sql(pg_dsn, "SELECT count(*) FROM pg_indexes WHERE tablename = 'their_docs'") == [(0,)]


def test_bad_arguments_fail_before_connecting(data):
    corpus, _ = data
    nowhere = f"postgresql://app:{SECRET}@127.0.0.1:9/none"  # never contacted: the arguments fail first
    for options, message in [
        ({"first_stage": "ivf"}, "first_stage must be one of"),
        ({"stages": [(16, 2000)]}, "returns at most hnsw.ef_search"),
        ({"hnsw_m": 32, "ef_construction": 40}, "at least 2 \\* hnsw_m"),
        ({"vector_type": "float16"}, "vector_type must be one of"),
        ({"table": "Docs; DROP TABLE x"}, "lower-case SQL name"),
    ]:
        options = {"table": "docs_args", "stages": [(16, 200)], **options}
        with pytest.raises(ValueError, match=message):
            PgvectorIndex.from_embeddings(corpus, dsn=nowhere, show_progress_bar=False, **options)


@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://app:{SECRET}@127.0.0.1:9/search",
        f"host=127.0.0.1 port=9 user=app password={SECRET} dbname=search",
        f"host=127.0.0.1 port=9 password='{SECRET}' dbname",  # malformed: libpq quotes the string back
        f"postgresql://app@127.0.0.1:9/search?password={SECRET}&connect_timeout=2",
    ],
)
def test_unreachable_server_is_one_line_without_the_password(dsn):
    with pytest.raises(PgvectorError) as caught:
        PgvectorIndex.load(dsn, "docs")
    message = str(caught.value)
    assert SECRET not in message and "\n" not in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__  # no chained traceback carries it
    assert message.startswith("cannot connect to PostgreSQL at ") and "***" in message


def test_no_password_in_logs(data, pg_dsn, caplog):
    corpus, _ = data
    dsn = with_password(pg_dsn, SECRET)  # the local test server trusts the user and ignores it
    with caplog.at_level(logging.INFO, logger="matryoshka_st"):
        index = _build(corpus[:100], dsn, "docs_secret", stages=[(16, 50)])
        index.search(corpus[:1], k=1)
    assert "postgresql://postgres:***@" in caplog.text and SECRET not in caplog.text
    assert SECRET not in repr(index)
    index.drop()
    assert _sql(pg_dsn, "SELECT to_regclass('docs_secret')") == [(None,)]


def test_redact_dsn():
    assert redact_dsn("postgresql://app:pw@db/search") == "postgresql://app:***@db/search"
    assert redact_dsn("postgres://app@db/search?sslmode=require&password=pw") == (
        "postgres://app@db/search?sslmode=require&password=***"
    )
    assert redact_dsn("host=db password = 'p w' user=app") == "host=db password = *** user=app"
    assert redact_dsn("postgresql://app@db/search") == "postgresql://app@db/search"
    assert redact_dsn(None) == ""


@pytest.mark.slow  # a child process loads, is killed with SIGKILL half way, and the load is rerun: about 15 s
def test_a_load_killed_half_way_resumes_with_every_row_once(pg_dsn, tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "pg_load_resume.py"
    output = tmp_path / "resume.md"
    command = [sys.executable, str(script), "--dsn", pg_dsn, "--random", "40000", "--dim", "16"]
    command += ["--chunk-rows", "200", "--sample", "2000", "--output", str(output)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(output.with_suffix(".json").read_text())
    assert 0 < result["rows_at_kill"] < 40_000  # killed during the load, with some chunks committed
    assert result["rows"] == result["distinct_ids"] == 40_000 and result["id_range"] == [0, 39_999]
    assert result["sampled_vectors_equal"] == "2000 / 2000" and result["every_row_once"] is True
    assert result["rows_at_kill"] % 200 == 0  # only whole chunks survive a kill
