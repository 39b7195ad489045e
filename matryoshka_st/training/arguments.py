"""Configuration of ``matryoshka-st train``: dataclasses parsed by ``transformers.HfArgumentParser``.

Four groups: :class:`ModelArguments`, :class:`DataArguments`, :class:`MatryoshkaArguments` and
:class:`TrainingArguments` (``SentenceTransformerTrainingArguments`` plus ``overwrite_output_dir``, which
transformers v5 dropped). One YAML or JSON file may hold any of their fields, flat; explicit values (command-line
flags) override the file. Written here: only the merge order (defaults < embedded default job < file < flags) and
the default job itself; parsing and type conversion are ``HfArgumentParser``'s.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Optional, Union

import torch
from sentence_transformers import SentenceTransformerTrainingArguments
from transformers import HfArgumentParser

from matryoshka_st._bundled import SAMPLE_DEV_RETRIEVAL, SAMPLE_PAIRS
from matryoshka_st.dims import validate_dims
from matryoshka_st.recipes import DEFAULT_RECIPE, RECIPES, Recipe, get_recipe

DEFAULT_JOB_OUTPUT_DIR = os.path.join("output", "matryoshka-minilm")


class ConfigError(ValueError):
    """A configuration file or value that cannot be used; the message names it and says how to fix it."""


@dataclass
class ModelArguments:
    """Which model to fine-tune."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A local SentenceTransformer/transformers folder or a Hugging Face Hub id. "
            "Default: the bundled all-MiniLM-L6-v2."
        },
    )
    max_seq_length: int | None = field(
        default=None, metadata={"help": "Truncate inputs to this many tokens. Default: the model's own limit."}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the Hub."})
    base_model: str | None = field(
        default=None,
        metadata={
            "help": "The Hub id the model card names as the base model (sentence-transformers fills it in itself "
            "when --model_name_or_path is a Hub id)."
        },
    )
    license: str | None = field(
        default=None, metadata={"help": "The licence id the model card states, e.g. apache-2.0."}
    )
    language: list[str] | None = field(default=None, metadata={"help": "The language codes the model card states."})


@dataclass
class DataArguments:
    """Training and evaluation data."""

    train_data: str | None = field(
        default=None,
        metadata={
            "help": "A .jsonl/.json/.csv/.tsv/.parquet file (optionally .gz), a folder of such files, or a Hub "
            "dataset name. Default (no data given): the shipped sample of pairs, i.e. the embedded default job."
        },
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    train_split: str = field(default="train", metadata={"help": "Split of a Hub dataset to train on."})
    eval_data: str | None = field(
        default=None, metadata={"help": "Evaluation data: a file, folder or Hub dataset with the training columns."}
    )
    eval_split: str | None = field(
        default=None, metadata={"help": "Split of the (train or eval) Hub dataset to evaluate on, e.g. 'validation'."}
    )
    eval_size: float = field(
        default=0.0,
        metadata={
            "help": "Hold out this part of the training data for evaluation: a fraction in (0, 1) or a number of "
            "rows (>= 1). 0 holds out nothing."
        },
    )
    group_by: str | None = field(
        default=None,
        metadata={
            "help": "A column naming each row's source, e.g. 'source': the training rows are split by its values "
            "into one dataset per source, and every batch draws from one of them (sentence-transformers' "
            "multi-dataset training; --multi_dataset_batch_sampler sets the mix, proportional by default), so "
            "in-batch negatives come from the same source. Held-out rows (eval_size) stay one set."
        },
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use at most this many training rows."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use at most this many evaluation rows."})
    column_mapping: Union[dict, str, None] = field(  # noqa: UP007 - HfArgumentParser needs typing.Union here
        default=None,
        metadata={
            "help": 'Rename columns before use, as JSON (\'{"question": "anchor", "answer": "positive"}\') '
            "or old=new pairs ('question=anchor,answer=positive')."
        },
    )
    eval_retrieval: str | None = field(
        default=None,
        metadata={
            "help": "A retrieval set in BEIR layout (corpus.jsonl, queries.jsonl, qrels/test.tsv) evaluated with "
            "nDCG@10 at every Matryoshka dim."
        },
    )
    eval_sts: str | None = field(
        default=None,
        metadata={"help": "A file with sentence1, sentence2, score columns evaluated (Spearman) at every dim."},
    )


@dataclass
class MatryoshkaArguments:
    """The loss, the nested dimensions and how they are evaluated."""

    loss: str | None = field(
        default=None,
        metadata={
            "help": "A sentence-transformers loss class name, e.g. MultipleNegativesRankingLoss. Default: chosen "
            "from the columns. Always wrapped in MatryoshkaLoss."
        },
    )
    loss_kwargs: Union[dict, str, None] = field(  # noqa: UP007 - HfArgumentParser needs typing.Union here
        default=None, metadata={"help": "Keyword arguments of the loss as JSON, e.g. '{\"scale\": 30}'."}
    )
    matryoshka_dims: list[int] | None = field(
        default=None,
        metadata={"help": "Nested dimensions, e.g. 384 256 128 64 32. Default: the full dim and powers of two >= 32."},
    )
    matryoshka_weights: list[float] | None = field(
        default=None, metadata={"help": "One weight per dimension. Default: 1 each."}
    )
    n_dims_per_step: int = field(
        default=-1, metadata={"help": "Train on this many randomly drawn dims per step; -1 trains on all."}
    )
    head_mode: Literal["separate", "shared"] = field(
        default="separate",
        metadata={"help": "For losses with a classifier head: a head per dim (MRL) or one sliced head (MRL-E)."},
    )
    recipe: str = field(
        default=DEFAULT_RECIPE,
        metadata={
            "help": f"The training recipe (matryoshka_st.recipes): one of {sorted(RECIPES)}. Default "
            f"{DEFAULT_RECIPE!r}: PCA start, full dim at 0.4 of the loss weight, self-distillation from the full "
            "dim, PCA rotation after training. 'reference' trains exactly as sentence-transformers' MatryoshkaLoss."
        },
    )
    init: Optional[Literal["none", "pca"]] = field(  # noqa: UP045 - HfArgumentParser needs typing.Optional here
        default=None,
        metadata={
            "help": "Start from a PCA-rotated model (matryoshka_st.posthoc.add_pca_rotation) fitted on embeddings of "
            "the training texts: coordinates ordered by variance, full-dim similarities unchanged. Default: the "
            "recipe's."
        },
    )
    distill_weight: Optional[float] = field(  # noqa: UP045
        default=None,
        metadata={"help": "Self-distillation weight lambda (0 turns it off). Default: the recipe's."},
    )
    distill_temperature: Optional[float] = field(  # noqa: UP045
        default=None, metadata={"help": "Self-distillation temperature tau. Default: the recipe's."}
    )
    full_dim_share: Optional[float] = field(  # noqa: UP045
        default=None,
        metadata={"help": "The full dim's share of the total loss weight, in (0, 1). Default: the recipe's."},
    )
    pca_after: Optional[bool] = field(  # noqa: UP045
        default=None,
        metadata={
            "help": "Rotate the trained model by PCA on the training texts before saving. Default: the recipe's."
        },
    )
    shell_rotation: Optional[Literal["none", "itq", "hadamard"]] = field(  # noqa: UP045
        default=None,
        metadata={
            "help": "After training (and --pca_after), rotate inside each Matryoshka shell (itq: fitted on the "
            "training texts; hadamard: random): float scores at every trained dim unchanged, sign bits balanced "
            "for binary codes. Default: the recipe's."
        },
    )
    quant_weight: Optional[float] = field(  # noqa: UP045
        default=None,
        metadata={
            "help": "Quantization-aware training: weight of the inner loss on straight-through fake-quantized "
            "prefixes (0 turns it off; matryoshka_st.losses.quant). Default: the recipe's."
        },
    )
    quant_precision: Optional[Literal["binary", "int8"]] = field(  # noqa: UP045
        default=None, metadata={"help": "With --quant_weight: the codes trained for, binary or int8."}
    )
    quant_dims: Optional[list[int]] = field(  # noqa: UP045
        default=None, metadata={"help": "With --quant_weight: the dims with a quantized term (default: every dim)."}
    )
    quant_warmup: Optional[int] = field(  # noqa: UP045
        default=None, metadata={"help": "With --quant_weight: steps before the quantized terms start."}
    )
    init_texts: int = field(
        default=5000,
        metadata={
            "help": "How many training texts to fit the PCA and shell rotations and the int8 scales (saved in "
            "matryoshka_config.json) on."
        },
    )
    gather_across_devices: bool = field(
        default=False,
        metadata={"help": "Gather in-batch negatives across processes (losses that support it, e.g. MNRL)."},
    )
    best_model_dim: int | None = field(
        default=None,
        metadata={
            "help": "Keep the checkpoint that scores best at this dim (sets metric_for_best_model and "
            "load_best_model_at_end). Needs an evaluator and matching eval/save strategies."
        },
    )
    recommend_threshold: float = field(
        default=0.98,
        metadata={
            "help": "The recommended truncate_dim written into the model is the smallest dim scoring at least this "
            "fraction of the full dim's score on the evaluator."
        },
    )
    evaluate_before_training: bool = field(
        default=True, metadata={"help": "Evaluate the base model at every dim before training, for comparison."}
    )

    def resolved_recipe(self) -> Recipe:
        """The recipe named by ``recipe`` with the explicitly set fields (``init``, ``distill_weight``, ...)
        replacing its own."""
        return get_recipe(self.recipe).with_overrides(
            init=self.init,
            distill_weight=self.distill_weight,
            distill_temperature=self.distill_temperature,
            full_dim_share=self.full_dim_share,
            pca_after=self.pca_after,
            shell_rotation=self.shell_rotation,
            quant_weight=self.quant_weight,
            quant_precision=self.quant_precision,
            quant_dims=tuple(self.quant_dims) if self.quant_dims else None,
            quant_warmup=self.quant_warmup,
        )

    def __post_init__(self) -> None:
        # dims against the model, n_dims_per_step and head_mode are checked by MatryoshkaLoss, their authority
        if self.matryoshka_dims is not None:
            try:
                validate_dims(self.matryoshka_dims, None, self.matryoshka_weights)
            except ValueError as error:
                raise ConfigError(str(error)) from error
        elif self.matryoshka_weights is not None:
            raise ConfigError("--matryoshka_weights needs --matryoshka_dims: give one weight per dim.")
        try:
            self.resolved_recipe()
        except ValueError as error:
            raise ConfigError(f"--{str(error)}" if not str(error).startswith("Unknown") else str(error)) from error
        if self.init_texts < 2:
            raise ConfigError(f"--init_texts must be at least 2, got {self.init_texts}.")
        if not 0 < self.recommend_threshold <= 1:
            raise ConfigError(f"recommend_threshold must be in (0, 1], got {self.recommend_threshold}.")


@dataclass
class TrainingArguments(SentenceTransformerTrainingArguments):
    """``SentenceTransformerTrainingArguments`` plus ``overwrite_output_dir``."""

    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Train even if output_dir already holds a model or checkpoints: the final model is replaced "
            "and the old checkpoints are deleted once the new run saves its first checkpoint (restored if it fails "
            "before that)."
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        # torch's optimizers reject these only at the first step, after the model has loaded
        if self.learning_rate < 0:
            raise ConfigError(f"--learning_rate must be >= 0, got {self.learning_rate}.")
        if self.weight_decay < 0:
            raise ConfigError(f"--weight_decay must be >= 0, got {self.weight_decay}.")


ARGUMENT_CLASSES = (ModelArguments, DataArguments, MatryoshkaArguments, TrainingArguments)


@dataclass
class TrainConfig:
    """Everything one training run needs. Build it with :func:`parse_config`."""

    model: ModelArguments
    data: DataArguments
    matryoshka: MatryoshkaArguments
    training: TrainingArguments
    explicit: frozenset[str] = frozenset()  # the keys set by a file, by flags or by the default job
    default_job: bool = False  # no training data was given: the bundled model on the shipped sample

    def __post_init__(self) -> None:
        training = self.training
        if self.matryoshka.best_model_dim is None:
            return
        if training.eval_strategy == "no":
            raise ConfigError(
                "--best_model_dim needs evaluation during training: set --eval_strategy steps (or epoch)."
            )
        if training.save_strategy != training.eval_strategy or (
            training.eval_strategy == "steps" and training.save_steps % training.eval_steps
        ):
            raise ConfigError(
                "--best_model_dim needs save_strategy == eval_strategy and save_steps a multiple of eval_steps."
            )


def build_parser(**kwargs: Any) -> HfArgumentParser:
    """The ``HfArgumentParser`` of all four argument groups (``kwargs`` go to ``argparse.ArgumentParser``)."""
    return HfArgumentParser(ARGUMENT_CLASSES, **kwargs)


def field_names() -> set[str]:
    return {f.name for cls in ARGUMENT_CLASSES for f in fields(cls) if f.init}


def default_job_settings() -> dict[str, Any]:
    """The embedded default job: all-MiniLM-L6-v2 on the shipped pairs (written out in
    ``examples/configs/minilm_default.yaml``).

    It writes to ``output/matryoshka-minilm`` and may replace what an earlier default job left there (the job
    is deterministic); an explicit ``output_dir`` is protected as usual.
    """
    return {
        "train_data": str(SAMPLE_PAIRS),
        "max_train_samples": 1200,
        "init_texts": 1000,  # the PCA rotations (default recipe) encode these twice; 1,000 keep the job short
        "eval_retrieval": str(SAMPLE_DEV_RETRIEVAL),
        "max_seq_length": 64,
        "output_dir": DEFAULT_JOB_OUTPUT_DIR,
        "overwrite_output_dir": True,
        "num_train_epochs": 1,
        "per_device_train_batch_size": 32,
        "learning_rate": 1e-4,
        "warmup_steps": 0.1,
        "logging_steps": 10,
        "save_strategy": "no",
        "seed": 42,
        "batch_sampler": "no_duplicates",
        "dataloader_pin_memory": torch.cuda.is_available(),
    }


def launched_processes() -> int:
    """The number of processes torchrun / accelerate launch started (1 for a plain run)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def parse_config(
    overrides: Mapping[str, Any] | None = None, config_file: str | os.PathLike | None = None
) -> TrainConfig:
    """Merge defaults, the embedded default job, a config file and explicit values into a :class:`TrainConfig`.

    Args:
        overrides: argument names to values, e.g. parsed command-line flags; they win over the file.
        config_file: a flat YAML or JSON file of argument names to values.

    Raises:
        ConfigError: on a malformed file, an unknown key or a value the dataclasses reject.

    Example:
        >>> config = parse_config({"train_data": "pairs.jsonl", "output_dir": "out", "max_steps": 100})
        >>> config.training.max_steps
        100
    """
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - field_names())
    if unknown:
        raise ConfigError(f"Unknown arguments {unknown}: see 'matryoshka-st train --help' for the valid names.")
    from matryoshka_st.training.config_file import load_config_file  # it builds this module's parser

    from_file = load_config_file(config_file) if config_file is not None else {}
    merged = {**from_file, **overrides}
    default_job = merged.get("train_data") is None
    if default_job:
        merged = {**default_job_settings(), **merged}
    if merged.get("output_dir") is None:
        model = merged.get("model_name_or_path")
        name = os.path.basename(os.path.normpath(model)) if model else "all-MiniLM-L6-v2"
        merged["output_dir"] = os.path.join("output", f"{name}-matryoshka")
    if launched_processes() > 1 and not torch.cuda.is_available() and "use_cpu" not in merged:
        # Without use_cpu, accelerate treats torchrun processes on a machine without GPUs as independent runs.
        merged["use_cpu"] = True
    try:
        values = build_parser().parse_dict(merged)
    except ConfigError:
        raise
    except (TypeError, ValueError) as error:
        raise ConfigError(f"Invalid training arguments: {error}") from error
    model, data, matryoshka, training = values
    return TrainConfig(model, data, matryoshka, training, frozenset(merged), default_job)
