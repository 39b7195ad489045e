"""``matryoshka-st eval``: mteb quality at every dimension and precision. Thin wrapper around
:func:`matryoshka_st.evaluation.evaluate` and :func:`matryoshka_st.evaluation.report.render`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from matryoshka_st.evaluation.quality import PRECISIONS

DESCRIPTION = """\
Evaluate one or more models on mteb tasks at several embedding dimensions (and precisions),
encoding each text once per model. Results are mteb result JSON files under
OUTPUT/results/<model>/<revision>/experiments/embed_dim_<d>[__output_dtypes_<p>]/; finished
results are skipped unless --overwrite. The report (tables, summary.json with the recommended
dimension, plots) is then written to OUTPUT/report and its table printed.

Tasks: a BEIR folder (corpus.jsonl, queries.jsonl, qrels/test.tsv); a .jsonl file with columns
sentence1/sentence2/score (STS), sentence1/sentence2/label (pair classification), text/label
[/split] (classification) or text/cluster (clustering); KIND:PATH to name the kind; or an mteb
task name (needs the Hugging Face Hub or its datasets cache).

examples:
  matryoshka-st eval path/to/model --tasks matryoshka_st/data/dev_wordnet --output eval_out
  matryoshka-st eval base=all-MiniLM-L6-v2 tuned=out/final --tasks dev_wordnet sts.jsonl \\
      --dims 384 256 128 64 32 --precisions float32 int8 binary binary+rescore --output eval_out
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate models with mteb at every dimension and precision",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("models", nargs="+", metavar="MODEL", help="a model path or Hub id, or LABEL=PATH")
    parser.add_argument("--tasks", nargs="+", required=True, help="task folders, files, KIND:PATH or mteb names")
    parser.add_argument(
        "--dims", nargs="+", type=int, default=None, help="dims (default: full, then powers of 2 to 32)"
    )
    parser.add_argument(
        "--precisions",
        nargs="+",
        default=["float32"],
        choices=list(PRECISIONS),
        help="(default: float32). int8 uses the model's saved per-shell scales where it has them; binary+rescore "
        "shortlists 40 documents per query by Hamming distance and rescores them with the float query; "
        "binary+int8-rescore rescores the same shortlist against the documents' int8 codes",
    )
    parser.add_argument("--output", required=True, type=Path, help="results folder (mteb's result cache layout)")
    parser.add_argument("--overwrite", action="store_true", help="recompute finished results")
    parser.add_argument("--batch-size", type=int, default=32, help="encoding batch size (default: 32)")
    parser.add_argument("--device", default=None, help="device for the models, e.g. cuda or cpu")
    parser.add_argument("--keep", type=float, default=0.98, help="share of the full-dim score to keep (default: 0.98)")
    parser.add_argument("--no-report", action="store_true", help="only evaluate; skip OUTPUT/report")
    parser.set_defaults(func=run)
    return parser


def parse_models(specs: list[str]) -> list[str] | dict[str, str]:
    """``["a", "b"]`` as is; ``["base=a", "tuned=b"]`` as a label mapping (all or none must be labelled)."""
    labelled = ["=" in spec and not Path(spec).exists() for spec in specs]
    if not any(labelled):
        return specs
    if not all(labelled):
        raise argparse.ArgumentTypeError(f"Label all models or none (LABEL=PATH), got {specs}.")
    return dict(spec.split("=", 1) for spec in specs)


def _remove_empty_folders(root: Path) -> None:
    """Remove the folders a refused run created and left empty (never a file)."""
    for folder in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()
    if root.is_dir() and not any(root.iterdir()):
        root.rmdir()


def interrupted(args: argparse.Namespace) -> str:
    """What Ctrl-C left: the results finished so far are kept; a rerun computes only the rest."""
    return (
        f"Finished results are kept in {args.output / 'results'}: run the same command again to compute the rest "
        "(finished ones are skipped)."
    )


def run(args: argparse.Namespace) -> int:
    from matryoshka_st.evaluation import evaluate
    from matryoshka_st.evaluation.report import render

    created = not args.output.exists()
    try:
        runs = evaluate(
            parse_models(args.models),
            args.tasks,
            dims=args.dims,
            precisions=args.precisions,
            output_folder=args.output,
            overwrite=args.overwrite,
            batch_size=args.batch_size,
            device=args.device,
        )
    except (ValueError, OSError, argparse.ArgumentTypeError) as error:  # OSError: missing files, models, network
        if created:
            _remove_empty_folders(args.output)
        print(f"matryoshka-st eval: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    logging.getLogger(__name__).info(
        "%d results (%d finished earlier) in %s", len(runs), sum(r.skipped for r in runs), args.output / "results"
    )
    if args.no_report:
        for r in runs:
            print(f"{r.model}\t{r.task}\t{r.dim}\t{r.precision}\t{r.score:.4f}")
        return 0
    report = render([args.output / "results"], args.output / "report", keep=args.keep)
    print(report.table)
    print(f"Report written to {report.markdown.parent}")
    return 0
