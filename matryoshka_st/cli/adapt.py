"""``matryoshka-st adapt``: make a model's embeddings truncatable without training its encoder, by a PCA rotation or
a Matryoshka-Adaptor fitted on texts of the target domain. The work is done by :func:`matryoshka_st.posthoc.adapt`;
this module reads the texts file and checks the arguments before the model is loaded.

    matryoshka-st adapt sentence-transformers/all-MiniLM-L6-v2 --texts corpus.txt --method pca --output minilm-pca
    matryoshka-st adapt MODEL --texts pairs.jsonl.gz --method adaptor --dims 384 128 64 32 --output minilm-adaptor
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from matryoshka_st.readers import read_unique_texts

logger = logging.getLogger(__name__)

TEXT_FIELDS = ("text", "anchor", "positive")


def read_texts(path: str | Path, text_field: str | None = None) -> list[str]:
    """The unique non-empty texts of a ``.txt`` or ``.jsonl[.gz]`` file: ``text_field``, else ``text``, ``anchor``
    and ``positive`` (see :func:`matryoshka_st.readers.read_unique_texts`)."""
    return read_unique_texts(path, (text_field,) if text_field else TEXT_FIELDS)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "adapt",
        help="Make a model truncatable without training the encoder (PCA rotation or Matryoshka-Adaptor).",
        description="Fit a PCA rotation or a Matryoshka-Adaptor on texts of the target domain, add it to the model "
        "and save the result; it loads with a plain SentenceTransformer(DIR) and works with truncate_dim.",
    )
    parser.add_argument("model", metavar="MODEL", help="Model folder or Hub id.")
    parser.add_argument("--texts", required=True, help="Texts to fit on: .txt (one a line) or .jsonl[.gz].")
    parser.add_argument("--method", choices=["pca", "adaptor"], default="pca")
    parser.add_argument("--output", required=True, help="Folder to write the adapted model to.")
    parser.add_argument("--dims", type=int, nargs="+", default=None, help="Nested dims (the adaptor trains on them).")
    parser.add_argument("--max-texts", type=int, default=20000, help="Fit on a seeded sample of at most N texts.")
    parser.add_argument("--text-field", default=None, help="JSON field to read (default: text, anchor, positive).")
    parser.add_argument("--overwrite", action="store_true", help="Allow writing into a non-empty output folder.")
    parser.add_argument("--batch-size", type=int, default=32, help="Encoding batch size.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-center", action="store_true", help="PCA: order axes by uncentred second moment.")
    parser.add_argument("--steps", type=int, default=None, help="Adaptor: optimiser steps (default 1000).")
    parser.set_defaults(func=run)
    return parser


def interrupted(args: argparse.Namespace) -> str:
    return f"Nothing was saved to {args.output} (it is renamed into place when complete): run the same command again."


def run(args: argparse.Namespace) -> int:
    from matryoshka_st.dims import validate_dims

    try:
        texts = read_texts(args.texts, args.text_field)
        if args.dims is not None:
            validate_dims(args.dims)
        if args.max_texts is not None and args.max_texts < 2:
            raise ValueError(f"--max-texts must be >= 2, got {args.max_texts}.")
        output = Path(args.output)
        if output.exists() and (not output.is_dir() or any(output.iterdir())) and not args.overwrite:
            raise ValueError(
                f"--output {str(output)!r} exists and is not empty: choose a new folder or pass --overwrite."
            )
        kwargs = {"center": not args.no_center} if args.method == "pca" else {}
        if args.method == "adaptor" and args.steps is not None:
            kwargs["steps"] = args.steps
        logger.info("Read %d unique texts from %s.", len(texts), args.texts)

        from matryoshka_st.posthoc import adapt

        adapt(
            args.model,
            texts,
            method=args.method,
            output_dir=output,
            dims=args.dims,
            max_texts=args.max_texts,
            overwrite=args.overwrite,
            batch_size=args.batch_size,
            seed=args.seed,
            **kwargs,
        )
    except (ValueError, FileNotFoundError) as error:
        print(f"matryoshka-st adapt: error: {error}", file=sys.stderr)
        return 2
    logger.info("Wrote %s: load it with SentenceTransformer(%r, truncate_dim=...).", args.output, str(args.output))
    return 0
