"""One Matryoshka fine-tuning run: checks, then ``SentenceTransformerTrainer``, then an atomic save.

The training loop, checkpointing, resuming and multi-process support are ``SentenceTransformerTrainer``'s
(accelerate inside); the evaluators are sentence-transformers' with ``truncate_dim``. Written here: checking every
input before the model is loaded, an evaluator wrapper that encodes once for all dims, a callback that stops on a
non-finite loss, a callback that adds the Matryoshka metadata and heads to each checkpoint, and the final save to a
temporary folder that is then renamed.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
from sentence_transformers.base.evaluation import SequentialEvaluator
from sentence_transformers.base.sampler import BatchSamplers
from sentence_transformers.sentence_transformer.evaluation import (
    EmbeddingSimilarityEvaluator,
    InformationRetrievalEvaluator,
)
from sentence_transformers.util import cos_sim
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from matryoshka_st.dims import default_dims, full_embedding_dim, validate_dims
from matryoshka_st.losses import MatryoshkaLoss
from matryoshka_st.losses.heads import HEAD_MODES, HEADS_CONFIG_NAME
from matryoshka_st.metadata import (
    MATRYOSHKA_CONFIG_NAME,
    matryoshka_config_from_loss,
    recommend_dim,
    write_matryoshka_config,
)
from matryoshka_st.training._launch import log_launch
from matryoshka_st.training.arguments import ConfigError, TrainConfig, parse_config
from matryoshka_st.training.data import (
    LOSS_REQUIREMENTS,
    DataError,
    LossSpec,
    RetrievalSet,
    count_labels,
    infer_loss_spec,
    load_data,
    load_retrieval_set,
    parse_mapping,
    prepare_dataset,
    rename_columns,
    resolve_loss_class,
    retrieval_set_from_pairs,
    split_eval,
)

logger = logging.getLogger(__name__)

FINAL_DIR_NAME = "final"
_IN_BATCH_LOSSES = {n for n, r in LOSS_REQUIREMENTS.items() if r.min_texts == 2 and r.max_texts is None}
_GROUPED_LOSSES = {n for n, r in LOSS_REQUIREMENTS.items() if r.min_texts == 1}


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the message names the step and the last good checkpoint."""


