"""``matryoshka-st adapt``: make a model's embeddings truncatable without training its encoder, by a PCA rotation or
a Matryoshka-Adaptor fitted on texts of the target domain. The work is done by :func:`matryoshka_st.posthoc.adapt`;
this module reads the texts file and checks the arguments before the model is loaded.

    matryoshka-st adapt sentence-transformers/all-MiniLM-L6-v2 --texts corpus.txt --method pca --output minilm-pca
    matryoshka-st adapt MODEL --texts pairs.jsonl.gz --method adaptor --dims 384 128 64 32 --output minilm-adaptor
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

TEXT_FIELDS = ("text", "anchor", "positive")


def read_texts(path: str | Path, text_field: str | None = None) -> list[str]:
    """The unique non-empty texts of a ``.txt`` file (one a line) or a ``.jsonl[.gz]`` file, in file order.

    JSON lines give the value of ``text_field``, or else every one of ``text``, ``anchor`` and ``positive`` that the
    row has (so a pairs file contributes both sides).

    Raises:
        FileNotFoundError: no such file.
        ValueError: an unknown extension, a malformed line, a row without a text field, or no text at all.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No such texts file: {str(path)!r}.")
    suffixes = [s for s in path.suffixes if s != ".gz"]
    kind = suffixes[-1] if suffixes else ""
    if kind not in (".txt", ".jsonl"):
        raise ValueError(f"{path} is neither .txt (one text a line) nor .jsonl[.gz] (a text field a row).")
    fields = (text_field,) if text_field else TEXT_FIELDS
    opener = gzip.open if path.suffix == ".gz" else open
    texts: dict[str, None] = {}
    with opener(path, "rt", encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            if kind == ".txt":
                texts.setdefault(line.strip(), None)
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path} line {number} is not valid JSON ({error.msg}).") from None
            values = [row[name] for name in fields if isinstance(row, dict) and name in row]
            if not values:
                found = sorted(row) if isinstance(row, dict) else type(row).__name__
                raise ValueError(
                    f"{path} line {number} has none of the fields {list(fields)} (found {found}): pass --text-field."
                )
            for value in values:
                if not isinstance(value, str):
                    raise ValueError(f"{path} line {number}: expected text, got {type(value).__name__} {value!r}.")
                if value.strip():
                    texts.setdefault(value, None)
    if not texts:
        raise ValueError(f"{path} holds no text: it must have at least one non-empty text to fit on.")
    return list(texts)


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
