"""The first stage of a funnel: a FAISS index over the short, renormalised prefixes, searched for a shortlist.

Every kind is a stock FAISS index; this module only chooses it, sets its search-time parameters and reads back how
many bytes it holds. Flat kinds scan every vector (``float``: exact inner product, ``int8``: 8-bit scalar quantizer,
``binary``: Hamming distance on sign bits); the sublinear kinds visit a fraction of them (``hnsw``: an HNSW graph on
the float prefix, ``int8_hnsw``: on its 8-bit scalar-quantized codes, ``binary_hnsw``: on the sign bits, ``ivf``: an
inverted file of float prefixes).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from numbers import Integral

import numpy as np

FIRST_STAGES = ("float", "int8", "binary", "hnsw", "int8_hnsw", "binary_hnsw", "ivf")
BINARY_STAGES = ("binary", "binary_hnsw")
QUANTIZED_STAGES = ("int8", "binary", "int8_hnsw", "binary_hnsw")
HNSW_STAGES = ("hnsw", "int8_hnsw", "binary_hnsw")


def import_faiss():
    try:
        import faiss
    except ImportError as error:
        raise ImportError(
            "Funnel search needs FAISS: pip install 'matryoshka_st[search]'  (or pip install faiss-cpu)."
        ) from error
    return faiss


def _check_positive(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")


@dataclass(frozen=True)
class FirstStageParams:
    """Which FAISS index finds the shortlist, and its build and search parameters.

    Args:
        kind: one of ``float``, ``int8``, ``binary`` (flat: every vector is scored), ``hnsw``, ``int8_hnsw``,
            ``binary_hnsw`` (HNSW graphs on the float prefix, its int8 codes or its sign bits) or ``ivf`` (inverted
            file, exact scores inside the ``nprobe`` lists nearest to the query).
        hnsw_m: HNSW neighbours per node (FAISS ``M``); more is more accurate, larger and slower to build.
        ef_construction: HNSW candidate list while building.
        ef_search: HNSW candidate list while searching (raised to the shortlist size when that is larger).
        nlist: IVF lists; ``None`` picks ``4 * sqrt(N)``. At most ``N / 39``: FAISS's k-means wants ~39 training
            points per list, and a larger ``nlist`` is refused when the index is built (:func:`check_nlist`).
        nprobe: IVF lists scanned per query.

    Example:
        >>> FirstStageParams("hnsw", ef_search=128).ef_search
        128
    """

    kind: str = "float"
    hnsw_m: int = 32
    ef_construction: int = 100  # FAISS's 40 builds a graph that needs ~1.5x the ef_search for recall 0.99
    ef_search: int = 64
    nlist: int | None = None
    nprobe: int = 16

    def __post_init__(self) -> None:
        if self.kind not in FIRST_STAGES:
            raise ValueError(f"first_stage must be one of {FIRST_STAGES}, got {self.kind!r}.")
        for name in ("hnsw_m", "ef_construction", "ef_search", "nprobe"):
            _check_positive(name, getattr(self, name))
        _check_positive("nlist", self.nlist, allow_none=True)
        if self.kind in HNSW_STAGES and self.hnsw_m < 2:
            raise ValueError(f"hnsw_m must be >= 2 for an HNSW first stage, got {self.hnsw_m}.")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> FirstStageParams:
        return cls(**values)

    def replace(self, **changes) -> FirstStageParams:
        return replace(self, **{name: value for name, value in changes.items() if value is not None})


# FAISS's k-means warns below this many training points per centroid, and its lists come out poor
MIN_POINTS_PER_LIST = 39


def default_nlist(num_vectors: int) -> int:
    """``4 * sqrt(N)`` lists, but at least 39 training points per list (FAISS warns below that)."""
    return max(1, min(int(4 * math.sqrt(num_vectors)), num_vectors // MIN_POINTS_PER_LIST))


def check_nlist(nlist: int | None, num_vectors: int) -> None:
    """``ValueError`` when k-means cannot train ``nlist`` IVF lists on ``num_vectors`` vectors (FAISS wants ~39
    per list; one list always trains), naming the corpus size it would need and the largest ``nlist`` that fits.

    Example:
        >>> check_nlist(100, 40)
        Traceback (most recent call last):
        ...
        ValueError: nlist 100 needs at least 3,900 vectors to train (FAISS's k-means wants ~39 per list), but the corpus has 40: use nlist <= 1, or leave it unset (1 for this corpus).
    """
    most = max(1, num_vectors // MIN_POINTS_PER_LIST)
    if nlist is not None and nlist > most:
        raise ValueError(
            f"nlist {nlist} needs at least {nlist * MIN_POINTS_PER_LIST:,} vectors to train (FAISS's k-means wants "
            f"~{MIN_POINTS_PER_LIST} per list), but the corpus has {num_vectors:,}: use nlist <= {most}, or leave it "
            f"unset ({default_nlist(num_vectors)} for this corpus)."
        )


def quantize_binary(vectors: np.ndarray) -> np.ndarray:
    """Sign bits packed 8 per byte: ``(N, d)`` float -> ``(N, d / 8)`` uint8, as sentence-transformers' ``ubinary``."""
    return np.packbits(np.asarray(vectors) > 0, axis=-1)


def build_first_stage(vectors: np.ndarray, params: FirstStageParams):
    """A FAISS index over the ``(N, d)`` unit-length prefixes, with ``params``' search settings applied."""
    faiss = import_faiss()
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    num, dim = vectors.shape
    kind = params.kind
    if kind in BINARY_STAGES:
        if kind == "binary":
            index = faiss.IndexBinaryFlat(dim)
        else:
            index = faiss.IndexBinaryHNSW(dim, params.hnsw_m)
            index.hnsw.efConstruction = params.ef_construction
        index.add(quantize_binary(vectors))
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params.ef_construction
        index.add(vectors)
    elif kind == "int8_hnsw":
        index = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_8bit, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params.ef_construction
        index.train(vectors)
        index.add(vectors)
    elif kind == "ivf":
        check_nlist(params.nlist, num)
        nlist = params.nlist or default_nlist(num)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.min_points_per_centroid = 1  # one list on a corpus under 39 vectors: nothing for k-means to learn
        index.train(vectors)
        index.add(vectors)
    elif kind == "int8":
        index = faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.add(vectors)
    else:
        index = faiss.IndexFlatIP(dim)
        index.add(vectors)
    apply_search_params(index, params)
    return index


def apply_search_params(index, params: FirstStageParams) -> None:
    """Set ``efSearch`` (HNSW) or ``nprobe`` (IVF) on a built index; no-op for flat kinds."""
    if params.kind in HNSW_STAGES:
        index.hnsw.efSearch = params.ef_search
    elif params.kind == "ivf":
        index.nprobe = min(params.nprobe, index.nlist)


@contextmanager
def single_thread_if(condition: bool):
    """Run FAISS on one OpenMP thread while ``condition`` holds (a one-query search). FAISS opens a thread team
    even for one query, and on busy cores the idle thread's barrier costs tens of milliseconds (measured: 40-60 ms
    with 2 threads against 0.3 ms with 1 for a binary HNSW search)."""
    if not condition:
        yield
        return
    faiss = import_faiss()
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(threads)


def inner_products_by_idx(queries: np.ndarray, table: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """``(Q, S)`` inner products of each query ``(Q, D)`` with the rows ``ids[q]`` of ``table`` ``(N, D)``; ``-inf``
    for id ``-1``. FAISS reads the rows in place (``table`` may be a read-only memory map)."""
    faiss = import_faiss()
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if table.dtype != np.float32 or not table.flags.c_contiguous or table.shape[1] != queries.shape[1]:
        raise ValueError(f"The rerank table must be C-contiguous float32 with {queries.shape[1]} columns.")
    out = np.empty(ids.shape, dtype=np.float32)
    ptr = faiss.swig_ptr
    with single_thread_if(len(queries) == 1):
        faiss.fvec_inner_products_by_idx(
            ptr(out), ptr(queries), ptr(table), ptr(ids), queries.shape[1], ids.shape[0], ids.shape[1]
        )
    return out


def search_first_stage(index, params: FirstStageParams, queries: np.ndarray, shortlist: int) -> np.ndarray:
    """Row ids ``(Q, shortlist)`` int64 of each query's shortlist, best first (``-1`` pads a short result)."""
    with single_thread_if(len(queries) == 1):
        if params.kind in BINARY_STAGES:
            _, ids = index.search(quantize_binary(queries), shortlist)
        else:
            _, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), shortlist)
    return ids.astype(np.int64, copy=False)


def index_bytes(index, kind: str) -> int:
    """Bytes of a FAISS index as serialised: its codes, graph links or lists, close to what it holds in RAM."""
    faiss = import_faiss()
    if kind in BINARY_STAGES:
        return int(faiss.serialize_index_binary(index).size)
    return int(faiss.serialize_index(index).size)


def write_index(index, kind: str, path: str) -> None:
    faiss = import_faiss()
    (faiss.write_index_binary if kind in BINARY_STAGES else faiss.write_index)(index, path)


def read_index(kind: str, path: str):
    faiss = import_faiss()
    return (faiss.read_index_binary if kind in BINARY_STAGES else faiss.read_index)(path)