@dataclass
class TrainResult:
    """What a run produced: where the model is, and its score at every dim before and after training."""

    output_dir: str
    model_path: str | None
    dims: list[int]
    metric: str | None = None  # e.g. "dev_wordnet_dim_{dim}_cosine_ndcg@10"
    scores_before: dict[int, float] = field(default_factory=dict)
    scores_after: dict[int, float] = field(default_factory=dict)
    recommended_truncate_dim: int | None = None
    global_step: int = 0
    train_runtime: float = 0.0

    def table(self) -> str:
        """A plain-text table: dim, base score, fine-tuned score, and each as a % of its own full-dim score."""
        if not self.scores_after:
            return ""
        label = (self.metric or "score").rsplit("_", 1)[-1]
        full = max(self.scores_after)
        rows = [("dim", f"base {label}", f"fine-tuned {label}", f"base % of {full}", f"fine-tuned % of {full}")]
        for dim in sorted(self.scores_after, reverse=True):
            before, after = self.scores_before.get(dim), self.scores_after[dim]
            base_full, after_full = self.scores_before.get(full), self.scores_after[full]
            rows.append(
                (
                    str(dim),
                    f"{before:.4f}" if before is not None else "-",
                    f"{after:.4f}",
                    f"{100 * before / base_full:.1f}%" if before is not None and base_full else "-",
                    f"{100 * after / after_full:.1f}%" if after_full else "-",
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in rows]
        lines.insert(1, "  ".join("-" * width for width in widths))
        return "\n".join(lines)


# -- evaluation ----------------------------------------------------------------------------------------------------
class EncodeOnceEvaluator(SequentialEvaluator):
    """A ``SequentialEvaluator`` of per-dim evaluators that encodes each text list once per call.

    sentence-transformers evaluators with ``truncate_dim`` each re-encode everything; here ``model.encode`` is
    replaced, for the duration of one call, by a version that keeps full-size embeddings and hands out their first
    ``truncate_dim`` coordinates, which is what ``encode(truncate_dim=...)`` returns.
    """

    def __call__(self, model: SentenceTransformer, *args: Any, **kwargs: Any) -> dict[str, float]:
        if getattr(model, "truncate_dim", None) is not None or "encode" in vars(model):
            return super().__call__(model, *args, **kwargs)
        original = model.encode
        cache: dict[Any, Any] = {}

        def encode(inputs: Any, *pos: Any, truncate_dim: int | None = None, **kw: Any) -> Any:
            cacheable = (
                not pos
                and isinstance(inputs, list)
                and all(isinstance(text, str) for text in inputs)
                and not kw.get("normalize_embeddings")
                and kw.get("precision", "float32") == "float32"
                and kw.get("output_value", "sentence_embedding") == "sentence_embedding"
            )
            if not cacheable:
                return original(inputs, *pos, truncate_dim=truncate_dim, **kw)
            key = (tuple(inputs), repr(sorted((k, v) for k, v in kw.items() if k != "show_progress_bar")))
            if key not in cache:
                cache[key] = original(inputs, truncate_dim=None, **kw)
            full = cache[key]
            cut = full[..., :truncate_dim] if truncate_dim else full
            return cut.clone() if isinstance(cut, torch.Tensor) else cut.copy()

        model.encode = encode
        try:
            return super().__call__(model, *args, **kwargs)
        finally:
            del model.encode


@dataclass
class _EvalPlan:
    evaluator: EncodeOnceEvaluator | None
    metric: str | None  # with a "{dim}" placeholder, without the "eval_" prefix


def _retrieval_evaluators(data: RetrievalSet, dims: Sequence[int], batch_size: int) -> list:
    return [
        InformationRetrievalEvaluator(
            data.queries,
            data.corpus,
            data.relevant,
            name=f"{data.name}_dim_{dim}",
            truncate_dim=dim,
            batch_size=batch_size,
            score_functions={"cosine": cos_sim},
            main_score_function="cosine",
            accuracy_at_k=[1, 10],
            precision_recall_at_k=[10],
            mrr_at_k=[10],
            ndcg_at_k=[10],
            map_at_k=[100],
        )
        for dim in dims
    ]


def _sts_evaluators(name: str, s1: list, s2: list, scores: list, dims: Sequence[int], batch_size: int) -> list:
    return [
        EmbeddingSimilarityEvaluator(
            s1,
            s2,
            scores,
            name=f"{name}_dim_{dim}",
            truncate_dim=dim,
            batch_size=batch_size,
            main_similarity="cosine",
            similarity_fn_names=["cosine"],
        )
        for dim in dims
    ]


def _eval_plan(config: TrainConfig, dims: list[int], spec: LossSpec, eval_dataset: Any) -> _EvalPlan:
    batch_size = config.training.per_device_eval_batch_size
    evaluators: list = []
    metric = None
    if config.data.eval_retrieval:
        data = load_retrieval_set(config.data.eval_retrieval)
        evaluators += _retrieval_evaluators(data, dims, batch_size)
        metric = f"{data.name}_dim_{{dim}}_cosine_ndcg@10"
    if config.data.eval_sts:
        sts = load_data(config.data.eval_sts)
        sts = rename_columns(sts, parse_mapping(config.data.column_mapping, "column_mapping"), "eval_sts")
        sts_spec = infer_loss_spec(sts, "CoSENTLoss")
        sts = prepare_dataset(sts, sts_spec, "eval_sts")
        name = Path(config.data.eval_sts).name.split(".")[0]
        columns = [sts[c] for c in sts_spec.columns]
        evaluators += _sts_evaluators(name, *columns, dims, batch_size)
        metric = metric or f"{name}_dim_{{dim}}_spearman_cosine"
    if eval_dataset is not None and spec.name in _IN_BATCH_LOSSES:
        evaluators += _retrieval_evaluators(retrieval_set_from_pairs(eval_dataset, spec, "heldout"), dims, batch_size)
        metric = metric or "heldout_dim_{dim}_cosine_ndcg@10"
    elif eval_dataset is not None and spec.name == "CoSENTLoss":
        columns = [eval_dataset[c] for c in spec.columns]
        evaluators += _sts_evaluators("heldout", *columns, dims, batch_size)
        metric = metric or "heldout_dim_{dim}_spearman_cosine"
    if not evaluators:
        return _EvalPlan(None, None)
    return _EvalPlan(EncodeOnceEvaluator(evaluators), metric)


def _scores(metrics: Mapping[str, float], metric: str | None, dims: Sequence[int]) -> dict[int, float]:
    if metric is None:
        return {}
    return {dim: float(metrics[key]) for dim in dims if (key := metric.format(dim=dim)) in metrics}


# -- callbacks -----------------------------------------------------------------------------------------------------
class StopOnNonFiniteLoss(TrainerCallback):
    """Stop before the optimizer applies a NaN/inf gradient, naming the step and the last good checkpoint.

    The check runs on the gradients, which every process holds identically after the all-reduce, so all
    processes stop at the same step instead of some waiting forever for the others.
    """

    def __init__(self, loss: MatryoshkaLoss) -> None:
        self.loss = loss

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        grads = [p.grad for p in self.loss.parameters() if p.grad is not None]
        if not grads or torch.isfinite(torch.nn.utils.get_total_norm(grads)):
            return
        step = state.global_step + 1
        components = ", ".join(f"loss_dim_{dim}={value:.4g}" for dim, value in self.loss.last_dim_losses.items())
        last = get_last_checkpoint(args.output_dir) if os.path.isdir(args.output_dir) else None
        keep = (
            f"The last good checkpoint is {last}: resume from it with --resume_from_checkpoint {last}"
            if last
            else "No checkpoint was saved before it (set --save_steps lower to keep one)"
        )
        raise NonFiniteLossError(
            f"The training loss became NaN or infinite at step {step} ({components}); training stopped before the "
            f"optimizer step. {keep}, after lowering --learning_rate or setting --max_grad_norm."
        )


class SaveMatryoshkaExtras(TrainerCallback):
    """Add ``matryoshka_config.json`` and the loss's classifier heads to every checkpoint (main process only)."""

    def __init__(self, loss: MatryoshkaLoss) -> None:
        self.loss = loss

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if os.path.isdir(folder):
            write_matryoshka_config(folder, matryoshka_config_from_loss(self.loss))
            if self.loss.heads is not None:
                self.loss.save_heads(folder)


# -- checks --------------------------------------------------------------------------------------------------------
def _output_contents(output_dir: Path) -> list[str]:
    if not output_dir.is_dir():
        return []
    found = []
    if (output_dir / FINAL_DIR_NAME).exists():
        found.append(f"a model in {FINAL_DIR_NAME}/")
    if (output_dir / "modules.json").exists() or (output_dir / "config.json").exists():
        found.append("a model")
    checkpoints = sorted(p.name for p in output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.is_dir())
    if checkpoints:
        found.append(f"checkpoints {checkpoints}")
    return found


def _resolve_resume(config: TrainConfig) -> str | None:
    value = config.training.resume_from_checkpoint
    if value in (None, "", False):
        return None
    output_dir = config.training.output_dir
    if str(value).lower() in ("true", "latest", "last", "1"):
        last = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
        if last is None:
            raise ConfigError(
                f"--resume_from_checkpoint {value}: there is no {PREFIX_CHECKPOINT_DIR}-* folder in {output_dir!r}."
            )
        return last
    if not os.path.isdir(value):
        raise ConfigError(f"--resume_from_checkpoint {value!r} is not a checkpoint folder.")
    return str(value)


def _check_arguments(config: TrainConfig, resume: str | None) -> None:
    mrl, training = config.matryoshka, config.training
    if mrl.matryoshka_dims is not None:
        try:
            validate_dims(mrl.matryoshka_dims, None, mrl.matryoshka_weights)
        except ValueError as error:
            raise ConfigError(str(error)) from error
    elif mrl.matryoshka_weights is not None:
        raise ConfigError("--matryoshka_weights needs --matryoshka_dims: give one weight per dim.")
    if mrl.n_dims_per_step == 0 or mrl.n_dims_per_step < -1:
        raise ConfigError(f"n_dims_per_step must be -1 (all dims) or a positive number, got {mrl.n_dims_per_step}.")
    if mrl.init not in ("none", "pca"):
        raise ConfigError(f"--init must be 'none' or 'pca', got {mrl.init!r}.")
    if mrl.init_texts < 2:
        raise ConfigError(f"--init_texts must be at least 2, got {mrl.init_texts}.")
    if mrl.head_mode not in HEAD_MODES:
        raise ConfigError(f"head_mode must be one of {HEAD_MODES}, got {mrl.head_mode!r}.")
    if not 0 < mrl.recommend_threshold <= 1:
        raise ConfigError(f"recommend_threshold must be in (0, 1], got {mrl.recommend_threshold}.")
    output_dir = Path(training.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"output_dir {str(output_dir)!r} is a file, not a folder.")
    found = _output_contents(output_dir)
    if found and not training.overwrite_output_dir and resume is None:
        raise ConfigError(
            f"output_dir {str(output_dir)!r} already holds {' and '.join(found)}. Pass --overwrite_output_dir to "
            "replace them, --resume_from_checkpoint latest to continue that run, or choose another --output_dir."
        )
    if mrl.best_model_dim is not None and training.eval_strategy == "no":
        raise ConfigError("--best_model_dim needs evaluation during training: set --eval_strategy steps (or epoch).")


def _load_model(config: TrainConfig) -> SentenceTransformer:
    name = config.model.model_name_or_path
    if name is None:
        from matryoshka_st._bundled import bundled_model_path

        name = bundled_model_path()
    elif not os.path.exists(name) and name.startswith((".", "/", "~")):
        raise ConfigError(f"Model folder {name!r} does not exist.")
    try:
        model = SentenceTransformer(name, trust_remote_code=config.model.trust_remote_code, device="cpu")
    except Exception as error:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        hint = (
            " HF_HUB_OFFLINE is set, so only local folders and models already in the cache can be loaded."
            if offline and not os.path.exists(name)
            else ""
        )
        raise ConfigError(
            f"Cannot load model {name!r} as a local folder or a Hugging Face Hub id: "
            f"{type(error).__name__}: {error}.{hint}"
        ) from error
    if config.model.max_seq_length is not None:
        model.max_seq_length = config.model.max_seq_length
    if config.model.model_name_or_path is None and model.model_card_data.base_model is None:
        # the bundled folder has no Hub id of its own; the card should name the model it is a copy of
        model.model_card_data.base_model = "sentence-transformers/all-MiniLM-L6-v2"
    return model


def _init_pca(model: SentenceTransformer, train_dataset: Any, spec: Any, n_texts: int) -> None:
    """``--init pca``: rotate the model's coordinates by variance on its own training texts before training."""
    from matryoshka_st.posthoc import add_pca_rotation

    texts: list[str] = []
    for column in spec.text_columns:
        texts.extend(str(text) for text in train_dataset[column][: n_texts - len(texts)])
        if len(texts) >= n_texts:
            break
    logger.info("Fitting a PCA rotation on %d training texts (--init pca).", len(texts))
    add_pca_rotation(model, texts=list(dict.fromkeys(texts)))


def _build_loss(model: SentenceTransformer, spec: LossSpec, config: TrainConfig, dims: list[int]) -> MatryoshkaLoss:
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
    n_dims = mrl.n_dims_per_step
    if n_dims > len(dims):
        raise ConfigError(f"n_dims_per_step {n_dims} exceeds the number of matryoshka_dims {dims}.")
    return MatryoshkaLoss(model, inner, dims, mrl.matryoshka_weights, n_dims, mrl.head_mode)


def _load_datasets(config: TrainConfig):
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
    spec = infer_loss_spec(train_dataset, mrl.loss, loss_kwargs)
    train_dataset = prepare_dataset(train_dataset, spec, "train")
    if eval_dataset is not None:
        eval_spec = infer_loss_spec(eval_dataset, spec.name, loss_kwargs)
        if eval_spec.columns != spec.columns:
            raise DataError(
                f"The eval data columns {eval_spec.columns} differ from the training columns {spec.columns}."
            )
        eval_dataset = prepare_dataset(eval_dataset, spec, "eval")
    else:
        train_dataset, eval_dataset = split_eval(train_dataset, data.eval_size, config.training.seed)
    if data.max_train_samples is not None:
        train_dataset = train_dataset.select(range(min(data.max_train_samples, len(train_dataset))))
    if eval_dataset is not None and data.max_eval_samples is not None:
        eval_dataset = eval_dataset.select(range(min(data.max_eval_samples, len(eval_dataset))))
    if len(train_dataset) == 0:
        raise DataError(f"No training rows left in {data.train_data!r} after selection.")
    if spec.label_column and LOSS_REQUIREMENTS.get(spec.name, None) and LOSS_REQUIREMENTS[spec.name].label == "int":
        spec.num_labels = count_labels([d for d in (train_dataset, eval_dataset) if d is not None], spec.label_column)
    logger.info(
        "Training %s (wrapped in MatryoshkaLoss) on %d rows with columns %s%s.",
        spec.name,
        len(train_dataset),
        spec.columns,
        f", evaluating on {len(eval_dataset)} rows" if eval_dataset is not None else "",
    )
    return train_dataset, eval_dataset, spec


# -- saving --------------------------------------------------------------------------------------------------------
def save_atomically(model: SentenceTransformer, path: str | os.PathLike, write_extras: Callable[[str], None]) -> str:
    """Save ``model`` (and whatever ``write_extras(folder)`` adds) to a temporary sibling folder, then rename it to
    ``path``: a reader sees the previous complete model or the new complete model, never a half-written one."""
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.tmp-", dir=parent)
    try:
        model.save_pretrained(tmp)
        write_extras(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp creates 0700
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if os.path.exists(path):
        old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old-", dir=parent)
        os.rename(path, os.path.join(old, "model"))
        os.rename(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, path)
    return path


def _remove_previous_run(output_dir: Path) -> None:
    for checkpoint in output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        if checkpoint.is_dir():
            shutil.rmtree(checkpoint)


# -- the run -------------------------------------------------------------------------------------------------------
def run(config: TrainConfig, callbacks: Sequence[TrainerCallback] = ()) -> TrainResult:
    """Fine-tune a model with the Matryoshka loss as configured, evaluate it at every dim, and save it.

    Every input is checked before the model is loaded; on bad input a ``ConfigError`` or ``DataError``
    (both ``ValueError``) is raised and nothing is written. A NaN/inf loss raises :class:`NonFiniteLossError`.

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
    training = config.training
    launched = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if launched > 1 and training.world_size != launched:
        raise ConfigError(
            f"{launched} processes were launched but the trainer sees {training.world_size}: they would train "
            "independent copies. On machines without GPUs pass --use_cpu."
        )
    log_launch(training)
    is_main = training.process_index == 0
    resume = _resolve_resume(config)
    _check_arguments(config, resume)
    train_dataset, eval_dataset, spec = _load_datasets(config)

    model = _load_model(config)
    if config.matryoshka.init == "pca" and resume is None:
        _init_pca(model, train_dataset, spec, config.matryoshka.init_texts)
    full_dim = full_embedding_dim(model)
    if full_dim is None:
        raise ConfigError("The model does not report its embedding dimension: pass --matryoshka_dims.")
    try:
        dims, _ = validate_dims(config.matryoshka.matryoshka_dims or default_dims(full_dim), full_dim)
    except ValueError as error:
        raise ConfigError(str(error)) from error
    loss = _build_loss(model, spec, config, dims)
    plan = _eval_plan(config, dims, spec, eval_dataset)
    if training.eval_strategy != "no" and plan.evaluator is None and eval_dataset is None:
        raise ConfigError(
            f"--eval_strategy {training.eval_strategy.value} needs evaluation data: --eval_size, --eval_data, "
            "--eval_retrieval or --eval_sts."
        )
    if config.matryoshka.best_model_dim is not None:
        if config.matryoshka.best_model_dim not in dims:
            raise ConfigError(f"--best_model_dim {config.matryoshka.best_model_dim} is not one of the dims {dims}.")
        if plan.metric is None:
            raise ConfigError("--best_model_dim needs an evaluator: --eval_retrieval, --eval_sts or an eval split.")
        training.metric_for_best_model = "eval_" + plan.metric.format(dim=config.matryoshka.best_model_dim)
        training.load_best_model_at_end = True
        training.greater_is_better = True
        if training.save_strategy != training.eval_strategy or (
            training.eval_strategy == "steps" and training.save_steps % training.eval_steps
        ):
            raise ConfigError(
                "--best_model_dim needs save_strategy == eval_strategy and save_steps a multiple of eval_steps."
            )
    if "batch_sampler" not in config.explicit:
        if spec.name in _IN_BATCH_LOSSES:
            training.batch_sampler = BatchSamplers.NO_DUPLICATES  # a duplicate in a batch is a false negative
        elif spec.name in _GROUPED_LOSSES:
            training.batch_sampler = BatchSamplers.GROUP_BY_LABEL  # batch triplet losses need same-label pairs

    # -- all checks passed: from here on, files are written ----------------------------------------------------
    output_dir = Path(training.output_dir)
    if is_main and training.overwrite_output_dir and resume is None:
        _remove_previous_run(output_dir)
    trainer = SentenceTransformerTrainer(
        model=model,
        args=training,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        loss=loss,
        evaluator=plan.evaluator,
        callbacks=[StopOnNonFiniteLoss(loss), SaveMatryoshkaExtras(loss), *callbacks],
    )
    result = TrainResult(str(output_dir), None, dims, plan.metric)
    if is_main and plan.evaluator is not None and config.matryoshka.evaluate_before_training and resume is None:
        logger.info("Evaluating the base model at dims %s.", dims)
        result.scores_before = _scores(plan.evaluator(model), plan.metric, dims)
    if resume is not None:
        if loss.heads is not None and os.path.isfile(os.path.join(resume, HEADS_CONFIG_NAME)):
            loss.load_heads(resume)
        logger.info("Resuming from %s.", resume)
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume)
    result.train_runtime = time.perf_counter() - started
    result.global_step = trainer.state.global_step

    if is_main:
        if plan.evaluator is not None:
            logger.info("Evaluating the fine-tuned model at dims %s.", dims)
            result.scores_after = _scores(plan.evaluator(trainer.model), plan.metric, dims)
        result.recommended_truncate_dim = recommend_dim(
            result.scores_after, config.matryoshka.recommend_threshold, full_dim
        )
        metadata = matryoshka_config_from_loss(
            loss,
            recommended_truncate_dim=result.recommended_truncate_dim or full_dim,
            recommendation={
                "metric": plan.metric.format(dim="{dim}") if plan.metric else None,
                "threshold": config.matryoshka.recommend_threshold,
                "scores": {str(dim): score for dim, score in result.scores_after.items()},
            }
            if result.scores_after
            else None,
        )

        def extras(folder: str) -> None:
            write_matryoshka_config(folder, metadata)
            if loss.heads is not None:
                loss.save_heads(folder)

        final = output_dir / FINAL_DIR_NAME
        logger.info("Saving the final model to %s.", final)
        result.model_path = save_atomically(trainer.model, final, extras)
    trainer.accelerator.wait_for_everyone()
    if not is_main:
        result.model_path = str((output_dir / FINAL_DIR_NAME).resolve())
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
    "EncodeOnceEvaluator",
    "FINAL_DIR_NAME",
    "MATRYOSHKA_CONFIG_NAME",
    "NonFiniteLossError",
    "SaveMatryoshkaExtras",
    "StopOnNonFiniteLoss",
    "TrainResult",
    "run",
    "save_atomically",
    "train",
]
