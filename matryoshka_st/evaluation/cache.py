"""Encode once, evaluate at every dimension and precision.

mteb evaluates one encoder at a time, so evaluating six dimensions naively encodes every text six times. Here an
:class:`EmbeddingCache` encodes each text once per model at full size (through mteb's own
``SentenceTransformerEncoderWrapper``, so prompts and ``encode_query``/``encode_document`` are chosen exactly as mteb
chooses them) and :class:`TruncatedEncoder` views of it are what mteb evaluates: each is an mteb ``EncoderProtocol``
that returns the cached vectors cut to ``dim``, L2-renormalised, and quantised with sentence-transformers'
``quantize_embeddings``.

What mteb and sentence-transformers do not provide, and this module adds:

- the text-keyed cache shared by all views of one model;
- int8 calibration per task: the quantisation ranges come from every text of the task the cache holds (queries and
  documents alike), so both sides of a comparison share one scale, whichever order mteb encodes them in;
- int8 with the model's own scales (one per Matryoshka shell, fitted at training time and saved in
  ``matryoshka_config.json``; :class:`~matryoshka_st.quantization.Int8Calibration`) where it has them;
- binary vectors are scored as their +-1 unpacking, whose cosine similarity ranks exactly as the Hamming distance
  between the packed bits does;
- ``binary+rescore``: documents as codes, queries kept float, scored by
  :func:`~matryoshka_st.quantization.rescore_binary` (Hamming shortlist of 40 per query, rescored with the float
  query). mteb scores each corpus chunk (50,000 documents by default) on its own, so on a larger corpus the
  shortlist is 40 per chunk;
- ``binary+int8-rescore``: the same shortlist rescored against the documents' int8 codes (the model's per-shell
  scales where it saved them) instead of their sign bits.

Example:
    >>> cache = EmbeddingCache(model, name="local/minilm")
    >>> encoder = cache.view(dim=128, precision="int8")  # pass to mteb.evaluate
"""

from __future__ import annotations

import copy
import hashlib
import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from datasets import Dataset
from mteb.models.abs_encoder import get_prompt_name
from mteb.models.model_meta import ModelMeta
from mteb.models.sentence_transformer_wrapper import SentenceTransformerEncoderWrapper
from mteb.similarity_functions import cos_sim, pairwise_cos_sim
from mteb.types import OutputDType
from sentence_transformers import SentenceTransformer
from torch.utils.data import DataLoader

from matryoshka_st.dims import full_embedding_dim, truncate_numpy
from matryoshka_st.evaluation.quality import PRECISIONS, check_precisions
from matryoshka_st.quantization import (
    RESCORE_K,
    BinaryCalibration,
    Int8Calibration,
    binary_codes,
    int8_per_axis,
    rescore_binary,
)

if TYPE_CHECKING:
    from mteb.abstasks.task_metadata import TaskMetadata
    from mteb.types import Array, PromptType

logger = logging.getLogger(__name__)


