"""One Matryoshka fine-tuning run: checks, then ``SentenceTransformerTrainer``, then an atomic save.

The training loop, checkpointing, resuming and multi-process support are ``SentenceTransformerTrainer``'s
(accelerate inside); the evaluators are in :mod:`~matryoshka_st.training.evaluators`, the callbacks in
:mod:`~matryoshka_st.training.callbacks`, the output folder and final save in
:mod:`~matryoshka_st.training.checkpoints`. :func:`run` is the sequence of steps.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, DatasetDict
from huggingface_hub import constants as hub_constants
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
from sentence_transformers.base.sampler import BatchSamplers
from transformers import TrainerCallback, TrainingArguments, set_seed

from matryoshka_st.dims import full_embedding_dim
from matryoshka_st.losses import MatryoshkaLoss
from matryoshka_st.losses.heads import HEADS_CONFIG_NAME
from matryoshka_st.metadata import MatryoshkaConfig, matryoshka_config_from_loss, write_matryoshka_config
from matryoshka_st.quantization import BinaryCalibration, Int8Calibration
from matryoshka_st.readers import FormatError, check_model_folder
from matryoshka_st.recipes import Recipe
from matryoshka_st.training._launch import log_launch
from matryoshka_st.training.arguments import ConfigError, TrainConfig, launched_processes, parse_config
from matryoshka_st.training.callbacks import NonFiniteLossError, SaveMatryoshkaExtras, StopOnNonFiniteLoss
from matryoshka_st.training.checkpoints import (
    FINAL_DIR_NAME,
    PreviousRun,
    output_contents,
    resolve_resume,
    restores_previous_run,
    save_atomically,
)
from matryoshka_st.training.data import (
    GROUPED_LOSSES,
    IN_BATCH_LOSSES,
    LOSS_REQUIREMENTS,
    DataError,
    LossSpec,
    check_group_column,
    count_labels,
    group_rows,
    infer_loss_spec,
    load_data,
    parse_mapping,
    prepare_dataset,
    rename_columns,
    resolve_loss_class,
    split_eval,
)
from matryoshka_st.training.evaluators import EvalPlan, eval_plan
from matryoshka_st.training.result import TrainResult

logger = logging.getLogger(__name__)


# -- steps ---------------------------------------------------------------------------------------------------------
def _check_environment(training: TrainingArguments) -> None:
    launched = launched_processes()
    if launched > 1 and training.world_size != launched:
        raise ConfigError(
            f"{launched} processes were launched but the trainer sees {training.world_size}: they would train "
            "independent copies. On machines without GPUs pass --use_cpu."
        )


def _check_output_dir(training: TrainingArguments, resume: str | None) -> None:
    output_dir = Path(training.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"output_dir {str(output_dir)!r} is a file, not a folder.")
    found = output_contents(output_dir)
    if found and not training.overwrite_output_dir and resume is None:
        raise ConfigError(
            f"output_dir {str(output_dir)!r} already holds {' and '.join(found)}. Pass --overwrite_output_dir to "
            "replace them, --resume_from_checkpoint latest to continue that run, or choose another --output_dir."
        )


def _load_model(config: TrainConfig) -> SentenceTransformer:
    name = config.model.model_name_or_path
    if name is None:
        from matryoshka_st._bundled import bundled_model_path

        name = bundled_model_path()
    elif not os.path.exists(name) and name.startswith((".", "/", "~")):
        raise ConfigError(f"Model folder {name!r} does not exist.")
    else:
        try:
            check_model_folder(name)
        except FormatError as error:
            raise ConfigError(f"--model_name_or_path: {error}") from None
    try:
        model = SentenceTransformer(name, trust_remote_code=config.model.trust_remote_code, device="cpu")
    except Exception as error:
        hint = (
            " HF_HUB_OFFLINE is set, so only local folders and models already in the cache can be loaded."
            if hub_constants.HF_HUB_OFFLINE and not os.path.exists(name)
            else ""
        )
        raise ConfigError(
            f"Cannot load model {name!r} as a local folder or a Hugging Face Hub id: "
            f"{type(error).__name__}: {error}.{hint}"
        ) from error
    if config.model.max_seq_length is not None:
        model.max_seq_length = config.model.max_seq_length
    # the card sentence-transformers writes is filled from model_card_data (its supported extension point)
    card_data = model.model_card_data
    if config.model.base_model:
        card_data.base_model = config.model.base_model
    elif config.model.model_name_or_path is None and card_data.base_model is None:
        # the bundled folder has no Hub id of its own; the card should name the model it is a copy of
        card_data.base_model = "sentence-transformers/all-MiniLM-L6-v2"
    if config.model.license:
        card_data.license = config.model.license
    if config.model.language:
        card_data.language = list(config.model.language)
    return model


def _pca_texts(train_dataset: Any, spec: Any, n_texts: int) -> list[str]:
    """Up to ``n_texts`` distinct training texts, column by column, to fit PCA rotations on."""
    texts: list[str] = []
    for column in spec.text_columns:
        texts.extend(str(text) for text in train_dataset[column][: n_texts - len(texts)])
        if len(texts) >= n_texts:
            break
    return list(dict.fromkeys(texts))


def _add_identity_rotation(model: SentenceTransformer) -> None:
    from matryoshka_st.posthoc.pca import insert_before_normalize, rotation_module

    insert_before_normalize(model, [rotation_module(np.eye(full_embedding_dim(model))).to(model.device)])


def _rotate_by_pca(model: SentenceTransformer, texts: list[str], when: str) -> None:
    """Rotate the model's coordinates by variance on ``texts`` (full-dim similarities unchanged); a rotation after
    training is composed into the PCA start's module, so the model keeps one rotation."""
    from matryoshka_st.posthoc import add_pca_rotation

    logger.info("Fitting a PCA rotation on %d training texts (%s).", len(texts), when)
    add_pca_rotation(model, texts=texts, batch_size=64, fold=True)


