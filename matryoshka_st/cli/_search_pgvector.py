"""``matryoshka-st search build|query|tune --backend pgvector``: the same three actions on a PostgreSQL table
(:class:`matryoshka_st.search.pgvector.PgvectorIndex`). ``cli/search.py`` adds these flags and hands over; this
module reads the files and prints. The DSN comes from ``--dsn`` or the standard ``PG*`` environment variables; a
password never appears in what it prints.

    matryoshka-st search build --backend pgvector --dsn postgresql://app@db/search --table docs \\
        --corpus corpus.jsonl --stages 64:200 --first-stage hnsw
    matryoshka-st search tune --backend pgvector --table docs --queries queries.jsonl --target-recall 0.99
    matryoshka-st search query --backend pgvector --table docs --query "how do I resize a partition" --k 5
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from matryoshka_st.readers import read_texts

logger = logging.getLogger(__name__)

BACKENDS = ("faiss", "pgvector")
_FAISS_ONLY = {"build": ("output", "nlist", "nprobe"), "query": ("nprobe", "mmap"), "tune": ("nprobes", "output")}
_PGVECTOR_ONLY = ("vector_type", "chunk_rows", "maintenance_work_mem")


def add_backend_flags(parser: argparse.ArgumentParser, action: str) -> None:
    """``--backend``, ``--dsn``, ``--table`` for every action; the pgvector build flags for ``build``."""
    group = parser.add_argument_group("database backend (--backend pgvector)")
    group.add_argument(
        "--backend", choices=BACKENDS, default="faiss", help="faiss: an index folder; pgvector: a PostgreSQL table."
    )
    group.add_argument(
        "--dsn",
        default=None,
        help="libpq connection string or URI (default: the PG* environment variables; PGPASSWORD keeps a password "
        "out of the command line).",
    )
    group.add_argument("--table", default=None, help="Table holding the vectors (lower-case SQL name).")
    if action == "build":
        group.add_argument(
            "--vector-type", choices=("vector", "halfvec"), default=None, help="Stored full vectors (default vector)."
        )
        group.add_argument("--chunk-rows", type=int, default=None, help="Rows per COPY transaction (default 10000).")
        group.add_argument(
            "--maintenance-work-mem", default=None, help="maintenance_work_mem for the HNSW build, e.g. 2GB."
        )


def check_backend_flags(args: argparse.Namespace) -> None:
    """Flags that belong to the other backend fail here, naming the flag, before anything is read."""
    pgvector = args.backend == "pgvector"
    for name in _FAISS_ONLY[args.action] if pgvector else ():
        if getattr(args, name, None) not in (None, False):
            raise ValueError(
                f"--{name.replace('_', '-')} is for the faiss backend; --backend pgvector has no such flag."
            )
    for name in () if pgvector else (*_PGVECTOR_ONLY, "dsn", "table"):
        if getattr(args, name, None) is not None:
            raise ValueError(f"--{name.replace('_', '-')} needs --backend pgvector.")
    if pgvector and not args.table:
        raise ValueError("--backend pgvector needs --table NAME (the table to build or search).")


def interrupted(args: argparse.Namespace) -> str:
    if args.action == "build":
        return (
            f"Every chunk copied into table {args.table!r} so far is committed: run the same command again to load "
            "the rest (no row is loaded twice)."
        )
    return "Nothing in the table was changed; run the command again."


def run(args: argparse.Namespace) -> int:
    from matryoshka_st.search.pgvector import PgvectorError

    try:
        return {"build": _build, "query": _query, "tune": _tune}[args.action](args)
    except (ValueError, FileNotFoundError, PgvectorError) as error:
        # The library already removed any password from its messages; a file or flag error carries none.
        print(f"matryoshka-st search {args.action}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2


def _build(args: argparse.Namespace) -> int:
    from matryoshka_st.cli.search import _load_model
    from matryoshka_st.search.pgvector import PgvectorIndex, PgvectorParams, validate_pg_stages

    ids, texts = read_texts(args.corpus, args.text_field, args.id_field)
    options = {name: getattr(args, name) for name in ("hnsw_m", "ef_construction", "ef_search")}
    options = {name: value for name, value in options.items() if value is not None}
    first_stage = args.first_stage or "hnsw"
    params = PgvectorParams(first_stage, **options)  # bad flags fail here, before the model loads
    if args.full_dim is not None:
        validate_pg_stages(args.stages, args.full_dim, params.kind)
    model, name = _load_model(args.model, args.max_seq_length)
    extra = {"vector_type": args.vector_type, "chunk_rows": args.chunk_rows}
    index = PgvectorIndex.from_model(
        model,
        texts,
        stages=args.stages,
        full_dim=args.full_dim,
        first_stage=first_stage,
        doc_ids=ids,
        batch_size=args.batch_size,
        model_name_or_path=name,
        table=args.table,
        dsn=args.dsn,
        overwrite=args.overwrite,
        maintenance_work_mem=args.maintenance_work_mem,
        **{key: value for key, value in extra.items() if value is not None},
        **options,
    )
    memory = index.memory_report()
    logger.info(
        "Table %r ready: %d vectors, %.1f bytes/vector (%.1f first-stage index), %.1f MB.",
        index.table,
        len(index),
        memory.bytes_per_vector,
        memory.first_stage_bytes_per_vector,
        memory.total_bytes / 1e6,
    )
    index.close()
    return 0


def _query(args: argparse.Namespace) -> int:
    from matryoshka_st.cli.search import _load_model
    from matryoshka_st.search.pgvector import PgvectorIndex

    if args.query:
        query_ids, queries = [str(i) for i in range(len(args.query))], args.query
    else:
        query_ids, queries = read_texts(args.queries, args.text_field)
    with PgvectorIndex.load(args.dsn, args.table) as index:
        index.set_search_params(stages=args.stages, ef_search=args.ef_search)
        model, _ = _load_model(args.model or index.model_name_or_path)
        scores, rows = index.search(queries, k=args.k, model=model, batch_size=args.batch_size, show_progress_bar=True)
        doc_ids = index.doc_ids_of(rows)
    from matryoshka_st.cli.search import write_results

    write_results(args.output, query_ids, queries, scores, doc_ids)
    return 0


def _tune(args: argparse.Namespace) -> int:
    import numpy as np

    from matryoshka_st.cli.search import _load_model, tune_queries
    from matryoshka_st.search.pgvector import PgvectorIndex

    queries = tune_queries(args)
    with PgvectorIndex.load(args.dsn, args.table) as index:
        model = None
        if not isinstance(queries, np.ndarray):
            model, _ = _load_model(args.model or index.model_name_or_path)
        result = index.tune(
            queries,
            target_recall=args.target_recall,
            k=args.k,
            holdout_fraction=args.holdout_fraction,
            first_dims=args.first_dims,
            shortlists=args.shortlists,
            ef_searches=args.ef_searches,
            rerank_dims=args.rerank_dims,
            model=model,
            seed=args.seed,
        )
    summary = {name: value for name, value in result.to_dict().items() if name != "candidates"}
    print(json.dumps(summary, indent=2))
    logger.info(
        "Kept stages %s (ef_search %s): recall@%d %.4f on %d held-back queries (target %.3f), %.0f q/s, p50 %.2f ms, "
        "p99 %.2f ms; stored as the schedule of table %r.",
        result.stages,
        result.ef_search,
        result.k,
        result.holdout_recall,
        result.num_holdout_queries,
        result.target_recall,
        result.holdout_speed.queries_per_second,
        result.holdout_speed.latency_p50_ms,
        result.holdout_speed.latency_p99_ms,
        args.table,
    )
    return 0
