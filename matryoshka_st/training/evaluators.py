"""Evaluation during training: sentence-transformers' evaluators at every Matryoshka dim, one encoding for all.

``EncodeOnceEvaluator`` is a ``SequentialEvaluator`` whose per-dim evaluators share one full-size encoding of each
text list; :func:`eval_plan` builds it from the training config (retrieval folder, STS file or a held-out split).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.evaluation import SequentialEvaluator
from sentence_transformers.sentence_transformer.evaluation import (
    EmbeddingSimilarityEvaluator,
    InformationRetrievalEvaluator,
)
from sentence_transformers.util import cos_sim

from matryoshka_st.readers import FormatError, read_beir
from matryoshka_st.training.arguments import TrainConfig
from matryoshka_st.training.data import (
    IN_BATCH_LOSSES,
    DataError,
    LossSpec,
    infer_loss_spec,
    load_data,
    parse_mapping,
    prepare_dataset,
    rename_columns,
)


@dataclass
class RetrievalSet:
    name: str
    queries: dict[str, str]
    corpus: dict[str, str]
    relevant: dict[str, set[str]]


def load_retrieval_set(folder: str | os.PathLike, name: str | None = None) -> RetrievalSet:
    """Read a BEIR-layout folder (see :func:`matryoshka_st.readers.read_beir`); relevant documents score > 0."""
    folder = Path(folder)
    try:
        beir = read_beir(folder)
    except FormatError as error:
        raise DataError(f"Retrieval set {str(folder)!r}: {error}") from error
    corpus = {doc_id: beir.document(doc_id) for doc_id in beir.corpus}
    relevant = {
        query_id: {doc_id for doc_id, score in docs.items() if score > 0}
        for query_id, docs in beir.qrels[beir.split].items()
    }
    relevant = {query_id: docs for query_id, docs in relevant.items() if docs}
    if not relevant:
        raise DataError(f"Retrieval set {str(folder)!r} has no queries with relevant documents.")
    return RetrievalSet(name or beir.name, beir.queries, corpus, relevant)


def retrieval_set_from_pairs(dataset: Dataset, spec: LossSpec, name: str = "eval") -> RetrievalSet:
    """Anchors as queries, positives (and negatives) as the corpus: each anchor's positive is its relevant doc."""
    queries, corpus, relevant, ids = {}, {}, {}, {}
    for i, row in enumerate(dataset):
        queries[f"q{i}"] = row[spec.text_columns[0]]
        for column in spec.text_columns[1:]:
            text = row[column]
            if text not in ids:
                ids[text] = f"d{len(ids)}"
                corpus[ids[text]] = text
        relevant[f"q{i}"] = {ids[row[spec.text_columns[1]]]}
    return RetrievalSet(name, queries, corpus, relevant)


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
class EvalPlan:
    evaluator: EncodeOnceEvaluator | None
    metric: str | None  # with a "{dim}" placeholder, without the "eval_" prefix

    def scores(self, metrics: Mapping[str, float], dims: Sequence[int]) -> dict[int, float]:
        """``{dim: score}`` of the plan's metric in an evaluator's output."""
        if self.metric is None:
            return {}
        return {dim: float(metrics[key]) for dim in dims if (key := self.metric.format(dim=dim)) in metrics}


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


def eval_plan(config: TrainConfig, dims: list[int], spec: LossSpec, eval_dataset: Any) -> EvalPlan:
    """The evaluators at every dim and the metric (``{dim}`` placeholder) that ranks them."""
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
    if eval_dataset is not None and spec.name in IN_BATCH_LOSSES:
        evaluators += _retrieval_evaluators(retrieval_set_from_pairs(eval_dataset, spec, "heldout"), dims, batch_size)
        metric = metric or "heldout_dim_{dim}_cosine_ndcg@10"
    elif eval_dataset is not None and spec.name == "CoSENTLoss":
        columns = [eval_dataset[c] for c in spec.columns]
        evaluators += _sts_evaluators("heldout", *columns, dims, batch_size)
        metric = metric or "heldout_dim_{dim}_spearman_cosine"
    if not evaluators:
        return EvalPlan(None, None)
    return EvalPlan(EncodeOnceEvaluator(evaluators), metric)
