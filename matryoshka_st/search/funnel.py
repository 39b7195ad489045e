"""Funnel search: shortlist with a short prefix of Matryoshka embeddings, rerank the shortlist with longer ones.

This is the adaptive retrieval of the MRL paper (Kusupati et al., 2022). FAISS does the first stage (exact inner
product on truncated + renormalised prefixes, or int8 / binary codes of them); what this module adds by hand is the
cascade around it: the later stages gather the shortlisted vectors and rescore them with longer prefixes, up to the
full dimension, vectorised across queries, and the index saves, loads and reports its memory.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from numbers import Integral
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from matryoshka_st.dims import full_embedding_dim, truncate_numpy

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

FirstStage = Literal["float", "int8", "binary"]
FIRST_STAGES = ("float", "int8", "binary")
FORMAT_VERSION = 1
CONFIG_NAME = "funnel_index.json"
EMBEDDINGS_NAME = "embeddings.npy"
PREFIX_NORMS_NAME = "prefix_norms.npy"
FIRST_STAGE_NAME = "first_stage.faiss"
# Bounds the (queries, shortlist, dim) float32 block gathered for one rerank step.
RERANK_BLOCK_BYTES = 256 * 2**20


def _import_faiss():
    try:
        import faiss
    except ImportError as error:
        raise ImportError(
            "Funnel search needs FAISS: pip install 'matryoshka_st[search]'  (or pip install faiss-cpu)."
        ) from error
    return faiss


@dataclass(frozen=True)
class MemoryReport:
    """Bytes held by a :class:`FunnelIndex`, per corpus vector and in total.

    ``first_stage_bytes_per_vector`` is the FAISS index searched for every query; ``rerank_bytes_per_vector`` the
    float32 full-dim vectors (plus one prefix norm per reranking stage) read only for shortlisted ids, which
    ``FunnelIndex.load(path, mmap=True)`` leaves on disk.
    """

    num_vectors: int
    first_stage_bytes_per_vector: float
    rerank_bytes_per_vector: float
    bytes_per_vector: float
    total_bytes: int


def validate_stages(
    stages: Sequence[Sequence[int]], full_dim: int, first_stage: str = "float"
) -> list[tuple[int, int]]:
    """Check a funnel schedule ``[(dim, shortlist), ...]`` against the full dimension and return it as tuples.

    Dims must increase and shortlist sizes must decrease from stage to stage; the final rerank at ``full_dim`` is
    implicit, so only the first stage may use ``full_dim`` itself. An int8 or binary first stage may be longer than
    the float stage after it, as in ``[(384, 2000), (128, 200)]`` with ``first_stage="binary"``.

    Raises:
        ValueError: naming the bad stage and what was expected.

    Example:
        >>> validate_stages([[64, 200], [128, 50]], full_dim=384)
        [(64, 200), (128, 50)]
    """
    if first_stage not in FIRST_STAGES:
        raise ValueError(f"first_stage must be one of {FIRST_STAGES}, got {first_stage!r}.")
    if isinstance(full_dim, bool) or not isinstance(full_dim, Integral) or full_dim < 1:
        raise ValueError(f"full_dim must be a positive integer, got {full_dim!r}.")
    if stages is None or len(stages) == 0:
        raise ValueError("stages is empty: pass at least one (dim, shortlist) pair, e.g. [(64, 200), (128, 50)].")
    checked = []
    for i, stage in enumerate(stages):
        if len(stage) != 2 or any(isinstance(v, bool) or not isinstance(v, Integral) for v in stage):
            raise ValueError(f"Stage {i} must be a pair of integers (dim, shortlist), got {stage!r}.")
        dim, shortlist = int(stage[0]), int(stage[1])
        if not 1 <= dim <= full_dim:
            raise ValueError(
                f"Stage {i} dim {dim} is not in the embedding size: use 1 <= dim <= {full_dim} (the full dim)."
            )
        if i > 0 and dim == full_dim:
            raise ValueError(
                f"Stage {i} reranks at the full dim {full_dim}, which the final rerank always does: drop that stage."
            )
        if shortlist < 1:
            raise ValueError(f"Stage {i} shortlist must be >= 1, got {shortlist}.")
        # A quantized first stage may be longer than the float stage after it (e.g. binary 384 -> float 128).
        if i > 1 or (i == 1 and first_stage == "float"):
            if dim <= checked[-1][0]:
                raise ValueError(f"Stage dims must increase, but stage {i} has dim {dim} after {checked[-1][0]}.")
        if checked and shortlist >= checked[-1][1]:
            raise ValueError(
                f"Shortlist sizes must decrease, but stage {i} keeps {shortlist} of a shortlist of {checked[-1][1]}."
            )
        checked.append((dim, shortlist))
    if first_stage == "binary" and checked[0][0] % 8:
        raise ValueError(f"A binary first stage packs 8 dims per byte: use a dim divisible by 8, not {checked[0][0]}.")
    return checked


def _as_float_matrix(embeddings, name: str) -> np.ndarray:
    if isinstance(embeddings, torch.Tensor):
        embeddings = embeddings.detach().cpu().float().numpy()
    if not isinstance(embeddings, np.ndarray):  # keeps a np.memmap as it is
        embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2:
        raise ValueError(f"{name} must be a 2-d array (num, dim), got shape {embeddings.shape}.")
    if not np.issubdtype(embeddings.dtype, np.floating):
        raise ValueError(f"{name} must be float embeddings, got dtype {embeddings.dtype}.")
    return embeddings


def _build_first_stage(vectors: np.ndarray, kind: str):
    """A FAISS index over the ``(N, d)`` unit-length prefixes: exact inner product, int8 codes or sign bits."""
    faiss = _import_faiss()
    dim = vectors.shape[1]
    if kind == "binary":
        from sentence_transformers import quantize_embeddings

        index = faiss.IndexBinaryFlat(dim)
        index.add(quantize_embeddings(vectors, precision="ubinary"))
        return index
    if kind == "int8":
        index = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
    else:
        index = faiss.IndexFlatIP(dim)
    index.add(vectors)
    return index


class FunnelIndex:
    """Search unit-length Matryoshka embeddings in stages: a short prefix finds a shortlist, longer ones rerank it.

    ``stages=[(64, 1000), (128, 100)]`` searches all vectors at 64 dims for 1,000 candidates (FAISS), reranks those
    at 128 dims keeping 100, and reranks the 100 at ``full_dim`` to return the top ``k``. Every prefix is
    renormalised, so final scores are cosine similarities at ``full_dim``. When every shortlist holds the true
    top ``k``, results equal exact full-dim search.

    Args:
        embeddings: ``(N, D)`` corpus embeddings; only the first ``full_dim`` coordinates are kept.
        stages: ``(dim, shortlist)`` pairs with increasing dims and decreasing shortlists, see :func:`validate_stages`.
        full_dim: dimension of the final rerank; defaults to ``D``.
        first_stage: ``"float"`` (exact inner product), ``"int8"`` (FAISS 8-bit scalar quantizer, 4x smaller) or
            ``"binary"`` (sign bits searched by Hamming distance, 32x smaller).
        doc_ids: optional external ids, one per row, saved with the index (``search`` returns row numbers).
        model_name_or_path: optional record of the model that made the embeddings, saved with the index.

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> corpus = rng.normal(size=(1000, 384)).astype("float32")
        >>> index = FunnelIndex.from_embeddings(corpus, stages=[(64, 200), (128, 50)])
        >>> scores, ids = index.search(corpus[:3], k=5)
        >>> ids[:, 0].tolist()
        [0, 1, 2]
    """

    def __init__(
        self,
        embeddings: np.ndarray,
        stages: Sequence[Sequence[int]],
        full_dim: int | None = None,
        first_stage: FirstStage = "float",
        doc_ids: Sequence[str] | None = None,
        model_name_or_path: str | None = None,
        *,
        _first_stage_index=None,
        _prefix_norms: np.ndarray | None = None,
    ) -> None:
        embeddings = _as_float_matrix(embeddings, "embeddings")
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
        self.first_stage = first_stage
        self.doc_ids = list(doc_ids) if doc_ids is not None else None
        self.model_name_or_path = model_name_or_path
        if _first_stage_index is None:
            # Normalised at full_dim, so the final rerank is a plain dot product with the normalised query.
            self.embeddings = truncate_numpy(embeddings, self.full_dim)  # (N, full_dim)
            # Norm of each prefix that a later stage reranks at: prefix scores are cosines without renormalising.
            rerank_dims = [dim for dim, _ in self.stages[1:]]
            self._prefix_norms = np.empty((len(rerank_dims), len(self.embeddings)), np.float32)  # (stages - 1, N)
            for row, dim in enumerate(rerank_dims):
                self._prefix_norms[row] = np.linalg.norm(self.embeddings[:, :dim], axis=1)
            self._index = _build_first_stage(truncate_numpy(self.embeddings, self.stages[0][0]), first_stage)
        else:
            self.embeddings = embeddings
            self._prefix_norms = _prefix_norms
            self._index = _first_stage_index
        self._model: SentenceTransformer | None = None

    @classmethod
    def from_embeddings(
        cls,
        embeddings: np.ndarray | torch.Tensor,
        stages: Sequence[Sequence[int]] = ((64, 200), (128, 50)),
        full_dim: int | None = None,
        first_stage: FirstStage = "float",
        doc_ids: Sequence[str] | None = None,
    ) -> FunnelIndex:
        """Build an index from ``(N, D)`` embeddings (numpy or torch); see the class docstring for the arguments."""
        return cls(embeddings, stages, full_dim=full_dim, first_stage=first_stage, doc_ids=doc_ids)

    @classmethod
    def from_model(
        cls,
        model: SentenceTransformer,
        texts: Sequence[str],
        stages: Sequence[Sequence[int]] = ((64, 200), (128, 50)),
        full_dim: int | None = None,
        first_stage: FirstStage = "float",
        doc_ids: Sequence[str] | None = None,
        batch_size: int = 32,
        show_progress_bar: bool = True,
        model_name_or_path: str | None = None,
    ) -> FunnelIndex:
        """Encode ``texts`` with ``model`` (ignoring its ``truncate_dim``) and index them.

        Stages, ``full_dim`` and the corpus are checked before anything is encoded. The model is remembered, so
        ``search`` accepts texts.

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
        embeddings = _encode(model, texts, batch_size, show_progress_bar)
        index = cls(
            embeddings,
            stages,
            full_dim=full_dim,
            first_stage=first_stage,
            doc_ids=doc_ids,
            model_name_or_path=model_name_or_path,
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
            ``scores`` float32 cosine similarities at ``full_dim`` and ``ids`` int64 row numbers.
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
        if isinstance(queries, str) or (isinstance(queries, Sequence) and queries and isinstance(queries[0], str)):
            model = model or self._model
            if model is None:
                raise ValueError("Text queries need a model: pass model=... or build the index with from_model.")
            queries = _encode(
                model, [queries] if isinstance(queries, str) else list(queries), batch_size, show_progress_bar
            )
        queries = _as_float_matrix(queries, "queries")
        if queries.shape[1] not in (self.full_dim, self.source_dim):
            raise ValueError(
                f"Queries have dim {queries.shape[1]} but the index was built from {self.source_dim}-dim embeddings "
                f"(full_dim {self.full_dim}): encode the queries with the same model."
            )
        queries = truncate_numpy(queries, self.full_dim)  # (Q, full_dim)
        if len(queries) == 0:
            return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)

        first_dim, first_shortlist = self.stages[0]
        shortlist = min(first_shortlist, len(self))
        ids = self._search_first_stage(truncate_numpy(queries, first_dim), shortlist)  # (Q, S)
        for stage_number, (dim, keep) in enumerate(self.stages[1:]):
            scores = self._rescore(queries, ids, dim, self._prefix_norms[stage_number])
            ids = _top(scores, ids, min(keep, ids.shape[1]))[1]
        scores = self._rescore(queries, ids, self.full_dim, None)
        return _top(scores, ids, k)

    def _search_first_stage(self, queries: np.ndarray, shortlist: int) -> np.ndarray:
        if self.first_stage == "binary":
            from sentence_transformers import quantize_embeddings

            _, ids = self._index.search(quantize_embeddings(queries, precision="ubinary"), shortlist)
        else:
            _, ids = self._index.search(np.ascontiguousarray(queries), shortlist)
        return ids.astype(np.int64, copy=False)

    def _rescore(self, queries: np.ndarray, ids: np.ndarray, dim: int, norms: np.ndarray | None) -> np.ndarray:
        """Cosine similarity at ``dim`` between each query and its candidates: ``(Q, S)``."""
        q = torch.from_numpy(truncate_numpy(queries, dim))  # (Q, dim)
        num_queries, shortlist = ids.shape
        block = max(1, RERANK_BLOCK_BYTES // max(1, shortlist * dim * 4))
        out = torch.empty((num_queries, shortlist), dtype=torch.float32)
        for start in range(0, num_queries, block):
            rows = ids[start : start + block]
            # numpy fancy indexing copies just the prefix columns, contiguously (faster than torch indexing here),
            # and reads a memory-mapped table row by row.
            candidates = torch.from_numpy(self.embeddings[rows.reshape(-1), :dim]).view(len(rows), shortlist, dim)
            out[start : start + block] = torch.bmm(candidates, q[start : start + block, :, None])[..., 0]  # (B, S)
        scores = out.numpy()
        if norms is not None:
            scores /= np.maximum(norms[ids], 1e-12)
        return scores

    def memory_report(self) -> MemoryReport:
        """Bytes per vector of the first-stage index and of the rerank store, and the total."""
        n = len(self)
        dim = self.stages[0][0]
        first = {"float": 4 * dim, "int8": dim, "binary": dim / 8}[self.first_stage]
        rerank = 4 * self.full_dim + 4 * len(self._prefix_norms)
        return MemoryReport(
            num_vectors=n,
            first_stage_bytes_per_vector=float(first),
            rerank_bytes_per_vector=float(rerank),
            bytes_per_vector=float(first + rerank),
            total_bytes=int(round((first + rerank) * n)),
        )

    def bytes_per_vector(self) -> float:
        """Total bytes per corpus vector (first-stage codes + full-dim vectors for reranking)."""
        return self.memory_report().bytes_per_vector

    def save(self, path: str | Path) -> None:
        """Write the index to the folder ``path``: config JSON, the float32 vectors, prefix norms and FAISS index.

        The files are written into a temporary sibling folder that then replaces ``path``, so a killed build leaves
        the old index or the new one, never half of one (where ``path`` holds other files too, only the index files
        are replaced, the config last). Refusing to replace an index is the caller's choice.
        """
        faiss = _import_faiss()
        final = Path(path)
        final.parent.mkdir(parents=True, exist_ok=True)
        # written whole into a sibling folder, then renamed: a reader never sees a half-written index
        path = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        config = {
            "format_version": FORMAT_VERSION,
            "stages": [list(stage) for stage in self.stages],
            "full_dim": self.full_dim,
            "source_dim": self.source_dim,
            "first_stage": self.first_stage,
            "num_vectors": len(self),
            "model_name_or_path": self.model_name_or_path,
            "doc_ids": self.doc_ids,
            "memory": asdict(self.memory_report()),
        }
        np.save(path / EMBEDDINGS_NAME, np.asarray(self.embeddings))
        np.save(path / PREFIX_NORMS_NAME, self._prefix_norms)
        if self.first_stage == "binary":
            faiss.write_index_binary(self._index, str(path / FIRST_STAGE_NAME))
        else:
            faiss.write_index(self._index, str(path / FIRST_STAGE_NAME))
        (path / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        os.chmod(path, 0o777 & ~_umask())  # mkdtemp creates 0700
        names = {CONFIG_NAME, EMBEDDINGS_NAME, PREFIX_NORMS_NAME, FIRST_STAGE_NAME}
        if final.is_dir() and any(p.name not in names for p in final.iterdir()):
            # a folder holding other files too: replace the index files one by one, the config last
            for name in sorted(names - {CONFIG_NAME}) + [CONFIG_NAME]:
                os.replace(path / name, final / name)
            path.rmdir()
        elif final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
            os.rename(final, old / "index")
            os.rename(path, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(path, final)

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
        faiss = _import_faiss()
        path = Path(path)
        if not (path / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"No funnel index in {str(path)!r}: expected {CONFIG_NAME} written by save().")
        rebuild = "rebuild the index with 'matryoshka-st search build ... --overwrite'"
        try:
            config = json.loads((path / CONFIG_NAME).read_text(encoding="utf-8"))
            if not isinstance(config, dict):
                raise ValueError(f"a {type(config).__name__}, not an object")
            first_stage, stages, full_dim = config["first_stage"], config["stages"], config["full_dim"]
        except (ValueError, KeyError) as error:
            what = f"lacks the key {error}" if isinstance(error, KeyError) else f"is not valid ({error})"
            raise ValueError(f"{path / CONFIG_NAME} {what}: {rebuild}.") from None
        if config.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path} has format_version {config.get('format_version')!r}, expected {FORMAT_VERSION}.")
        try:
            if first_stage == "binary":
                first = faiss.read_index_binary(str(path / FIRST_STAGE_NAME))
            else:
                first = faiss.read_index(str(path / FIRST_STAGE_NAME))
        except RuntimeError as error:  # faiss reports a missing or truncated file as a RuntimeError
            reason = str(error).strip().splitlines()[-1] if str(error).strip() else "unreadable"
            raise ValueError(f"{path / FIRST_STAGE_NAME} cannot be read ({reason}): {rebuild}.") from None
        arrays = {}
        for name in (EMBEDDINGS_NAME, PREFIX_NORMS_NAME):
            try:
                arrays[name] = np.load(path / name, mmap_mode="r" if mmap and name == EMBEDDINGS_NAME else None)
            except (OSError, ValueError, EOFError) as error:
                raise ValueError(f"{path / name} cannot be read ({error}): {rebuild}.") from None
        index = cls(
            arrays[EMBEDDINGS_NAME],
            stages,
            full_dim=full_dim,
            first_stage=first_stage,
            doc_ids=config.get("doc_ids"),
            model_name_or_path=config.get("model_name_or_path"),
            _first_stage_index=first,
            _prefix_norms=arrays[PREFIX_NORMS_NAME],
        )
        index.source_dim = config["source_dim"]
        return index


def _top(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` best of each row of ``scores`` ``(Q, S)``, sorted best first, with their ids."""
    top_scores, order = torch.topk(torch.from_numpy(scores), k, dim=1)
    return top_scores.numpy(), np.take_along_axis(ids, order.numpy(), axis=1)


def _encode(model: SentenceTransformer, texts: list[str], batch_size: int, show_progress_bar: bool) -> np.ndarray:
    truncate_dim = getattr(model, "truncate_dim", None)
    try:
        model.truncate_dim = None  # the index truncates itself; it needs the full vectors
        return model.encode(
            texts, batch_size=batch_size, show_progress_bar=show_progress_bar, convert_to_numpy=True
        ).astype(np.float32)
    finally:
        model.truncate_dim = truncate_dim


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask
