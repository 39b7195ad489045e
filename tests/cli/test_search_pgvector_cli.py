"""``matryoshka-st search build/query/tune --backend pgvector`` against the real test server (tests/_postgres.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from urllib.parse import parse_qs, urlparse

import numpy as np
import psycopg
import pytest

from matryoshka_st.cli import main
from tests._postgres import with_password

SECRET = "hunter2-very-secret"
WORDS = "cat dog park stock market rain piano book tea river city night song garden bread light".split()
TEXTS = [
    f"the {WORDS[i % 16]} and the {WORDS[(3 * i + 1) % 16]} near the {WORDS[(7 * i + 5) % 16]}" for i in range(48)
]


@pytest.fixture()
def model_dir(tiny_model, tmp_path):
    tiny_model.save(str(tmp_path / "model"))
    return tmp_path / "model"


@pytest.fixture()
def corpus(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"_id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(TEXTS)), "utf-8")
    return path


def _pg_env(dsn: str) -> dict[str, str]:
    """The server of ``dsn`` as the standard PG* environment variables."""
    url = urlparse(dsn)
    return {"PGHOST": parse_qs(url.query)["host"][0], "PGUSER": url.username, "PGDATABASE": url.path.lstrip("/")}


def test_build_query_tune(tmp_path, model_dir, corpus, pg_dsn, capsys):
    dsn = with_password(pg_dsn, SECRET)  # accepted and ignored by the local server; never printed
    base = ["search", "build", "--backend", "pgvector", "--dsn", dsn, "--table", "cli_docs", "--corpus", str(corpus)]
    build = [*base, "--model", str(model_dir), "--stages", "16:40", "--hnsw-m", "8", "--ef-construction", "32"]
    assert main([*build, "--chunk-rows", "20"]) == 0
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT doc_id) FROM cli_docs").fetchone() == (48, 48)
    assert main([*build, "--chunk-rows", "20"]) == 0  # a rerun: nothing loaded twice
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM cli_docs").fetchone() == (48,)
    capsys.readouterr()

    query = ["search", "query", "--backend", "pgvector", "--dsn", dsn, "--table", "cli_docs", "--k", "3"]
    assert main([*query, "--query", TEXTS[5], "--query", TEXTS[9]]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["ids"][0] for r in records] == ["d5", "d9"]  # each text finds itself, by its corpus id
    assert all(r["scores"][0] == pytest.approx(1.0, abs=1e-4) for r in records)

    queries = tmp_path / "queries.npy"
    rng = np.random.default_rng(0)
    from sentence_transformers import SentenceTransformer

    vectors = SentenceTransformer(str(model_dir)).encode(TEXTS) + 0.05 * rng.normal(size=(48, 64))
    np.save(queries, vectors.astype(np.float32))
    tune = ["search", "tune", "--backend", "pgvector", "--dsn", dsn, "--table", "cli_docs", "--queries", str(queries)]
    assert main([*tune, "--k", "3", "--target-recall", "0.9", "--shortlists", "3,5,10,20,40"]) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert summary["tune_recall"] >= 0.9 and SECRET not in out + err
    with psycopg.connect(pg_dsn) as conn:
        stored = conn.execute("SELECT config FROM matryoshka_st_funnels WHERE table_name = 'cli_docs'").fetchone()[0]
    assert [list(s) for s in summary["stages"]] == stored["stages"]
    assert stored["first_stage"]["ef_search"] == summary["ef_search"]


def test_console_query_with_the_pg_environment(model_dir, corpus, pg_dsn):
    assert main(["search", "build", "--backend", "pgvector", "--dsn", pg_dsn, "--table", "cli_env"]
                + ["--corpus", str(corpus), "--model", str(model_dir), "--stages", "16:20"]) == 0  # fmt: skip
    env = {**os.environ, **_pg_env(pg_dsn), "PGPASSWORD": SECRET}
    result = subprocess.run(
        [sys.executable, "-m", "matryoshka_st", "search", "query", "--backend", "pgvector", "--table", "cli_env"]
        + ["--query", TEXTS[2], "--k", "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["ids"][0] == "d2"
    assert SECRET not in result.stdout + result.stderr


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--dsn", f"postgresql://app:{SECRET}@127.0.0.1:9/search"], "cannot connect to PostgreSQL at postgresql://app:***@"),
        (["--dsn", f"host=127.0.0.1 port=9 password={SECRET}"], "cannot connect to PostgreSQL at host=127.0.0.1 port=9 password=***"),
        (["--nprobe", "4"], "--nprobe is for the faiss backend"),
    ],
)  # fmt: skip
def test_errors_are_one_line_without_the_password(flags, message, capsys):
    code = main(["search", "query", "--backend", "pgvector", "--table", "cli_docs", "--query", "x", *flags])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert message in err and SECRET not in err


def test_backend_flags_are_checked(capsys):
    assert main(["search", "query", "--backend", "pgvector", "--query", "x"]) == 2
    assert "--backend pgvector needs --table NAME" in capsys.readouterr().err
    assert main(["search", "query", "--table", "docs", "--query", "x"]) == 2
    assert "--table needs --backend pgvector" in capsys.readouterr().err
    assert main(["search", "query", "--query", "x"]) == 2
    assert "--index is required" in capsys.readouterr().err