def _build_loss(model: SentenceTransformer, spec: LossSpec, config: TrainConfig, recipe: Recipe) -> MatryoshkaLoss:
    """The inner loss wrapped in ``MatryoshkaLoss``, which checks the Matryoshka arguments against the model."""
    mrl = config.matryoshka
    kwargs = dict(spec.kwargs)
    loss_class = resolve_loss_class(spec.name)
    if spec.name == "SoftmaxLoss":
        kwargs.setdefault("embedding_dimension", full_embedding_dim(model))
        kwargs.setdefault("num_labels", spec.num_labels)
    if mrl.gather_across_devices:
        import inspect

        if "gather_across_devices" in inspect.signature(loss_class.__init__).parameters:
            kwargs.setdefault("gather_across_devices", True)
        else:
            logger.warning("%s cannot gather in-batch negatives across devices; ignoring.", spec.name)
    try:
        inner = loss_class(model, **kwargs)
    except (TypeError, ValueError) as error:
        raise DataError(f"Cannot build {spec.name} with {kwargs}: {error}") from error
    try:
        return MatryoshkaLoss(
            model,
            inner,
            mrl.matryoshka_dims,
            mrl.matryoshka_weights,
            mrl.n_dims_per_step,
            mrl.head_mode,
            **recipe.loss_kwargs(),
        )
    except ValueError as error:
        raise ConfigError(str(error)) from error


def _trainer_arguments(
    config: TrainConfig, spec: LossSpec, plan: EvalPlan, dims: list[int], has_eval_data: bool
) -> TrainingArguments:
    """A copy of ``config.training`` with what the run decides (best-model metric, batch sampler) filled in."""
    training = copy.copy(config.training)
    if training.eval_strategy != "no" and plan.evaluator is None and not has_eval_data:
        raise ConfigError(
            f"--eval_strategy {training.eval_strategy.value} needs evaluation data: --eval_size, --eval_data, "
            "--eval_retrieval or --eval_sts."
        )
    best_dim = config.matryoshka.best_model_dim
    if best_dim is not None:
        if best_dim not in dims:
            raise ConfigError(f"--best_model_dim {best_dim} is not one of the dims {dims}.")
        if plan.metric is None:
            raise ConfigError("--best_model_dim needs an evaluator: --eval_retrieval, --eval_sts or an eval split.")
        training.metric_for_best_model = "eval_" + plan.metric.format(dim=best_dim)
        training.load_best_model_at_end = True
        training.greater_is_better = True
    if "batch_sampler" not in config.explicit:
        if spec.name in IN_BATCH_LOSSES:
            training.batch_sampler = BatchSamplers.NO_DUPLICATES  # a duplicate in a batch is a false negative
        elif spec.name in GROUPED_LOSSES:
            training.batch_sampler = BatchSamplers.GROUP_BY_LABEL  # batch triplet losses need same-label pairs
    return training


