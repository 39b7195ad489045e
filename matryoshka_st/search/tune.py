"""Tune a funnel for a recall target, and measure search speed (batch queries/s, single-query latency).

FAISS computes the exact ground truth (brute force at the full dim) and every first-stage shortlist. What this module
adds is the search over schedules: for each first-stage setting (prefix dim, ``ef_search`` or ``nprobe``) it searches
one candidate pool and evaluates every shorter shortlist as a prefix of that pool, which is exactly what FAISS
returns for the shorter shortlist with the same setting (the best ``S`` of the same candidates; with Hamming
distances, up to which of several tied candidates is cut). The cheapest shortlist meeting the target per setting is
then timed, and the fastest kept; the held-back recall is measured with real searches.

The search over schedules is the same for every backend: what it asks of the index (exact search, first stages at
other dims, a candidate pool with its cosines) is FAISS for a :class:`FunnelIndex` (``_FaissTarget``) and SQL for
:class:`~matryoshka_st.search.pgvector.PgvectorIndex`, whose ``_tune_target()`` returns its own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from numbers import Integral, Real
from typing import TYPE_CHECKING

import numpy as np
import torch

from matryoshka_st.search.first_stage import HNSW_STAGES, apply_search_params, import_faiss
from matryoshka_st.search.stages import validate_stages

if TYPE_CHECKING:
    from matryoshka_st.search.funnel import FunnelIndex

logger = logging.getLogger(__name__)

SHORTLIST_MULTIPLIERS = (1, 1.5, 2, 3, 4, 5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200)
EF_SEARCHES = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
NPROBES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)


@dataclass(frozen=True)
class SpeedReport:
    """Batch throughput and single-query latency of one search setting."""

    queries_per_second: float
    latency_p50_ms: float
    latency_p99_ms: float
    num_queries: int


@dataclass(frozen=True)
class TuneResult:
    """What :func:`tune_index` chose and measured; ``candidates`` lists every timed schedule that met the target."""

    stages: list[tuple[int, int]]
    ef_search: int | None
    nprobe: int | None
    target_recall: float
    k: int
    tune_recall: float
    holdout_recall: float
    holdout_speed: SpeedReport
    num_tune_queries: int
    num_holdout_queries: int
    candidates: list[dict]

    def to_dict(self) -> dict:
        return asdict(self)


def measure_speed(
    search: Callable[[np.ndarray], object], queries: np.ndarray, repeats: int = 3, num_single: int = 200
) -> SpeedReport:
    """Queries/s of ``search`` on the whole ``queries`` batch (best of ``repeats``, after a warm-up) and the p50 /
    p99 latency of ``num_single`` one-query searches.

    Example:
        >>> import numpy as np
        >>> report = measure_speed(lambda q: q @ q.T, np.ones((8, 4), dtype="float32"), num_single=4)
        >>> report.num_queries, report.queries_per_second > 0
        (8, True)
    """
    search(queries[: min(len(queries), 32)])
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        search(queries)
        best = min(best, time.perf_counter() - start)
    latencies = []
    for row in range(min(num_single, len(queries))):
        start = time.perf_counter()
        search(queries[row : row + 1])
        latencies.append(time.perf_counter() - start)
    latencies = latencies or [float("nan")]
    return SpeedReport(
        queries_per_second=len(queries) / max(best, 1e-9),
        latency_p50_ms=1000 * float(np.percentile(latencies, 50)),
        latency_p99_ms=1000 * float(np.percentile(latencies, 99)),
        num_queries=len(queries),
    )


def exact_top_k(corpus: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Ids ``(Q, k)`` of the exact top ``k`` by inner product (FAISS brute force; ``corpus`` may be a mmap)."""
    faiss = import_faiss()
    _, ids = faiss.knn(
        np.ascontiguousarray(queries, dtype=np.float32),
        np.ascontiguousarray(corpus, dtype=np.float32),
        k,
        metric=faiss.METRIC_INNER_PRODUCT,
    )
    return ids


