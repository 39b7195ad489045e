"""``matryoshka-st push``: publish a model with its Matryoshka model card. Thin wrapper around
:func:`matryoshka_st.hub.push`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DESCRIPTION = """\
Upload a model folder to the Hugging Face Hub (create_repo + upload_folder) with a model card:
sentence-transformers' card plus a Matryoshka section (quality at each dimension from
`matryoshka-st eval` results, bytes per vector, the recommended dimension, truncate_dim usage, a
plot) and Hub metadata (tags, base model, datasets, licence, per-dimension model-index).

The token comes from HF_TOKEN or `hf auth login`; it is never written to a file or a log.
--dry-run writes exactly the folder that would be uploaded (to DIR, or ./<name>-upload) and lists
it; nothing is uploaded and no token is needed.

examples:
  matryoshka-st push output/matryoshka-minilm/final --repo-id you/minilm-matryoshka \\
      --results eval_out --base-model sentence-transformers/all-MiniLM-L6-v2 --license apache-2.0 --dry-run preview
  matryoshka-st push output/matryoshka-minilm/final --repo-id you/minilm-matryoshka --results eval_out --private
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "push",
        help="publish a model on the Hugging Face Hub with a Matryoshka model card",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model_dir", metavar="MODEL_DIR", type=Path, help="the saved model folder")
    parser.add_argument("--repo-id", required=True, help="OWNER/NAME on the Hub")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--revision", default=None, help="branch to push to (created if missing)")
    parser.add_argument(
        "--dry-run",
        nargs="?",
        const=True,
        default=False,
        metavar="DIR",
        help="write the upload folder to DIR (default ./<name>-upload) and list it; upload nothing",
    )
    parser.add_argument("--results", nargs="+", type=Path, default=None, help="`matryoshka-st eval` output folders")
    parser.add_argument("--results-model", default=None, help="the model's label in --results when it holds several")
    parser.add_argument("--keep", type=float, default=0.98, help="share of the full-dim score to keep (default: 0.98)")
    parser.add_argument("--base-model", default=None, help="Hub id of the model this one was fine-tuned from")
    parser.add_argument(
        "--dataset", dest="datasets", action="append", default=None, help="Hub dataset id (repeatable)"
    )
    parser.add_argument("--license", default=None, help="licence id, e.g. apache-2.0")
    parser.add_argument("--language", action="append", default=None, help="ISO language code (repeatable)")
    parser.add_argument("--model-name", default=None, help="card title (default: the repository name)")
    parser.add_argument("--commit-message", default=None, help="commit title")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from huggingface_hub.errors import HfHubHTTPError

    from matryoshka_st.hub import CardError, PushError, push
    from matryoshka_st.hub.push import DEFAULT_COMMIT_MESSAGE

    try:
        result = push(
            args.model_dir,
            args.repo_id,
            private=args.private,
            revision=args.revision,
            dry_run=args.dry_run,
            commit_message=args.commit_message or DEFAULT_COMMIT_MESSAGE,
            results=args.results,
            results_model=args.results_model,
            keep=args.keep,
            base_model=args.base_model,
            datasets=args.datasets,
            license=args.license,
            language=args.language[0] if args.language and len(args.language) == 1 else args.language,
            model_name=args.model_name,
        )
    except (PushError, CardError) as error:
        print(f"matryoshka-st push: error: {error}", file=sys.stderr)
        return 2
    except HfHubHTTPError as error:
        print(f"matryoshka-st push: the Hub refused the upload: {error}", file=sys.stderr)
        return 1
    if result.dry_run:
        print(f"Dry run: nothing uploaded. {len(result.files)} files for {result.repo_id} written to {result.folder}:")
        for name in result.files:
            size = (result.folder / name).stat().st_size
            print(f"  {name}  ({size:,} bytes)")
    else:
        print(f"Pushed {len(result.files)} files to https://huggingface.co/{result.repo_id}")
        print(f"commit: {result.url}")
    return 0