def _binary_pairs(train_dataset: Any, spec: Any, n_pairs: int = 1000) -> tuple[list[str], list[str]] | None:
    """Up to ``n_pairs`` (anchor, positive) training pairs to choose the binary codes on; ``None`` for data without
    unlabelled pairs (scored or labelled rows, single texts)."""
    if spec.label_column is not None or len(spec.text_columns) < 2:
        return None
    anchors, positives = (train_dataset[column][:n_pairs] for column in spec.text_columns[:2])
    return [str(t) for t in anchors], [str(t) for t in positives]


def _finish_output_space(
    model: SentenceTransformer,
    texts: list[str],
    dims: list[int],
    recipe: Recipe,
    seed: int,
    pairs: tuple[list[str], list[str]] | None = None,
) -> tuple[dict[str, Any], BinaryCalibration]:
    """After training: the recipe's PCA rotation (composed into the PCA start's module) and its rotation inside the
    shells (float scores at every trained dim unchanged), then the int8 scales per shell and the binary codes'
    rotations per dim, all fitted on the model's embeddings of ``texts``, encoded once (each rotation is applied to
    them as it is folded into the model); returns the scales' JSON form and the binary calibration (saved with the
    model)."""
    from matryoshka_st.posthoc.pca import encode_full, fit_pca_rotation, fold_rotation
    from matryoshka_st.posthoc.shell_rotation import fit_shell_rotation

    embeddings = encode_full(model, texts, batch_size=64)  # (N, D), unit rows
    if recipe.pca_after:
        logger.info("Fitting a PCA rotation on %d training texts (a PCA rotation after training).", len(texts))
        rotation = fit_pca_rotation(embeddings)
        fold_rotation(model, rotation)
        embeddings = embeddings @ rotation.T
    if recipe.shell_rotation != "none":
        logger.info("Fitting a %s rotation inside the shells of %s.", recipe.shell_rotation, dims)
        rotation = fit_shell_rotation(embeddings, dims, method=recipe.shell_rotation, seed=seed)
        fold_rotation(model, rotation)
        embeddings = embeddings @ rotation.T
    pair_embeddings = None
    if pairs is not None and len(pairs[0]) >= 20:
        pair_embeddings = tuple(encode_full(model, side, batch_size=64) for side in pairs)
    binary = BinaryCalibration.fit(embeddings, dims, seed=seed, pairs=pair_embeddings)
    logger.info(
        "Binary codes: rotated at dims %s (neighbour recall@10 on the training texts: %s).",
        sorted(binary.rotations, reverse=True),
        binary.recall,
    )
    return Int8Calibration.fit(embeddings, dims).to_dict(), binary


def _metadata(
    loss: MatryoshkaLoss, result: TrainResult, threshold: float, recipe: Recipe, int8_calibration: dict[str, Any]
) -> MatryoshkaConfig:
    return matryoshka_config_from_loss(
        loss,
        recipe=recipe.to_dict(),
        int8_calibration=int8_calibration,
        recommended_truncate_dim=result.recommended_truncate_dim or loss.full_dim,
        recommendation={
            "metric": result.metric,
            "threshold": threshold,
            "scores": {str(dim): score for dim, score in result.scores_after.items()},
        }
        if result.scores_after
        else None,
    )


def _save_final(
    trainer: SentenceTransformerTrainer,
    loss: MatryoshkaLoss,
    metadata: MatryoshkaConfig,
    binary: BinaryCalibration | None = None,
) -> str:
    def extras(folder: str) -> None:
        if binary is not None:
            metadata.binary_calibration = binary.save(folder)
        write_matryoshka_config(folder, metadata)
        if loss.heads is not None:
            loss.save_heads(folder)

    final = Path(trainer.args.output_dir) / FINAL_DIR_NAME
    logger.info("Saving the final model to %s.", final)
    return save_atomically(trainer.model, final, extras)


@dataclass
class TrainingData:
    """What ``run`` trains on: ``train`` goes to the trainer (a ``DatasetDict`` of one dataset per group with
    ``group_by``), ``rows`` is the same rows as one dataset in file order (PCA texts, int8 scales, binary pairs)."""

    train: Dataset | DatasetDict
    eval: Dataset | None
    spec: LossSpec
    rows: Dataset