def model_revision(model: SentenceTransformer) -> str:
    """A short hash of the model's parameters: retraining into the same folder gives a new revision."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class EmbeddingCache:
    """Full-size embeddings of every text one model has encoded, keyed by (prompt type, prompt name, text).

    Args:
        model: the sentence-transformers model; its ``truncate_dim`` is ignored (the cache always holds full size).
        name: the model name for mteb's results, ``organization/model`` (mteb requires the slash).
        revision: the model revision for mteb's results; defaults to :func:`model_revision`.
        int8_calibration: the model's own int8 scales (``matryoshka_config.json``); int8 at a dim they cover is
            scored with them, other dims with ranges fitted on the task's texts.
        binary_calibration: the dims whose binary codes the model takes after a rotation of the prefix, and those
            rotations (``binary_rotations.safetensors``); binary and binary+rescore apply them.

    Attributes:
        num_encoded: how many texts were passed to the model so far (each unique text once).
        num_calls: how many times the model was asked to encode.
    """

    def __init__(
        self,
        model: SentenceTransformer,
        name: str,
        revision: str | None = None,
        int8_calibration: Int8Calibration | None = None,
        binary_calibration: BinaryCalibration | None = None,
    ) -> None:
        if "/" not in name:
            raise ValueError(f"Model name {name!r} must look like 'organization/model', as mteb requires.")
        if getattr(model, "truncate_dim", None) is not None:
            model = copy.copy(model)
            model.truncate_dim = None
        self.encoder = SentenceTransformerEncoderWrapper(model)
        self.full_dim = full_embedding_dim(model)
        if self.full_dim is None:
            raise ValueError("The model does not report its embedding dimension; cannot derive truncated sizes.")
        revision = revision or model_revision(model)
        self.meta: ModelMeta = self.encoder.mteb_model_meta.model_copy(
            update={"name": name, "revision": revision, "embed_dim": self.full_dim, "loader": None}
        )
        self._rows: dict[tuple[str, str, str], int] = {}
        self._buffer = np.zeros((0, self.full_dim), dtype=np.float32)  # (capacity, D), first len(_rows) filled
        self._task_rows: dict[str, set[int]] = {}
        self._calibration: dict[tuple[str, int], tuple[int, np.ndarray]] = {}
        self.int8_calibration = int8_calibration
        self.binary_calibration = binary_calibration
        self.num_encoded = 0
        self.num_calls = 0

    def view(self, dim: int, precision: str = "float32") -> TruncatedEncoder:
        """An mteb encoder returning this cache's vectors at ``dim`` and ``precision``."""
        return TruncatedEncoder(self, dim, precision)

    def has_task(self, task_name: str) -> bool:
        """Whether texts of this task were encoded already (so int8 calibration can see all of them)."""
        return bool(self._task_rows.get(task_name))

    def encode(
        self,
        inputs: DataLoader,
        *,
        task_metadata: TaskMetadata,
        hf_split: str,
        hf_subset: str,
        prompt_type: PromptType | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Full-size embeddings ``(N, D)`` of the texts in ``inputs``; only texts not seen before reach the model."""
        if task_metadata.modalities != ["text"]:
            raise ValueError(
                f"Task {task_metadata.name!r} has modalities {task_metadata.modalities}; only text tasks are supported."
            )
        texts = [text for batch in inputs for text in batch["text"]]
        prompt_name = get_prompt_name(self.encoder.model_prompts or {}, task_metadata, prompt_type) or ""
        kind = prompt_type.value if prompt_type is not None else ""
        keys = [(kind, prompt_name, text) for text in texts]
        new = list(dict.fromkeys(key for key in keys if key not in self._rows))
        if new:
            loader = DataLoader(
                Dataset.from_dict({"text": [key[2] for key in new]}), batch_size=kwargs.get("batch_size", 32)
            )
            embeddings = np.asarray(
                self.encoder.encode(
                    loader,
                    task_metadata=task_metadata,
                    hf_split=hf_split,
                    hf_subset=hf_subset,
                    prompt_type=prompt_type,
                    **kwargs,
                ),
                dtype=np.float32,
            )
            self.num_calls += 1
            self.num_encoded += len(new)
            self._append(new, embeddings)
        rows = [self._rows[key] for key in keys]
        self._task_rows.setdefault(task_metadata.name, set()).update(rows)
        return self._buffer[rows]

    def _append(self, keys: list[tuple[str, str, str]], embeddings: np.ndarray) -> None:
        start = len(self._rows)
        needed = start + len(keys)
        if needed > len(self._buffer):
            grown = np.zeros((max(needed, 2 * len(self._buffer)), self.full_dim), dtype=np.float32)
            grown[:start] = self._buffer[:start]
            self._buffer = grown
        self._buffer[start:needed] = embeddings
        for offset, key in enumerate(keys):
            self._rows[key] = start + offset

    def calibration(self, task_name: str, dim: int) -> np.ndarray:
        """The task's cached embeddings at ``dim`` (renormalised): the int8 calibration set ``(N_task, dim)``."""
        rows = sorted(self._task_rows.get(task_name, ()))
        cached = self._calibration.get((task_name, dim))
        if cached is None or cached[0] != len(rows):
            cached = (len(rows), truncate_numpy(self._buffer[rows], dim))
            self._calibration[(task_name, dim)] = cached
        return cached[1]

    def uses_saved_int8(self, dim: int) -> bool:
        """Whether int8 at ``dim`` is scored with the model's own scales rather than ranges fitted on the task."""
        return self.int8_calibration is not None and dim in self.int8_calibration.scales

    def rotates_binary(self, dim: int) -> bool:
        """Whether binary codes at ``dim`` are taken after the model's saved rotation of the prefix."""
        return self.binary_calibration is not None and dim in self.binary_calibration.rotations

    def derive(
        self,
        embeddings: np.ndarray,
        dim: int,
        precision: str,
        task_name: str,
        prompt_type: PromptType | None = None,
    ) -> np.ndarray:
        """Cut full-size embeddings to ``dim``, renormalise and quantise: ``(N, D) -> (N, dim)`` float32 values.

        For ``binary+rescore`` queries stay float (they rescore the shortlist) and everything else becomes codes.
        ``binary+int8-rescore`` returns ``(N, 2 * dim)``: the codes (queries: their float prefix in the codes' space)
        beside the int8 values (queries: the float prefix) that rescore the shortlist; :class:`TruncatedEncoder`
        splits them.
        """
        truncated = truncate_numpy(embeddings, dim)  # (N, dim), unit rows
        if precision == "float32":
            return truncated
        if precision == "int8":
            if self.uses_saved_int8(dim):  # one scale per shell, dequantised: dot products track the float ones
                calibration = self.int8_calibration
                return calibration.dequantize(calibration.quantize(truncated, dim), dim)
            return int8_per_axis(truncated, self.calibration(task_name, dim))  # (N, dim) in [-128, 127]
        is_query = getattr(prompt_type, "value", None) == "query"
        if precision == "binary+int8-rescore":
            codes = self.derive(embeddings, dim, "binary+rescore", task_name, prompt_type)
            rescoring = truncated if is_query else self.derive(embeddings, dim, "int8", task_name, prompt_type)
            return np.concatenate([codes, rescoring], axis=1).astype(np.float32)
        if self.rotates_binary(dim) and precision.startswith("binary"):
            truncated = self.binary_calibration.rotate(truncated, dim)  # float scores unchanged, bits balanced
        if precision == "binary" or (precision == "binary+rescore" and not is_query):
            return binary_codes(truncated)  # (N, dim) in {-1, +1}
        if precision == "binary+rescore":
            return truncated
        raise ValueError(f"Unknown precision {precision!r}: use one of {list(PRECISIONS)}.")


class TruncatedEncoder:
    """An mteb ``EncoderProtocol`` serving an :class:`EmbeddingCache` at one dimension and precision.

    Its ``mteb_model_meta`` carries ``experiment_kwargs`` ``{"embed_dim": dim}`` (plus ``"output_dtypes"`` for int8
    and binary), so mteb's result cache stores each dimension under its own ``experiments/embed_dim_<dim>...`` folder
    and no two dimensions ever shadow each other. Similarity is cosine (the dot product, on float32 vectors).
    """

    def __init__(self, cache: EmbeddingCache, dim: int, precision: str = "float32") -> None:
        check_precisions([precision])
        if not 1 <= dim <= cache.full_dim:
            raise ValueError(f"dim must be between 1 and the model's dimension {cache.full_dim}, got {dim}.")
        self.cache, self.dim, self.precision = cache, dim, precision
        stored = precision.split("+")[0]
        experiment: dict[str, Any] = {"embed_dim": dim}
        if precision != "float32":
            experiment["output_dtypes"] = OutputDType(stored).value
        if precision in ("binary+rescore", "binary+int8-rescore"):
            experiment["rescore"] = RESCORE_K
        if precision == "binary+int8-rescore":
            experiment["rescore_with"] = "int8"
        if precision in ("int8", "binary+int8-rescore") and cache.uses_saved_int8(dim):
            experiment["int8_calibration"] = "shells"
        if precision.startswith("binary") and cache.rotates_binary(dim):
            experiment["binary_rotation"] = "prefix"
        self._meta = cache.meta.model_copy(
            update={"embed_dim": dim, "experiment_kwargs": experiment, "output_dtypes": [OutputDType(stored)]}
        )

    @property
    def mteb_model_meta(self) -> ModelMeta:
        return self._meta

    def encode(self, inputs: DataLoader, *, task_metadata: TaskMetadata, **kwargs: Any) -> np.ndarray:
        """The cache's vectors for ``inputs`` at this view's dim and precision; the arguments are those of
        :meth:`EmbeddingCache.encode` (mteb's ``EncoderProtocol.encode``), passed on as they came."""
        full = self.cache.encode(inputs, task_metadata=task_metadata, **kwargs)
        return self.cache.derive(full, self.dim, self.precision, task_metadata.name, kwargs.get("prompt_type"))

    def similarity(self, embeddings1: Array, embeddings2: Array) -> Array:
        if self.precision == "binary+rescore":  # float queries x document codes: Hamming shortlist, then rescore
            return torch.from_numpy(rescore_binary(np.asarray(embeddings1), np.asarray(embeddings2)))
        if self.precision == "binary+int8-rescore":  # the same shortlist, rescored against the int8 codes
            a, b, dim = np.asarray(embeddings1), np.asarray(embeddings2), self.dim
            scores = rescore_binary(a[:, :dim], b[:, :dim], rescore_with=(a[:, dim:], b[:, dim:]))
            return torch.from_numpy(scores)
        return cos_sim(embeddings1, embeddings2)

    def similarity_pairwise(self, embeddings1: Array, embeddings2: Array) -> Array:
        if self.precision == "binary+int8-rescore":  # no shortlist to rescore: the codes, as binary+rescore
            embeddings1, embeddings2 = embeddings1[:, : self.dim], embeddings2[:, : self.dim]
        return pairwise_cos_sim(embeddings1, embeddings2)