def recall_at_k(ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """Mean share of each row of ``exact_ids`` ``(Q, k)`` found in the same row of ``ids``."""
    k = exact_ids.shape[1]
    hits = (ids[:, :k, None] == exact_ids[:, None, :]).any(axis=1).sum(axis=1)
    return float(np.mean(hits / k))


def _check(name: str, value, low: float, high: float, integer: bool = True) -> None:
    kind = Integral if integer else Real
    if isinstance(value, bool) or not isinstance(value, kind) or not low <= value <= high:
        raise ValueError(
            f"{name} must be {'an integer' if integer else 'a number'} in [{low}, {high}], got {value!r}."
        )


def _grid(name: str, values: Sequence[int] | None, default: Sequence[int], low: int, high: int) -> list[int]:
    """``values`` checked to lie in ``[low, high]``, or the ``default`` values that do; sorted, unique."""
    if values is None:
        checked = sorted({int(v) for v in default if low <= v <= high})
    else:
        for value in values:
            _check(f"each of {name}", value, low, high)
        checked = sorted({int(v) for v in values})
    if not checked:
        raise ValueError(f"{name} has no value in [{low}, {high}]: pass at least one.")
    return checked


def first_dim_ladder(dim: int, full_dim: int) -> list[int]:
    """The first-stage dims :func:`tune_index` climbs by default: ``dim``, doubling, then ``full_dim`` (exact).

    Example:
        >>> first_dim_ladder(64, 384)
        [64, 128, 256, 384]
    """
    dims = [dim]
    while dims[-1] * 2 < full_dim:
        dims.append(dims[-1] * 2)
    return dims if dims[-1] == full_dim else [*dims, full_dim]


def _fits(target, stages) -> bool:
    try:
        target.validate_stages(stages)
    except ValueError:
        return False
    return True


def tune_index(
    index: FunnelIndex,
    queries,
    target_recall: float = 0.99,
    k: int = 10,
    holdout_fraction: float = 0.5,
    first_dims: Sequence[int] | None = None,
    shortlists: Sequence[int] | None = None,
    ef_searches: Sequence[int] | None = None,
    nprobes: Sequence[int] | None = None,
    rerank_dims: Sequence[int] = (),
    model=None,
    seed: int = 0,
) -> TuneResult:
    """Give ``index`` the fastest schedule whose recall@``k`` meets ``target_recall`` on a sample of ``queries``.

    The queries are split at random: ``1 - holdout_fraction`` of them choose the schedule, the rest (held back)
    measure its recall and speed. Candidates are every first-stage dim of ``first_dims``, every ``ef_search`` (HNSW)
    or ``nprobe`` (IVF), shortlist sizes ``shortlists`` and optional rerank stages at ``rerank_dims``; a first-stage
    dim other than the index's builds a new first-stage index. By default ``first_dims`` is
    :func:`first_dim_ladder` (the index's own dim, doubling, then the full dim), so some schedule meets any target
    (a longer prefix, or the whole corpus as shortlist, is exact): a flat first stage, cheap to build, tries every
    dim of it (a longer prefix with a short shortlist is often faster than a short one with a long shortlist); an
    HNSW or IVF one, costly to build, climbs it only until a dim meets the target. The
    choice is kept on the index (``index.stages``, ``index.params``) and recorded in ``index.tuning``, which
    :meth:`FunnelIndex.save` writes; when nothing meets the target the index is left as it was.

    Raises:
        ValueError: on a bad argument or too few queries, before any search; when no schedule meets the target in
            the space searched (which the message names, with what to widen).

    Example:
        >>> import numpy as np
        >>> from matryoshka_st.search import FunnelIndex
        >>> rng = np.random.default_rng(0)
        >>> corpus = rng.normal(size=(2000, 64)).astype("float32")
        >>> index = FunnelIndex.from_embeddings(corpus, stages=[(16, 100)], first_stage="hnsw")
        >>> result = index.tune(corpus[:200] + 0.3 * rng.normal(size=(200, 64)), target_recall=0.95, k=10)
        >>> result.tune_recall >= 0.95
        True
    """
    _check("target_recall", target_recall, 0.0, 1.0, integer=False)
    _check("k", k, 1, len(index))
    _check("holdout_fraction", holdout_fraction, 0.0, 1.0, integer=False)
    queries = index._query_matrix(queries, model, 32, False)  # (Q, full_dim)
    num_holdout = int(round(len(queries) * holdout_fraction))
    if num_holdout < 1 or len(queries) - num_holdout < 1:
        raise ValueError(
            f"{len(queries)} queries with holdout_fraction={holdout_fraction} leave no tuning or no held-back "
            "query: pass more queries (a few hundred give a stable recall)."
        )
    full_dim, n = index.full_dim, len(index)
    # The backend's side of tuning; a FunnelIndex's is FAISS (below), another backend brings its own.
    target = index._tune_target() if hasattr(index, "_tune_target") else _FaissTarget(index)
    current_dim = index.stages[0][0]
    given = {"first_dims": first_dims, "shortlists": shortlists, "ef_searches": ef_searches, "nprobes": nprobes}
    narrowed = {name: list(value) for name, value in given.items() if value is not None}
    climb = first_dims is None
    default_shortlists = [int(k * m) for m in SHORTLIST_MULTIPLIERS]
    if k * SHORTLIST_MULTIPLIERS[-1] >= n:
        default_shortlists.append(n)  # the whole corpus: exact, whatever the first stage finds first
    shortlists = _grid("shortlists", shortlists, default_shortlists, k, n)
    settings = target.settings(ef_searches, nprobes)
    longest = max(shortlists[-1], k + 1)
    if climb:  # the ladder's dims a first stage cannot hold (binary codes: a multiple of 8) are left out
        first_dims = [
            d for d in first_dim_ladder(current_dim, full_dim) if d == current_dim or _fits(target, [(d, longest)])
        ]
    else:
        first_dims = _grid("first_dims", first_dims, (), 1, full_dim)
    rerank_by_dim: dict[int, list[int]] = {}
    for dim in first_dims:
        target.validate_stages([(dim, longest)])
        rerank_by_dim[dim] = []
        for rerank_dim in rerank_dims:
            schedule = [(dim, longest), (rerank_dim, k)]
            if climb and dim != current_dim and not _fits(target, schedule):
                continue  # a ladder dim at or above a rerank dim simply goes without that rerank stage
            target.validate_stages(schedule)
            rerank_by_dim[dim].append(rerank_dim)

    order = np.random.default_rng(seed).permutation(len(queries))
    tune_queries, holdout_queries = queries[order[num_holdout:]], queries[order[:num_holdout]]
    exact = target.exact_top_k(tune_queries, k)
    candidates = []
    start = time.perf_counter()
    for dim in first_dims:
        target.use_first_dim(dim, shortlists[-1])
        found_at_dim = 0
        for setting in settings:
            index.set_search_params(**target.setting_kwargs(setting))
            pool_size = target.pool_size(setting, shortlists[-1])
            # (Q, P) ids best first, and their cosines at each dim a candidate schedule reranks at
            pool, cosines = target.pool(tune_queries, pool_size, [full_dim, *rerank_by_dim[dim]])
            full = torch.from_numpy(cosines[full_dim])
            for rerank_dim in [None, *rerank_by_dim[dim]]:
                mid = None if rerank_dim is None else torch.from_numpy(cosines[rerank_dim])
                found = _cheapest(pool, full, mid, exact, shortlists, rerank_dim, full_dim, target_recall)
                if found is not None:
                    stages, recall = found
                    found_at_dim += 1
                    candidates.append(
                        {"stages": [(dim, stages[0])] + stages[1:], "setting": setting, "recall": recall}
                    )
        if found_at_dim and climb and not getattr(target, "cheap_first_stages", False):
            break  # another graph or inverted file would take long to build
        if not found_at_dim:
            if climb and dim != first_dims[-1]:
                logger.info(
                    "No schedule at first-stage dim %d reaches recall@%d %s: trying a longer one.",
                    dim,
                    k,
                    target_recall,
                )
            getattr(target, "drop_first_dim", lambda dim: None)(dim)
    logger.info("Evaluated %d candidate schedules in %.1f s.", len(candidates), time.perf_counter() - start)
    if not candidates:
        target.release()
        if narrowed:
            space = ", ".join(f"{name}={value}" for name, value in narrowed.items())
            raise ValueError(
                f"No schedule reached recall@{k} {target_recall} on the tuning queries in the space you passed "
                f"({space}): widen it (longer shortlists, larger ef_searches / nprobes, longer first_dims), leave "
                "those arguments to their defaults, or lower the target."
            )
        raise ValueError(
            f"No schedule reached recall@{k} {target_recall} on the tuning queries, even at first-stage dims "
            f"{first_dims} with shortlists up to {shortlists[-1]}: pass larger ef_searches / nprobes or shortlists, "
            "or lower the target."
        )
    for candidate in candidates:
        target.apply(candidate)
        speed = measure_speed(lambda q: index.search(q, k=k), tune_queries, repeats=3, num_single=0)
        candidate["queries_per_second"] = speed.queries_per_second
    best = max(candidates, key=lambda c: c["queries_per_second"])
    target.apply(best)
    target.finish()
    holdout_recall = recall_at_k(index.search(holdout_queries, k=k)[1], target.exact_top_k(holdout_queries, k))
    speed = measure_speed(lambda q: index.search(q, k=k), holdout_queries)
    ef_search, nprobe = target.search_params()
    result = TuneResult(
        stages=list(index.stages),
        ef_search=ef_search,
        nprobe=nprobe,
        target_recall=float(target_recall),
        k=k,
        tune_recall=best["recall"],
        holdout_recall=holdout_recall,
        holdout_speed=speed,
        num_tune_queries=len(tune_queries),
        num_holdout_queries=len(holdout_queries),
        candidates=candidates,
    )
    index.tuning = result.to_dict()
    return result


def _setting_kwargs(kind: str, setting: int | None) -> dict:
    if kind in HNSW_STAGES:
        return {"ef_search": setting}
    return {"nprobe": setting} if kind == "ivf" else {}


def _apply(index: FunnelIndex, indexes: dict, kind: str, candidate: dict) -> None:
    index._index = indexes[candidate["stages"][0][0]]
    index.stages = [candidate["stages"][0]]  # the new first dim may not fit the old rerank stages
    index.set_search_params(stages=candidate["stages"], **_setting_kwargs(kind, candidate["setting"]))


def _cheapest(pool, full, mid, exact, shortlists, rerank_dim, full_dim, target) -> tuple[list, float] | None:
    """The shortest shortlist of ``pool`` ``(Q, P)`` (and rerank shortlist at ``rerank_dim``) whose recall meets
    ``target``; ``full`` and ``mid`` are the pool's cosines at ``full_dim`` and at ``rerank_dim``."""
    k = exact.shape[1]
    pool_size = pool.shape[1]
    if rerank_dim is None:
        for size in (s for s in shortlists if s <= pool_size):
            top = torch.topk(full[:, :size], k, dim=1).indices.numpy()
            recall = recall_at_k(np.take_along_axis(pool, top, axis=1), exact)
            if recall >= target:
                return [size], recall
        return None
    best = None
    for size in (s for s in shortlists if s <= pool_size):
        for keep in (s for s in shortlists if s < size):
            kept = torch.topk(mid[:, :size], keep, dim=1).indices
            top = torch.gather(kept, 1, torch.topk(torch.gather(full, 1, kept), k, dim=1).indices).numpy()
            recall = recall_at_k(np.take_along_axis(pool, top, axis=1), exact)
            if recall >= target:
                cost = size * rerank_dim + keep * full_dim
                if best is None or cost < best[0]:
                    best = (cost, [size, (rerank_dim, keep)], recall)
                break
    return None if best is None else (best[1], best[2])


class _FaissTarget:
    """What :func:`tune_index` asks of a :class:`FunnelIndex`: its search-time settings, exact search (FAISS brute
    force), first stages at other dims, a candidate pool with its cosines, and applying a candidate schedule.

    Another backend gives ``tune_index`` an object with the same methods from its ``_tune_target()``.
    """

    def __init__(self, index: FunnelIndex) -> None:
        self.index, self.kind = index, index.first_stage
        self.current_dim = index.stages[0][0]
        self.original = (index.stages, index.params)
        self.indexes = {self.current_dim: index._index}  # every first stage built so far, by dim
        self.cheap_first_stages = self.kind not in (*HNSW_STAGES, "ivf")  # flat: a copy of the prefixes

    def settings(self, ef_searches, nprobes) -> list:
        if self.kind in HNSW_STAGES:
            return _grid("ef_searches", ef_searches, EF_SEARCHES, 1, 1 << 16)
        if self.kind == "ivf":
            nlist = self.index._index.nlist
            return _grid("nprobes", nprobes, (*NPROBES, nlist), 1, nlist)  # nlist: every list, exact
        return [None]

    def validate_stages(self, stages) -> None:
        validate_stages(stages, self.index.full_dim, self.kind)

    def setting_kwargs(self, setting: int | None) -> dict:
        return _setting_kwargs(self.kind, setting)

    def pool_size(self, setting: int | None, longest_shortlist: int) -> int:
        return min(setting, len(self.index)) if self.kind in HNSW_STAGES else longest_shortlist

    def exact_top_k(self, queries: np.ndarray, k: int) -> np.ndarray:
        return exact_top_k(self.index.embeddings, queries, k)

    def use_first_dim(self, dim: int, shortlist: int) -> None:
        index = self.index
        if dim not in self.indexes:  # kept: candidates from every dim are timed afterwards
            self.indexes[dim] = index._build_first_stage(dim)
        index._index, index.stages = self.indexes[dim], [(dim, shortlist)]

    def drop_first_dim(self, dim: int) -> None:
        """Free a first stage that gave no candidate (the index's own is kept)."""
        if dim != self.current_dim:
            self.indexes.pop(dim, None)

    def pool(self, queries: np.ndarray, pool_size: int, dims: Sequence[int]) -> tuple[np.ndarray, dict]:
        index = self.index
        pool = index._shortlist(queries, pool_size)  # (Q, P), best first
        cosines = {}
        for dim in dims:
            if dim == index.full_dim:
                cosines[dim] = index._rescore(queries, pool, dim, None)
            else:
                norms = np.linalg.norm(index.embeddings[np.where(pool < 0, 0, pool).reshape(-1), :dim], axis=1)
                cosines[dim] = index._rescore(queries, pool, dim, None) / np.maximum(norms, 1e-12).reshape(pool.shape)
        return pool, cosines

    def apply(self, candidate: dict) -> None:
        _apply(self.index, self.indexes, self.kind, candidate)

    def finish(self) -> None:
        self.index._first_stage_bytes = None
        self.indexes.clear()  # the index holds the chosen one

    def release(self) -> None:
        """Put the index back as it was before tuning (its own first stage, schedule and search settings)."""
        index = self.index
        index._index, (index.stages, index.params) = self.indexes[self.current_dim], self.original
        apply_search_params(index._index, index.params)
        self.indexes.clear()

    def search_params(self) -> tuple[int | None, int | None]:
        params = self.index.params
        return (params.ef_search if self.kind in HNSW_STAGES else None, params.nprobe if self.kind == "ivf" else None)