def _load_datasets(config: TrainConfig) -> TrainingData:
    data, mrl = config.data, config.matryoshka
    mapping = parse_mapping(data.column_mapping, "column_mapping")
    loss_kwargs = parse_mapping(mrl.loss_kwargs, "loss_kwargs")
    if mrl.loss is not None:
        resolve_loss_class(mrl.loss)  # unknown names fail before any file is read
    train_dataset = rename_columns(
        load_data(data.train_data, data.train_split, data.dataset_config_name), mapping, "train"
    )
    eval_dataset = None
    if data.eval_data:
        split = data.eval_split or "train"
        eval_dataset = rename_columns(load_data(data.eval_data, split, data.dataset_config_name), mapping, "eval")
    elif data.eval_split:
        eval_dataset = rename_columns(
            load_data(data.train_data, data.eval_split, data.dataset_config_name), mapping, "eval"
        )
    group = data.group_by
    keep = (group,) if group else ()
    if group:
        check_group_column(train_dataset, group, "train")
    spec = infer_loss_spec(train_dataset.remove_columns(group) if group else train_dataset, mrl.loss, loss_kwargs)
    train_dataset = prepare_dataset(train_dataset, spec, "train", keep)
    if eval_dataset is not None:
        eval_spec = infer_loss_spec(
            eval_dataset.remove_columns(group) if group in eval_dataset.column_names else eval_dataset,
            spec.name,
            loss_kwargs,
        )
        if eval_spec.columns != spec.columns:
            raise DataError(
                f"The eval data columns {eval_spec.columns} differ from the training columns {spec.columns}."
            )
        eval_dataset = prepare_dataset(eval_dataset, spec, "eval")
    else:
        train_dataset, eval_dataset = split_eval(train_dataset, data.eval_size, config.training.seed)
        if eval_dataset is not None and group:
            eval_dataset = eval_dataset.remove_columns(group)  # held-out rows are scored as one set
    if data.max_train_samples is not None:
        train_dataset = train_dataset.select(range(min(data.max_train_samples, len(train_dataset))))
    if eval_dataset is not None and data.max_eval_samples is not None:
        eval_dataset = eval_dataset.select(range(min(data.max_eval_samples, len(eval_dataset))))
    if len(train_dataset) == 0:
        raise DataError(f"No training rows left in {data.train_data!r} after selection.")
    if len(train_dataset) < 2 and spec.name in IN_BATCH_LOSSES:
        raise DataError(
            f"{data.train_data!r} gives 1 training row: {spec.name} scores each row against the other rows of its "
            "batch, so it learns nothing from one row (the loss is 0). Give it at least 2 rows, better hundreds."
        )
    if len(train_dataset) < config.training.per_device_train_batch_size:
        logger.warning(
            "Only %d training rows, fewer than one batch of %d: this run will learn little.",
            len(train_dataset),
            config.training.per_device_train_batch_size,
        )
    batches = train_dataset
    if group:
        groups = train_dataset[group]
        train_dataset = train_dataset.remove_columns(group)
        batches = group_rows(train_dataset, groups, group, spec, config.training.per_device_train_batch_size)
    if spec.label_column and LOSS_REQUIREMENTS.get(spec.name, None) and LOSS_REQUIREMENTS[spec.name].label == "int":
        spec.num_labels = count_labels([d for d in (train_dataset, eval_dataset) if d is not None], spec.label_column)
    logger.info(
        "Training %s (wrapped in MatryoshkaLoss) on %d rows with columns %s%s%s.",
        spec.name,
        len(train_dataset),
        spec.columns,
        f", one {group!r} group per batch ({ {k: len(v) for k, v in batches.items()} })" if group else "",
        f", evaluating on {len(eval_dataset)} rows" if eval_dataset is not None else "",
    )
    return TrainingData(batches, eval_dataset, spec, train_dataset)


