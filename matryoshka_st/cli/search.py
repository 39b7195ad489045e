"""``matryoshka-st search build|query|tune``: build a funnel index from a corpus file, query it, tune its schedule
for a recall target. The work is done by :class:`matryoshka_st.search.FunnelIndex`; this module reads the files and
prints.

    matryoshka-st search build --model MODEL --corpus corpus.jsonl --output my_index --stages 64:1000,128:100
    matryoshka-st search build --corpus corpus.jsonl --output my_index --stages 64:200 --first-stage hnsw --hnsw-m 16
    matryoshka-st search build ... --output my_index --overwrite   # replace an existing index
    matryoshka-st search tune --index my_index --queries queries.jsonl --target-recall 0.99
    matryoshka-st search query --index my_index --query "how do I resize a partition" --k 5

With ``--backend pgvector --dsn ... --table NAME`` the same actions work on a PostgreSQL table instead of a folder
(see :mod:`matryoshka_st.cli._search_pgvector`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from typing import Any

from matryoshka_st.cli import _search_pgvector
from matryoshka_st.readers import check_model_folder, read_texts
from matryoshka_st.search.first_stage import FIRST_STAGES, FirstStageParams
from matryoshka_st.search.pgvector import PG_FIRST_STAGES

logger = logging.getLogger(__name__)


def parse_stages(value: str) -> list[tuple[int, int]]:
    """``"64:1000,128:100"`` -> ``[(64, 1000), (128, 100)]``."""
    try:
        return [(int(dim), int(keep)) for dim, keep in (part.split(":") for part in value.split(","))]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--stages must look like DIM:SHORTLIST[,DIM:SHORTLIST...], e.g. 64:1000,128:100; got {value!r}."
        ) from None


def parse_ints(value: str) -> list[int]:
    """``"16,32,64"`` -> ``[16, 32, 64]``."""
    try:
        return [int(part) for part in value.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 16,32,64; got {value!r}."
        ) from None


def _add_first_stage_flags(parser: argparse.ArgumentParser, build: bool) -> None:
    """HNSW / IVF parameters: all of them for ``build``; the search-time ones (a ``None`` default keeps the
    index's) for ``query``."""
    # A None default leaves the value to FirstStageParams (build) or to the saved index (query): one set of defaults.
    if build:
        parser.add_argument(
            "--hnsw-m",
            type=int,
            default=None,
            help=f"HNSW neighbours per node (FAISS M; default {FirstStageParams.hnsw_m}).",
        )
        parser.add_argument(
            "--ef-construction",
            type=int,
            default=None,
            help=f"HNSW candidate list while building (default {FirstStageParams.ef_construction}).",
        )
        parser.add_argument("--nlist", type=int, default=None, help="IVF lists (default: 4 * sqrt(N)).")
    which = f"default {FirstStageParams.ef_search}" if build else "default: the index's"
    parser.add_argument("--ef-search", type=int, default=None, help=f"HNSW candidate list while searching ({which}).")
    which = f"default {FirstStageParams.nprobe}" if build else "default: the index's"
    parser.add_argument("--nprobe", type=int, default=None, help=f"IVF lists scanned per query ({which}).")


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "search",
        help="Build and query a funnel search index (shortlist at a small dim, rerank at full).",
        description="Build a funnel index from a corpus file with a model, or query one.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    build = actions.add_parser("build", help="Encode a corpus file and write an index folder.")
    build.add_argument("--corpus", required=True, help="Corpus: .txt (one text a line) or .jsonl[.gz] (BEIR too).")
    build.add_argument("--output", default=None, help="Index folder to write (faiss backend).")
    build.add_argument("--model", default=None, help="Model path or Hub id (default: the bundled all-MiniLM-L6-v2).")
    build.add_argument("--stages", type=parse_stages, default=[(64, 1000), (128, 100)], help="DIM:SHORTLIST,...")
    build.add_argument(
        "--first-stage",
        choices=sorted({*FIRST_STAGES, *PG_FIRST_STAGES}),
        default=None,
        help="Flat: float (default), int8, binary. Sublinear: hnsw, int8_hnsw, binary_hnsw (HNSW graphs), ivf "
        "(inverted file). pgvector: hnsw (default), halfvec_hnsw, binary_hnsw.",
    )
    _add_first_stage_flags(build, build=True)
    build.add_argument("--full-dim", type=int, default=None, help="Dim of the final rerank (default: the model's).")
    build.add_argument("--text-field", default="text", help="JSON field holding the text.")
    build.add_argument("--id-field", default=None, help="JSON field holding the id (default: _id or id).")
    build.add_argument("--batch-size", type=int, default=32)
    build.add_argument("--max-seq-length", type=int, default=None)
    build.add_argument("--overwrite", action="store_true", help="Replace an index already in --output.")
    _search_pgvector.add_backend_flags(build, "build")

    query = actions.add_parser("query", help="Search an index; print or write top-k results as JSON lines.")
    query.add_argument("--index", default=None, help="Index folder written by 'search build' (faiss backend).")
    query.add_argument(
        "--model", default=None, help="Model path or Hub id (default: the one the index was built with)."
    )
    source = query.add_mutually_exclusive_group(required=True)
    source.add_argument("--queries", help="Queries file: .txt or .jsonl[.gz] (BEIR queries.jsonl too).")
    source.add_argument("--query", action="append", help="A query text; repeat for more.")
    query.add_argument("--k", type=int, default=10)
    query.add_argument("--text-field", default="text")
    query.add_argument("--output", default=None, help="Write JSON lines here instead of stdout.")
    query.add_argument("--batch-size", type=int, default=32)
    query.add_argument("--mmap", action="store_true", help="Memory-map the full-dim vectors instead of loading them.")
    query.add_argument("--stages", type=parse_stages, default=None, help="Override the index's shortlists.")
    _add_first_stage_flags(query, build=False)
    _search_pgvector.add_backend_flags(query, "query")

    tune = actions.add_parser(
        "tune", help="Pick the fastest schedule meeting a recall target on sample queries; save it in the index."
    )
    tune.add_argument("--index", default=None, help="Index folder written by 'search build' (faiss backend).")
    tune.add_argument(
        "--queries", required=True, help="Sample queries: .txt, .jsonl[.gz] (encoded with --model) or .npy vectors."
    )
    tune.add_argument("--model", default=None, help="Model for text queries (default: the index's).")
    tune.add_argument("--text-field", default="text")
    tune.add_argument("--target-recall", type=float, default=0.99, help="Recall@k against exact search to meet.")
    tune.add_argument("--k", type=int, default=10)
    tune.add_argument("--max-queries", type=int, default=1000, help="Use at most this many queries (seeded sample).")
    tune.add_argument("--holdout-fraction", type=float, default=0.5, help="Share of queries held back to report.")
    tune.add_argument(
        "--first-dims",
        type=parse_ints,
        default=None,
        help="First-stage dims to try, each rebuilt (default: the index's own, doubling, up to the full dim; HNSW "
        "and IVF stop at the first that meets the target).",
    )
    tune.add_argument("--shortlists", type=parse_ints, default=None, help="Shortlist sizes to try.")
    tune.add_argument("--ef-searches", type=parse_ints, default=None, help="HNSW efSearch values to try.")
    tune.add_argument("--nprobes", type=parse_ints, default=None, help="IVF nprobe values to try.")
    tune.add_argument("--rerank-dims", type=parse_ints, default=[], help="Intermediate rerank dims to try.")
    tune.add_argument("--output", default=None, help="Folder for the tuned index (default: overwrite --index).")
    tune.add_argument("--seed", type=int, default=0)
    _search_pgvector.add_backend_flags(tune, "tune")
    parser.set_defaults(func=run)
    return parser


def _load_model(name_or_path: str | None, max_seq_length: int | None = None):
    from sentence_transformers import SentenceTransformer

    if name_or_path is None:
        from matryoshka_st._bundled import bundled_model_path

        name_or_path = bundled_model_path()
    check_model_folder(name_or_path)
    model = SentenceTransformer(name_or_path)
    if max_seq_length:
        model.max_seq_length = max_seq_length
    return model, name_or_path


def interrupted(args: argparse.Namespace) -> str:
    if args.backend == "pgvector":
        return _search_pgvector.interrupted(args)
    if args.action == "build":
        return (
            f"No index was written to {args.output} (it is renamed into place only when complete): run the same "
            "command again."
        )
    return "Run the query again."


def run(args: argparse.Namespace) -> int:
    try:
        _search_pgvector.check_backend_flags(args)
        if args.backend == "pgvector":
            return _search_pgvector.run(args)
        where = "--output" if args.action == "build" else "--index"
        if getattr(args, where[2:]) is None:
            raise ValueError(f"{where} is required (the index folder), or pass --backend pgvector --table NAME.")
        args.first_stage = getattr(args, "first_stage", None) or "float"
        return {"build": _build, "query": _query, "tune": _tune}[args.action](args)
    except (ValueError, FileNotFoundError) as error:
        print(f"matryoshka-st search {args.action}: error: {error}", file=sys.stderr)
        return 2


def _build(args: argparse.Namespace) -> int:
    from pathlib import Path

    from matryoshka_st.search import FunnelIndex

    output = Path(args.output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not args.overwrite:
        raise ValueError(
            f"--output {args.output!r} exists and is not empty: choose a new folder, or pass --overwrite to replace "
            "it (the old index stays until the new one is complete)."
        )
    ids, texts = read_texts(args.corpus, args.text_field, args.id_field)
    flags = [field.name for field in dataclasses.fields(FirstStageParams) if field.name != "kind"]
    first_stage_flags = {flag: getattr(args, flag) for flag in flags if getattr(args, flag) is not None}
    FirstStageParams(args.first_stage, **first_stage_flags)  # a bad flag fails here, before the corpus is encoded
    model, name = _load_model(args.model, args.max_seq_length)
    index = FunnelIndex.from_model(
        model,
        texts,
        stages=args.stages,
        full_dim=args.full_dim,
        first_stage=args.first_stage,
        doc_ids=ids,
        batch_size=args.batch_size,
        model_name_or_path=name,
        **first_stage_flags,
    )
    if index.binary_calibration is not None:
        logger.info(
            "Sign bits at dims %s are taken after the prefix rotations saved with the model.",
            sorted(index.binary_calibration.rotations, reverse=True),
        )
    index.save(args.output)
    memory = index.memory_report()
    logger.info(
        "Wrote %r to %s: %.1f bytes/vector (%.1f first stage), %.1f MB.",
        index,
        args.output,
        memory.bytes_per_vector,
        memory.first_stage_bytes_per_vector,
        memory.total_bytes / 1e6,
    )
    return 0


def _query(args: argparse.Namespace) -> int:
    from matryoshka_st.search import FunnelIndex

    index = FunnelIndex.load(args.index, mmap=args.mmap)
    index.set_search_params(stages=args.stages, ef_search=args.ef_search, nprobe=args.nprobe)
    if args.query:
        query_ids, queries = [str(i) for i in range(len(args.query))], args.query
    else:
        query_ids, queries = read_texts(args.queries, args.text_field)
    model, _ = _load_model(args.model or index.model_name_or_path)
    scores, rows = index.search(queries, k=args.k, model=model, batch_size=args.batch_size, show_progress_bar=True)
    doc_ids = [[index.doc_ids[i] if index.doc_ids else int(i) for i in row_ids] for row_ids in rows]
    write_results(args.output, query_ids, queries, scores, doc_ids)
    return 0


def write_results(
    output: str | None, query_ids: list[str], queries: list[str], scores: Any, doc_ids: list[list[Any]]
) -> None:
    """One JSON line per query (``query_id``, ``query``, ``ids``, ``scores``) to ``output``, else stdout."""
    out = open(output, "w", encoding="utf-8") if output else sys.stdout
    try:
        for query_id, text, row_scores, row_doc_ids in zip(query_ids, queries, scores, doc_ids):
            record = {
                "query_id": query_id,
                "query": text,
                "ids": list(row_doc_ids),
                "scores": [round(float(s), 6) for s in row_scores],
            }
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    if output:
        logger.info("Wrote results for %d queries to %s.", len(queries), output)


def tune_queries(args: argparse.Namespace) -> Any:
    """``search tune``'s queries: a ``.npy`` of embeddings or the texts of a file, at most ``--max_queries`` of them
    (a seeded sample, in file order)."""
    import numpy as np

    if str(args.queries).endswith(".npy"):
        queries = np.load(args.queries)
    else:
        queries = read_texts(args.queries, args.text_field)[1]
    if args.max_queries < len(queries):
        keep = np.sort(np.random.default_rng(args.seed).choice(len(queries), args.max_queries, replace=False))
        queries = queries[keep] if isinstance(queries, np.ndarray) else [queries[i] for i in keep]
    return queries


def _tune(args: argparse.Namespace) -> int:
    import numpy as np

    from matryoshka_st.search import FunnelIndex

    index = FunnelIndex.load(args.index)
    queries, model = tune_queries(args), None
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
        nprobes=args.nprobes,
        rerank_dims=args.rerank_dims,
        model=model,
        seed=args.seed,
    )
    index.save(args.output or args.index)
    summary = {name: value for name, value in result.to_dict().items() if name != "candidates"}
    print(json.dumps(summary, indent=2))
    logger.info(
        "Kept stages %s (ef_search %s, nprobe %s): recall@%d %.4f on %d held-back queries (target %.3f), %.0f q/s, "
        "p50 %.2f ms, p99 %.2f ms; wrote %s.",
        result.stages,
        result.ef_search,
        result.nprobe,
        result.k,
        result.holdout_recall,
        result.num_holdout_queries,
        result.target_recall,
        result.holdout_speed.queries_per_second,
        result.holdout_speed.latency_p50_ms,
        result.holdout_speed.latency_p99_ms,
        args.output or args.index,
    )
    return 0
