"""``matryoshka-st train``: fine-tune with the Matryoshka loss. Thin wrapper around
:func:`matryoshka_st.training.run`; the flags are the fields of the ``HfArgumentParser`` dataclasses in
:mod:`matryoshka_st.training.arguments`."""

from __future__ import annotations

import argparse
import logging
import sys

DESCRIPTION = """\
Fine-tune a sentence-transformers model so that its embeddings still work when cut to their first
dims (Matryoshka Representation Learning). With no data arguments, fine-tunes the bundled
all-MiniLM-L6-v2 on the shipped sample and prints nDCG@10 at every dim before and after.

A YAML/JSON config file (positional or --config) may hold any flag below, without the dashes;
flags on the command line override it. Runs unchanged under `accelerate launch -m matryoshka_st train`
and `torchrun --nproc_per_node N -m matryoshka_st train`.

examples:
  matryoshka-st train
  matryoshka-st train --train_data pairs.jsonl --output_dir out --max_steps 1000 --eval_size 0.05
  matryoshka-st train examples/configs/minilm_default.yaml --learning_rate 5e-5
"""

logger = logging.getLogger(__name__)

_INTERNAL = {"func", "command", "config", "config_file", "help"}


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from matryoshka_st.training.arguments import build_parser

    parser = subparsers.add_parser(
        "train",
        parents=[build_parser(add_help=False)],
        help="fine-tune a model with the Matryoshka loss",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config_file", nargs="?", default=None, help="A YAML or JSON file of flags (optional).")
    parser.add_argument("--config", default=None, help="Same as the positional config file.")
    # Only flags actually given reach the namespace, so that they (and only they) override the config file.
    for action in parser._actions:
        if action.dest in _INTERNAL or action.default is argparse.SUPPRESS:
            continue
        if action.help and "%(default)" not in action.help and action.default not in (None, [], {}):
            action.help = f"{action.help} (default: {action.default})"
        action.help = (action.help or "").replace("%", "%%")
        action.default = argparse.SUPPRESS
    parser.set_defaults(func=run)
    return parser


def _set_log_levels(config) -> None:
    # The per-dim evaluators log ten lines each; the table printed at the end summarises them.
    logging.getLogger("sentence_transformers.sentence_transformer.evaluation").setLevel(logging.WARNING)
    # Only the main process logs; the others keep warnings and errors.
    if config.training.process_index != 0:
        import datasets
        import transformers

        logging.getLogger().setLevel(logging.WARNING)
        transformers.utils.logging.set_verbosity_warning()
        datasets.utils.logging.set_verbosity_warning()


def run(args: argparse.Namespace) -> int:
    from matryoshka_st.training import ConfigError, DataError, NonFiniteLossError, parse_config
    from matryoshka_st.training import run as run_training

    given = {key: value for key, value in vars(args).items() if key not in _INTERNAL}
    if args.config and args.config_file:
        print("error: give the config file once, either positional or with --config.", file=sys.stderr)
        return 2
    try:
        config = parse_config(given, args.config or args.config_file)
        _set_log_levels(config)
        result = run_training(config)
    except (ConfigError, DataError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except NonFiniteLossError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if config.training.process_index != 0:
        return 0
    if result.scores_after:
        metric = (result.metric or "").format(dim="<dim>")
        print(f"\n{metric} by dimension (base model vs fine-tuned, {result.global_step} steps):\n")
        print(result.table())
        print(f"\nrecommended truncate_dim: {result.recommended_truncate_dim}")
    print(f"\nsaved to {result.model_path}")
    print(
        "use it: SentenceTransformer(path).encode(texts, truncate_dim="
        f"{result.recommended_truncate_dim or min(result.dims)})"
    )
    if config.default_job:
        _default_job_report(config, result)
    return 0


def interrupted(args: argparse.Namespace) -> str:
    """What Ctrl-C left in the output folder, and how to continue."""
    from pathlib import Path

    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

    output_dir = getattr(args, "output_dir", None)
    if output_dir is None:
        try:
            from matryoshka_st.training import parse_config

            output_dir = parse_config(
                {k: v for k, v in vars(args).items() if k not in _INTERNAL}, args.config or args.config_file
            ).training.output_dir
        except Exception:
            return "Checkpoints, if any, are in the output folder; resume with --resume_from_checkpoint latest."
    last = get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None
    if last is None:
        return f"No {PREFIX_CHECKPOINT_DIR}-* was saved in {output_dir}: run the same command again to start over."
    return (
        f"The last checkpoint is {last}: add --resume_from_checkpoint latest to the same command to continue "
        "(the resumed run gives the same weights)."
    )


def _default_job_report(config, result) -> None:
    """The embedded default job ends with the MTEB report (tables, plots) of base vs fine-tuned on the dev set.

    Skipped with a warning where mteb is not installed (e.g. a bare GPU image): the model is trained and saved.
    """
    try:
        from matryoshka_st.evaluation import compare
    except ImportError as error:
        logger.warning("Skipping the MTEB report of the default job: %s. Install mteb to get it.", error)
        return
    from pathlib import Path

    from sentence_transformers import SentenceTransformer

    from matryoshka_st._bundled import SAMPLE_DEV_RETRIEVAL, bundled_model_path

    models = {"base": bundled_model_path(), "fine-tuned": result.model_path}
    loaded = {}
    for label, path in models.items():
        loaded[label] = SentenceTransformer(path, device="cpu")
        # both read the same number of tokens, so the comparison is about the weights only
        loaded[label].max_seq_length = config.model.max_seq_length or loaded[label].max_seq_length
    output_dir = Path(config.training.output_dir) / "eval"
    report = compare(loaded, SAMPLE_DEV_RETRIEVAL, dims=result.dims, output_dir=output_dir)
    print(f"\nMTEB report, base vs fine-tuned on the shipped dev set ({output_dir / 'report'}):\n")
    print(report.table)
