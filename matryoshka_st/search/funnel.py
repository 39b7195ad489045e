"""Funnel search: shortlist with a short prefix of Matryoshka embeddings, rerank the shortlist with longer ones.

This is the adaptive retrieval of the MRL paper (Kusupati et al., 2022). FAISS does the first stage (see
:mod:`matryoshka_st.search.first_stage`: flat, HNSW or IVF indexes over truncated + renormalised prefixes, or their
int8 / binary codes); what this module adds by hand is the cascade around it: the later stages gather the
shortlisted vectors and rescore them with longer prefixes, up to the full dimension, vectorised across queries, and
the index saves, loads (the full vectors optionally memory-mapped) and reports its memory.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from matryoshka_st.dims import full_embedding_dim, truncate_numpy
from matryoshka_st.search._inputs import as_float_matrix, encode, query_matrix
from matryoshka_st.search.first_stage import (
    BINARY_STAGES,
    FirstStageParams,
    apply_search_params,
    build_first_stage,
    check_nlist,
    index_bytes,
    inner_products_by_idx,
    search_first_stage,
)
from matryoshka_st.search.stages import validate_stages

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from matryoshka_st.quantization import BinaryCalibration
    from matryoshka_st.search.tune import TuneResult

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MemoryReport:
    """Bytes held by a :class:`FunnelIndex`, per corpus vector and in total.

    ``first_stage_bytes_per_vector`` is the FAISS index searched for every query (codes plus graph links or list
    ids, as FAISS serialises it); ``rerank_bytes_per_vector`` the float32 full-dim vectors (plus one prefix norm per
    reranking stage) read only for shortlisted ids, which ``FunnelIndex.load(path, mmap=True)`` leaves on disk.
    """

    num_vectors: int
    first_stage_bytes_per_vector: float
    rerank_bytes_per_vector: float
    bytes_per_vector: float
    total_bytes: int


class FunnelIndex:
    """Search unit-length Matryoshka embeddings in stages: a short prefix finds a shortlist, longer ones rerank it.

    ``stages=[(64, 1000), (128, 100)]`` searches the 64-dim prefixes for 1,000 candidates (FAISS), reranks those
    at 128 dims keeping 100, and reranks the 100 at ``full_dim`` to return the top ``k``. Every prefix is
    renormalised, so final scores are cosine similarities at ``full_dim``. When every shortlist holds the true
    top ``k``, results equal exact full-dim search. :meth:`tune` picks the schedule for a recall target.

    Args:
        embeddings: ``(N, D)`` corpus embeddings; only the first ``full_dim`` coordinates are kept.
        stages: ``(dim, shortlist)`` pairs with increasing dims and decreasing shortlists, see :func:`validate_stages`.
        full_dim: dimension of the final rerank; defaults to ``D``.
        first_stage: the FAISS index of the first stage. Flat (every vector scored): ``"float"`` (exact inner
            product), ``"int8"`` (8-bit scalar quantizer, 4x smaller), ``"binary"`` (sign bits, Hamming distance,
            32x smaller). Sublinear: ``"hnsw"``, ``"int8_hnsw"``, ``"binary_hnsw"`` (HNSW graphs on the float
            prefix, its int8 codes or its sign bits), ``"ivf"`` (inverted file on the float prefix).
        doc_ids: optional external ids, one per row, saved with the index (``search`` returns row numbers).
        model_name_or_path: optional record of the model that made the embeddings, saved with the index.
        binary_calibration: for a ``binary`` / ``binary_hnsw`` first stage, the prefix rotations a model trained by
            ``matryoshka-st train`` saved for its sign bits (:class:`~matryoshka_st.quantization.BinaryCalibration`,
            read by :func:`~matryoshka_st.usage.load_binary_calibration`): corpus and query prefixes at a rotated dim
            take their bits after that rotation. Float scores are unchanged; it is saved with the index.
            :meth:`from_model` reads it from the model's folder by itself.
        hnsw_m, ef_construction, ef_search, nlist, nprobe: first-stage parameters, see
            :class:`~matryoshka_st.search.first_stage.FirstStageParams`; ``ef_search`` and ``nprobe`` can be changed
            later with :meth:`set_search_params`.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> corpus = rng.normal(size=(1000, 384)).astype("float32")
        >>> index = FunnelIndex.from_embeddings(corpus, stages=[(64, 200), (128, 50)])
        >>> scores, ids = index.search(corpus[:3], k=5)
        >>> ids[:, 0].tolist()
        [0, 1, 2]
        >>> hnsw = FunnelIndex.from_embeddings(corpus, stages=[(64, 100)], first_stage="hnsw", ef_search=200)
        >>> hnsw.search(corpus[:3], k=5)[1][:, 0].tolist()
        [0, 1, 2]
    """

    def __init__(
        self,
        embeddings: np.ndarray,
        stages: Sequence[Sequence[int]],
        full_dim: int | None = None,
        first_stage: str = "float",
        doc_ids: Sequence[str] | None = None,
        model_name_or_path: str | None = None,
        *,
        binary_calibration: BinaryCalibration | None = None,
        hnsw_m: int = FirstStageParams.hnsw_m,
        ef_construction: int = FirstStageParams.ef_construction,
        ef_search: int = FirstStageParams.ef_search,
        nlist: int | None = FirstStageParams.nlist,
        nprobe: int = FirstStageParams.nprobe,
        _first_stage_index=None,
        _prefix_norms: np.ndarray | None = None,
    ) -> None:
        self.params = FirstStageParams(first_stage, hnsw_m, ef_construction, ef_search, nlist, nprobe)
        embeddings = as_float_matrix(embeddings, "embeddings")
        full_dim = embeddings.shape[1] if full_dim is None else full_dim
        if (
            isinstance(full_dim, bool)
            or not isinstance(full_dim, Integral)
            or not 1 <= full_dim <= embeddings.shape[1]
        ):
            raise ValueError(
                f"full_dim {full_dim!r} is not in the embedding size: use 1 <= full_dim <= {embeddings.shape[1]}."
            )
        self.stages = validate_stages(stages, int(full_dim), first_stage)
        if len(embeddings) == 0:
            raise ValueError("The corpus is empty: pass at least one embedding.")
        if doc_ids is not None and len(doc_ids) != len(embeddings):
            raise ValueError(f"doc_ids has {len(doc_ids)} ids for {len(embeddings)} embeddings: give one per row.")
        self.full_dim = int(full_dim)
        self.source_dim = embeddings.shape[1]
        self.doc_ids = list(doc_ids) if doc_ids is not None else None
        self.model_name_or_path = model_name_or_path
        if binary_calibration is not None and first_stage not in BINARY_STAGES:
            raise ValueError(
                f"binary_calibration rotates sign bits; it needs a binary first stage {BINARY_STAGES}, not "
                f"{first_stage!r}."
            )
        self.binary_calibration = binary_calibration
        self.tuning: dict | None = None  # what tune() measured, saved with the index
        self._first_stage_bytes: int | None = None
        if _first_stage_index is None:
            # Normalised at full_dim, so the final rerank is a plain dot product with the normalised query.
            self.embeddings = np.ascontiguousarray(
                truncate_numpy(embeddings, self.full_dim), np.float32
            )  # (N, full_dim)
            self._prefix_norms = self._compute_prefix_norms([dim for dim, _ in self.stages[1:]])
            self._index = self._build_first_stage(self.stages[0][0])
            _warn_if_capped(self.stages, len(self.embeddings))
        else:
            self.embeddings = embeddings
            self._prefix_norms = _prefix_norms
            self._index = _first_stage_index
        self._model: SentenceTransformer | None = None

    @property
    def first_stage(self) -> str:
        return self.params.kind

    @classmethod
    def from_embeddings(
        cls,
        embeddings: np.ndarray | torch.Tensor,
        stages: Sequence[Sequence[int]] = ((64, 200), (128, 50)),
        full_dim: int | None = None,
        first_stage: str = "float",
        doc_ids: Sequence[str] | None = None,
        **first_stage_params,
    ) -> FunnelIndex:
        """Build an index from ``(N, D)`` embeddings (numpy or torch); see the class docstring for the arguments."""
        return cls(
            embeddings, stages, full_dim=full_dim, first_stage=first_stage, doc_ids=doc_ids, **first_stage_params
        )

    @classmethod
    def from_model(
        cls,
        model: SentenceTransformer,
        texts: Sequence[str],
        stages: Sequence[Sequence[int]] = ((64, 200), (128, 50)),
        full_dim: int | None = None,
        first_stage: str = "float",
        doc_ids: Sequence[str] | None = None,
        batch_size: int = 32,
        show_progress_bar: bool = True,
        model_name_or_path: str | None = None,
        binary_calibration: BinaryCalibration | None = None,
        **first_stage_params,
    ) -> FunnelIndex:
        """Encode ``texts`` with ``model`` (ignoring its ``truncate_dim``) and index them.

        Stages, first-stage parameters, ``full_dim`` and the corpus are checked before anything is encoded. The
        model is remembered, so ``search`` accepts texts. With a binary first stage and ``model_name_or_path`` a
        folder saved by ``matryoshka-st train``, the sign bits take the prefix rotations saved there unless
        ``binary_calibration`` is given.

        Example:
            >>> from sentence_transformers import SentenceTransformer
            >>> from matryoshka_st._bundled import bundled_model_path
            >>> model = SentenceTransformer(bundled_model_path())
            >>> texts = ["A cat sits on the mat.", "Stock markets fell today.", "A kitten naps on a rug."]
            >>> index = FunnelIndex.from_model(model, texts, stages=[(32, 3), (128, 2)], show_progress_bar=False)
            >>> scores, ids = index.search(["a sleeping cat"], k=2)
            >>> sorted(ids[0].tolist())
            [0, 2]
        """
        FirstStageParams(first_stage, **first_stage_params)
        model_dim = full_embedding_dim(model)
        if model_dim is None:
            raise ValueError(
                "The model does not report its embedding dimension; encode the texts and use from_embeddings."
            )
        if full_dim is not None and not (isinstance(full_dim, Integral) and 1 <= full_dim <= model_dim):
            raise ValueError(
                f"full_dim {full_dim!r} is not in the model's embedding size: use 1 <= full_dim <= {model_dim}."
            )
        validate_stages(stages, full_dim or model_dim, first_stage)
        if isinstance(texts, str) or len(texts) == 0:
            raise ValueError("texts must be a non-empty list of strings (the corpus is empty).")
        if doc_ids is not None and len(doc_ids) != len(texts):
            raise ValueError(f"doc_ids has {len(doc_ids)} ids for {len(texts)} texts: give one per text.")
        if first_stage == "ivf":
            check_nlist(first_stage_params.get("nlist"), len(texts))
        if binary_calibration is None and first_stage in BINARY_STAGES and model_name_or_path is not None:
            from matryoshka_st.usage import load_binary_calibration

            binary_calibration = load_binary_calibration(model_name_or_path)
        embeddings = encode(model, texts, batch_size, show_progress_bar)
        index = cls(
            embeddings,
            stages,
            full_dim=full_dim,
            first_stage=first_stage,
            doc_ids=doc_ids,
            model_name_or_path=model_name_or_path,
            binary_calibration=binary_calibration,
            **first_stage_params,
        )
        index._model = model
        return index

    def __len__(self) -> int:
        return len(self.embeddings)

    def __repr__(self) -> str:
        return (
            f"FunnelIndex(num_vectors={len(self)}, stages={self.stages}, full_dim={self.full_dim}, "
            f"first_stage={self.first_stage!r})"
        )

    def set_search_params(
        self, stages: Sequence[Sequence[int]] | None = None, ef_search: int | None = None, nprobe: int | None = None
    ) -> None:
        """Change what a search does without rebuilding: the shortlists and rerank dims of ``stages`` (the first
        stage's dim is fixed by its index), HNSW ``ef_search`` or IVF ``nprobe``.

        Example:
            >>> import numpy as np
            >>> index = FunnelIndex.from_embeddings(np.eye(16, dtype="float32"), stages=[(8, 4)], first_stage="hnsw")
            >>> index.set_search_params(stages=[(8, 6)], ef_search=32)
            >>> index.stages, index.params.ef_search
            ([(8, 6)], 32)
        """
        params = self.params.replace(ef_search=ef_search, nprobe=nprobe)
        new_stages = self.stages
        if stages is not None:
            new_stages = validate_stages(stages, self.full_dim, self.first_stage)
            if new_stages[0][0] != self.stages[0][0]:
                raise ValueError(
                    f"The first stage's index holds {self.stages[0][0]}-dim prefixes; stages must start with dim "
                    f"{self.stages[0][0]}, not {new_stages[0][0]} (build a new index for another first-stage dim)."
                )
            old_dims = [dim for dim, _ in self.stages[1:]]
            new_dims = [dim for dim, _ in new_stages[1:]]
            if new_dims != old_dims or len(self._prefix_norms) != len(new_dims):
                self._prefix_norms = self._compute_prefix_norms(new_dims)
            _warn_if_capped(new_stages, len(self))
        self.params, self.stages = params, new_stages
        apply_search_params(self._index, params)

    def search(
        self,
        queries: np.ndarray | torch.Tensor | Sequence[str] | str,
        k: int = 10,
        model: SentenceTransformer | None = None,
        batch_size: int = 32,
        show_progress_bar: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The top ``k`` rows for each query: ``(scores, ids)``, both ``(num_queries, k)``, best first.

        Args:
            queries: ``(Q, D)`` query embeddings (``D`` is ``full_dim`` or the dim the index was built from), or
                texts, encoded with ``model`` or the model given to :meth:`from_model`.
            k: results per query, at most the last shortlist size and the corpus size.
            model: the model that encodes text queries.
            batch_size, show_progress_bar: passed to ``model.encode`` for text queries.

        Returns:
            ``scores`` float32 cosine similarities at ``full_dim`` and ``ids`` int64 row numbers (``-1`` with score
            ``-inf`` where a sublinear first stage found fewer than ``k`` candidates).
        """
        if isinstance(k, bool) or not isinstance(k, Integral) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}.")
        if k > len(self):
            raise ValueError(f"k={k} is larger than the corpus ({len(self)} vectors): use k <= {len(self)}.")
        if k > self.stages[-1][1]:
            raise ValueError(
                f"k={k} is larger than the last shortlist ({self.stages[-1][1]}, stages={self.stages}): "
                f"use k <= {self.stages[-1][1]} or a longer shortlist."
            )
        queries = self._query_matrix(queries, model, batch_size, show_progress_bar)  # (Q, full_dim)
        if len(queries) == 0:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
        ids = self._shortlist(queries)  # (Q, S)
        return self._rerank(queries, ids, k)

    def _query_matrix(self, queries, model, batch_size: int, show_progress_bar: bool) -> np.ndarray:
        return query_matrix(
            queries, model or self._model, batch_size, show_progress_bar, self.full_dim, self.source_dim
        )

    def _shortlist(self, queries: np.ndarray, shortlist: int | None = None) -> np.ndarray:
        """First-stage ids ``(Q, S)`` for ``(Q, full_dim)`` normalised queries."""
        dim, size = self.stages[0]
        size = min(shortlist or size, len(self))
        return search_first_stage(self._index, self.params, self._code_space(truncate_numpy(queries, dim), dim), size)

    def _code_space(self, prefixes: np.ndarray, dim: int) -> np.ndarray:
        """``dim``-prefixes in the space the first stage indexes: rotated where a binary calibration says so."""
        if self.binary_calibration is None:
            return prefixes
        return np.ascontiguousarray(self.binary_calibration.rotate(prefixes, dim), dtype=np.float32)

    def _build_first_stage(self, dim: int):
        """A first-stage FAISS index over the corpus' ``dim``-prefixes (tune builds one per first dim it tries)."""
        return build_first_stage(self._code_space(truncate_numpy(self.embeddings, dim), dim), self.params)

    def _rerank(self, queries: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The later stages on first-stage ids ``(Q, S)``: rescore at each rerank dim, then at ``full_dim``."""
        for stage_number, (dim, keep) in enumerate(self.stages[1:]):
            scores = self._rescore(queries, ids, dim, self._prefix_norms[stage_number])
            ids = _top(scores, ids, min(keep, ids.shape[1]))[1]
        scores = self._rescore(queries, ids, self.full_dim, None)
        return _top(scores, ids, min(k, ids.shape[1]))

    def _rescore(self, queries: np.ndarray, ids: np.ndarray, dim: int, norms: np.ndarray | None) -> np.ndarray:
        """Cosine similarity at ``dim`` between each query and its candidates: ``(Q, S)``; ``-inf`` for id ``-1``."""
        q = truncate_numpy(queries, dim)  # (Q, dim), unit length
        if dim < self.full_dim:
            # Zero-padded, the query's product with a full row is its product with the row's prefix: FAISS reads the
            # candidates in place (no gathered copy), and a memory-mapped table only for the shortlisted rows.
            q = np.concatenate([q, np.zeros((len(q), self.full_dim - dim), np.float32)], axis=1)
        scores = inner_products_by_idx(q, self.embeddings, ids)
        if norms is not None:
            scores /= np.maximum(norms[np.where(ids < 0, 0, ids)], 1e-12)
        return scores

    def _compute_prefix_norms(self, dims: Sequence[int]) -> np.ndarray:
        """Norm of each prefix a later stage reranks at, ``(stages - 1, N)``: prefix scores become cosines."""
        norms = np.empty((len(dims), len(self.embeddings)), np.float32)
        for row, dim in enumerate(dims):
            norms[row] = np.linalg.norm(self.embeddings[:, :dim], axis=1)
        return norms

    def tune(
        self, queries: np.ndarray | torch.Tensor | Sequence[str], target_recall: float = 0.99, k: int = 10, **options
    ) -> TuneResult:
        """Pick the fastest schedule (shortlists, rerank dims, ``ef_search`` / ``nprobe``, optionally the first-stage
        dim) whose recall@``k`` against exact search meets ``target_recall`` on a sample of ``queries``, keep it,
        and report recall and speed on the held-back queries. See :func:`matryoshka_st.search.tune.tune_index`."""
        from matryoshka_st.search.tune import tune_index

        return tune_index(self, queries, target_recall=target_recall, k=k, **options)

    def memory_report(self) -> MemoryReport:
        """Bytes per vector of the first-stage index (measured) and of the rerank store, and the total."""
        n = len(self)
        if self._first_stage_bytes is None:
            self._first_stage_bytes = index_bytes(self._index, self.first_stage)
        first = self._first_stage_bytes / n
        rerank = 4 * self.full_dim + 4 * len(self._prefix_norms)
        return MemoryReport(
            num_vectors=n,
            first_stage_bytes_per_vector=float(first),
            rerank_bytes_per_vector=float(rerank),
            bytes_per_vector=float(first + rerank),
            total_bytes=int(round((first + rerank) * n)),
        )

    def bytes_per_vector(self) -> float:
        """Total bytes per corpus vector (first-stage index + full-dim vectors for reranking)."""
        return self.memory_report().bytes_per_vector

    def save(self, path: str | Path) -> None:
        """Write the index to the folder ``path``: config JSON (schedule, first-stage parameters, tuning record),
        the float32 vectors, prefix norms and the FAISS index."""
        from matryoshka_st.search.persistence import save_index

        save_index(self, path)

    @classmethod
    def load(cls, path: str | Path, mmap: bool = False) -> FunnelIndex:
        """Read an index written by :meth:`save`.

        Args:
            path: the index folder.
            mmap: memory-map the full-dim vectors instead of reading them, so only the first-stage index and the
                shortlisted rows are in RAM.

        Example:
            >>> import numpy as np, tempfile
            >>> index = FunnelIndex.from_embeddings(np.eye(8, dtype="float32"), stages=[(4, 8)])
            >>> folder = tempfile.mkdtemp()
            >>> index.save(folder)
            >>> FunnelIndex.load(folder).search(np.eye(8, dtype="float32")[:1], k=1)[1].tolist()
            [[0]]
        """
        from matryoshka_st.search.persistence import load_index

        return load_index(cls, path, mmap)


def _warn_if_capped(stages: Sequence[tuple[int, int]], num_vectors: int) -> None:
    """Say so when a shortlist is longer than the corpus: it holds the whole corpus, and the stage does nothing."""
    capped = [(dim, shortlist) for dim, shortlist in stages if shortlist > num_vectors]
    if capped:
        logger.warning(
            "Shortlist(s) %s are longer than the corpus (%d vectors): each is capped at %d, so its stage keeps every "
            "vector. Use shorter shortlists for a corpus this size.",
            ", ".join(f"{shortlist} at dim {dim}" for dim, shortlist in capped),
            num_vectors,
            num_vectors,
        )


def _top(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of each row of ``scores`` ``(Q, S)``, sorted best first, with their ids."""
    top_scores, order = torch.topk(torch.from_numpy(scores), k, dim=1)
    return top_scores.numpy(), np.take_along_axis(ids, order.numpy(), axis=1)