# -- the run -------------------------------------------------------------------------------------------------------
@restores_previous_run
def run(config: TrainConfig, callbacks: Sequence[TrainerCallback] = ()) -> TrainResult:
    """Fine-tune a model with the Matryoshka loss as configured, evaluate it at every dim, and save it.

    Every input is checked before training starts; on bad input a ``ConfigError`` or ``DataError`` (both
    ``ValueError``) is raised and nothing is written. A NaN/inf loss raises :class:`NonFiniteLossError`.
    ``config`` is not modified.

    Args:
        config: from :func:`~matryoshka_st.training.parse_config`.
        callbacks: extra ``transformers.TrainerCallback`` objects for the trainer.

    Returns:
        A :class:`TrainResult`; the model is in ``{output_dir}/final`` with ``matryoshka_config.json``.

    Example:
        ::

            from matryoshka_st.training import parse_config, run

            result = run(parse_config({"train_data": "pairs.jsonl", "output_dir": "out", "max_steps": 200}))
            print(result.table())
    """
    _check_environment(config.training)
    log_launch(config.training)
    resume = resolve_resume(config)
    _check_output_dir(config.training, resume)
    data = _load_datasets(config)
    train_dataset, eval_dataset, spec = data.train, data.eval, data.spec
    model = _load_model(config)
    recipe = config.matryoshka.resolved_recipe()
    logger.info("Recipe %r: %s", recipe.name, recipe.to_dict())
    # every recipe fits its int8 scales on these texts after training; the PCA recipes also their rotations
    pca_texts = _pca_texts(data.rows, spec, config.matryoshka.init_texts)
    if recipe.init == "pca":
        if resume is None:
            _rotate_by_pca(model, pca_texts, "a PCA start")
        else:  # the checkpoint holds the rotation: give the model the module it is loaded into
            _add_identity_rotation(model)
    # the inner loss may hold a randomly initialised head (SoftmaxLoss); the trainer seeds only once it is built
    set_seed(config.training.seed)
    loss = _build_loss(model, spec, config, recipe)
    dims = loss.matryoshka_dims
    plan = eval_plan(config, dims, spec, eval_dataset)
    training = _trainer_arguments(config, spec, plan, dims, eval_dataset is not None)

    # -- all checks passed: from here on, files are written ----------------------------------------------------
    is_main = training.process_index == 0
    previous = PreviousRun(Path(training.output_dir))
    if is_main and training.overwrite_output_dir and resume is None:
        previous.set_aside()  # restored if the run fails before its first save (see restores_previous_run)
    trainer = SentenceTransformerTrainer(
        model=model,
        args=training,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        loss=loss,
        evaluator=plan.evaluator,
        callbacks=[StopOnNonFiniteLoss(loss), SaveMatryoshkaExtras(loss), previous.callback(), *callbacks],
    )
    result = TrainResult(str(training.output_dir), None, dims, plan.metric)
    if is_main and plan.evaluator is not None and config.matryoshka.evaluate_before_training and resume is None:
        logger.info("Evaluating the base model at dims %s.", dims)
        result.scores_before = plan.scores(plan.evaluator(model), dims)
    if resume is not None:
        if loss.heads is not None and os.path.isfile(os.path.join(resume, HEADS_CONFIG_NAME)):
            loss.load_heads(resume)
        logger.info("Resuming from %s.", resume)
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume)
    result.train_runtime = time.perf_counter() - started
    result.global_step = trainer.state.global_step

    if is_main:
        int8_calibration, binary = _finish_output_space(
            trainer.model, pca_texts, dims, recipe, config.training.seed, _binary_pairs(data.rows, spec)
        )
        if plan.evaluator is not None:
            logger.info("Evaluating the fine-tuned model at dims %s.", dims)
            result.scores_after = plan.scores(plan.evaluator(trainer.model), dims)
        threshold = config.matryoshka.recommend_threshold
        quality = result.quality(threshold)
        result.recommended_truncate_dim = quality.recommended_dim if quality is not None else None
        result.model_path = _save_final(
            trainer, loss, _metadata(loss, result, threshold, recipe, int8_calibration), binary
        )
    trainer.accelerator.wait_for_everyone()
    if not is_main:
        result.model_path = str((Path(training.output_dir) / FINAL_DIR_NAME).resolve())
    return result


def train(config_file: str | os.PathLike | None = None, **arguments: Any) -> TrainResult:
    """Parse ``arguments`` (the ``matryoshka-st train`` flag names) and an optional config file, then :func:`run`.

    Example:
        ::

            from matryoshka_st.training import train

            result = train(train_data="pairs.jsonl", output_dir="out", max_steps=200, matryoshka_dims=[384, 128, 64])
            model = SentenceTransformer(result.model_path)
            embeddings = model.encode(["a short text"], truncate_dim=64)
    """
    return run(parse_config(arguments, config_file))


__all__ = [
    "FINAL_DIR_NAME",
    "NonFiniteLossError",
    "TrainResult",
    "run",
    "save_atomically",
    "train",
]
