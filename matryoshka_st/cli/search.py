"""``matryoshka-st search build|query``: build a funnel index from a corpus file, query it. The work is done by
:class:`matryoshka_st.search.FunnelIndex`; this module reads the files and prints.

    matryoshka-st search build --model MODEL --corpus corpus.jsonl --output my_index --stages 64:1000,128:100
    matryoshka-st search build ... --output my_index --overwrite   # replace an existing index
    matryoshka-st search query --index my_index --query "how do I resize a partition" --k 5
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from matryoshka_st.readers import read_texts

logger = logging.getLogger(__name__)


def parse_stages(value: str) -> list[tuple[int, int]]:
    """``"64:1000,128:100"`` -> ``[(64, 1000), (128, 100)]``."""
    try:
        return [(int(dim), int(keep)) for dim, keep in (part.split(":") for part in value.split(","))]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--stages must look like DIM:SHORTLIST[,DIM:SHORTLIST...], e.g. 64:1000,128:100; got {value!r}."
        ) from None


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "search",
        help="Build and query a funnel search index (shortlist at a small dim, rerank at full).",
        description="Build a funnel index from a corpus file with a model, or query one.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    build = actions.add_parser("build", help="Encode a corpus file and write an index folder.")
    build.add_argument("--corpus", required=True, help="Corpus: .txt (one text a line) or .jsonl[.gz] (BEIR too).")
    build.add_argument("--output", required=True, help="Index folder to write.")
    build.add_argument("--model", default=None, help="Model path or Hub id (default: the bundled all-MiniLM-L6-v2).")
    build.add_argument("--stages", type=parse_stages, default=[(64, 1000), (128, 100)], help="DIM:SHORTLIST,...")
    build.add_argument("--first-stage", choices=["float", "int8", "binary"], default="float")
    build.add_argument("--full-dim", type=int, default=None, help="Dim of the final rerank (default: the model's).")
    build.add_argument("--text-field", default="text", help="JSON field holding the text.")
    build.add_argument("--id-field", default=None, help="JSON field holding the id (default: _id or id).")
    build.add_argument("--batch-size", type=int, default=32)
    build.add_argument("--max-seq-length", type=int, default=None)
    build.add_argument("--overwrite", action="store_true", help="Replace an index already in --output.")

    query = actions.add_parser("query", help="Search an index; print or write top-k results as JSON lines.")
    query.add_argument("--index", required=True, help="Index folder written by 'search build'.")
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
    parser.set_defaults(func=run)
    return parser


def _load_model(name_or_path: str | None, max_seq_length: int | None = None):
    from sentence_transformers import SentenceTransformer

    if name_or_path is None:
        from matryoshka_st._bundled import bundled_model_path

        name_or_path = bundled_model_path()
    model = SentenceTransformer(name_or_path)
    if max_seq_length:
        model.max_seq_length = max_seq_length
    return model, name_or_path


def interrupted(args: argparse.Namespace) -> str:
    if args.action == "build":
        return (
            f"No index was written to {args.output} (it is renamed into place only when complete): run the same "
            "command again."
        )
    return "Run the query again."


def run(args: argparse.Namespace) -> int:
    try:
        return _build(args) if args.action == "build" else _query(args)
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
    if args.query:
        query_ids, queries = [str(i) for i in range(len(args.query))], args.query
    else:
        query_ids, queries = read_texts(args.queries, args.text_field)
    model, _ = _load_model(args.model or index.model_name_or_path)
    scores, rows = index.search(queries, k=args.k, model=model, batch_size=args.batch_size, show_progress_bar=True)
    out = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    try:
        for query_id, text, row_scores, row_ids in zip(query_ids, queries, scores, rows):
            doc_ids = [index.doc_ids[i] if index.doc_ids else int(i) for i in row_ids]
            record = {
                "query_id": query_id,
                "query": text,
                "ids": doc_ids,
                "scores": [round(float(s), 6) for s in row_scores],
            }
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    if args.output:
        logger.info("Wrote results for %d queries to %s.", len(queries), args.output)
    return 0
