"""Funnel search inside PostgreSQL with pgvector: the same schedules, tuning and recall as :class:`FunnelIndex`,
served by the database.

pgvector (>= 0.7) does the searching: one HNSW expression index per first stage (the float prefix through
``subvector``, its ``halfvec``, or its sign bits through ``binary_quantize`` with ``bit_hamming_ops``), and the
reranks at longer prefixes and at the full vector run in the same SQL statement. What this module adds by hand is
what no client library does: the table and metadata layout, a resumable and idempotent ``COPY`` load, the funnel SQL,
and the hooks that let :func:`matryoshka_st.search.tune.tune_index` choose a schedule against exact results.

Needs ``pip install 'matryoshka_st[pgvector]'`` (psycopg 3 and pgvector-python) and a server with the ``vector``
extension. A password in a DSN never appears in an error or a log line (:func:`redact_dsn`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from numbers import Integral
from typing import TYPE_CHECKING

import numpy as np
import torch

from matryoshka_st.dims import full_embedding_dim, truncate_numpy
from matryoshka_st.search._inputs import as_float_matrix, encode, query_matrix
from matryoshka_st.search.first_stage import FirstStageParams
from matryoshka_st.search.funnel import MemoryReport
from matryoshka_st.search.stages import validate_stages

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from matryoshka_st.search.tune import TuneResult

logger = logging.getLogger(__name__)

PG_FIRST_STAGES = ("hnsw", "halfvec_hnsw", "binary_hnsw")
VECTOR_TYPES = ("vector", "halfvec")
METADATA_TABLE = "matryoshka_st_funnels"
FORMAT_VERSION = 1
MAX_EF_SEARCH = 1000  # pgvector's bound on hnsw.ef_search; an HNSW scan returns at most ef_search rows
MIN_PGVECTOR = (0, 7, 0)  # halfvec, bit, subvector, binary_quantize
DEFAULT_CHUNK_ROWS = 10_000
# A stage schedule follows the rules of the FAISS kind of the same precision (a halfvec or binary first stage, like an
# int8 or binary one, may be longer than the float stage after it).
_SCHEDULE_KIND = {"hnsw": "hnsw", "halfvec_hnsw": "int8_hnsw", "binary_hnsw": "binary_hnsw"}
_MAX_INDEX_DIM = {"hnsw": 2000, "halfvec_hnsw": 4000, "binary_hnsw": 64000}  # pgvector's HNSW limits
_TABLE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,39}")  # leaves room for index names within 63 bytes


class PgvectorError(OSError):
    """The database refused or lost the work (no server, no extension, a dropped connection). The message is one
    line with any password removed."""


def _import_psycopg():
    try:
        import pgvector.psycopg  # noqa: F401
        import psycopg
    except ImportError as error:
        raise ImportError(
            "The pgvector backend needs psycopg 3 and pgvector: pip install 'matryoshka_st[pgvector]'."
        ) from error
    return psycopg


_URI_PASSWORD = re.compile(r"(postgres(?:ql)?://[^:/@\s]*:)([^@\s]*)(@)", re.IGNORECASE)
_QUERY_PASSWORD = re.compile(r"([?&]password=)([^&\s]*)", re.IGNORECASE)
_KEYWORD_PASSWORD = re.compile(r"(\bpassword\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]+)", re.IGNORECASE)


def redact_dsn(dsn: str | None) -> str:
    """``dsn`` with its password replaced by ``***`` (URI and ``key=value`` forms).

    Example:
        >>> redact_dsn("postgresql://app:s3cret@db:5432/search")
        'postgresql://app:***@db:5432/search'
        >>> redact_dsn("host=db user=app password='s3 cret' dbname=search")
        'host=db user=app password=*** dbname=search'
    """
    if not dsn:
        return ""
    dsn = _URI_PASSWORD.sub(r"\1***\3", dsn)
    dsn = _QUERY_PASSWORD.sub(r"\1***", dsn)
    return _KEYWORD_PASSWORD.sub(r"\1***", dsn)


def _secrets(dsn: str | None) -> list[str]:
    found = [os.environ.get("PGPASSWORD", "")]
    if dsn:
        found += [m.group(2) for m in _URI_PASSWORD.finditer(dsn)] + [
            m.group(2) for m in _QUERY_PASSWORD.finditer(dsn)
        ]
        found += [m.group(2).strip("'") for m in _KEYWORD_PASSWORD.finditer(dsn)]
    return sorted({s for s in found if len(s) >= 3}, key=len, reverse=True)


def _scrub(text: str, dsn: str | None) -> str:
    """One line of ``text`` with the DSN's password (in any form) and ``PGPASSWORD`` removed."""
    text = redact_dsn(" ".join(str(text).split()))
    for secret in _secrets(dsn):
        text = text.replace(secret, "***")
    return text


def _where(dsn: str | None) -> str:
    return redact_dsn(dsn) if dsn else "the server of the PG* environment variables"


@dataclass(frozen=True)
class PgvectorParams:
    """Which pgvector HNSW index finds the shortlist, and its build and search parameters.

    Args:
        kind: ``hnsw`` (the float prefix, ``vector_cosine_ops``), ``halfvec_hnsw`` (the prefix as ``halfvec``, half
            the bytes) or ``binary_hnsw`` (its sign bits, ``bit_hamming_ops``).
        hnsw_m: HNSW neighbours per node (pgvector ``m``, 2 to 100).
        ef_construction: HNSW candidate list while building (pgvector ``ef_construction``, at least ``2 * m``).
        ef_search: ``hnsw.ef_search`` while searching, raised to the first shortlist when that is larger (at most
            1000, pgvector's bound).

    Example:
        >>> PgvectorParams("binary_hnsw", ef_search=200).ef_search
        200
    """

    kind: str = "hnsw"
    hnsw_m: int = FirstStageParams.hnsw_m
    ef_construction: int = FirstStageParams.ef_construction
    ef_search: int = FirstStageParams.ef_search

    def __post_init__(self) -> None:
        if self.kind not in PG_FIRST_STAGES:
            raise ValueError(f"first_stage must be one of {PG_FIRST_STAGES} for pgvector, got {self.kind!r}.")
        for name, low, high in (("hnsw_m", 2, 100), ("ef_construction", 4, 1000), ("ef_search", 1, MAX_EF_SEARCH)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Integral) or not low <= value <= high:
                raise ValueError(f"{name} must be an integer in [{low}, {high}] for pgvector, got {value!r}.")
        if self.ef_construction < 2 * self.hnsw_m:
            raise ValueError(
                f"ef_construction ({self.ef_construction}) must be at least 2 * hnsw_m ({2 * self.hnsw_m}) for "
                "pgvector: raise ef_construction or lower hnsw_m."
            )

    def to_dict(self) -> dict:
        return asdict(self)

    def replace(self, **changes) -> PgvectorParams:
        return replace(self, **{name: value for name, value in changes.items() if value is not None})


def validate_pg_stages(stages, full_dim: int, kind: str) -> list[tuple[int, int]]:
    """:func:`validate_stages` for a pgvector first stage, plus pgvector's bounds: at most 1000 first-stage rows (an
    HNSW scan returns at most ``hnsw.ef_search``) and its largest indexable dim."""
    if kind not in PG_FIRST_STAGES:
        raise ValueError(f"first_stage must be one of {PG_FIRST_STAGES} for pgvector, got {kind!r}.")
    checked = validate_stages(stages, full_dim, _SCHEDULE_KIND[kind])
    dim, shortlist = checked[0]
    if shortlist > MAX_EF_SEARCH:
        raise ValueError(
            f"The first shortlist is {shortlist}, but a pgvector HNSW scan returns at most hnsw.ef_search "
            f"<= {MAX_EF_SEARCH} rows: use a first shortlist <= {MAX_EF_SEARCH}."
        )
    if dim > _MAX_INDEX_DIM[kind]:
        raise ValueError(f"pgvector indexes at most {_MAX_INDEX_DIM[kind]} dims for {kind}, not {dim}.")
    return checked


def _check_table_name(table: str) -> str:
    if not isinstance(table, str) or not _TABLE_NAME.fullmatch(table) or table == METADATA_TABLE:
        raise ValueError(
            f"table must be a lower-case SQL name of letters, digits and _ (at most 40 characters, not "
            f"{METADATA_TABLE!r}), got {table!r}."
        )
    return table


def index_name(table: str, kind: str, dim: int) -> str:
    """The name of the first-stage index of ``kind`` at ``dim`` on ``table``, e.g. ``docs_binary_hnsw_384``."""
    return f"{table}_{kind}_{dim}"


def _first_stage_sql(kind: str, dim: int, full_dim: int, vector_type: str) -> tuple[str, str, str, str]:
    """``(indexed expression, operator class, distance operator, query expression)`` of a first stage; the query
    expression takes the parameter ``q0``, the query's first ``dim`` coordinates. The index and the query use the
    same expression, which is what lets the planner pick the index."""
    whole = dim == full_dim
    if kind == "hnsw":
        column = (
            "embedding" if whole and vector_type == "vector" else f"(subvector(embedding, 1, {dim})::vector({dim}))"
        )
        return column, "vector_cosine_ops", "<=>", f"%(q0)b::vector({dim})"
    if kind == "halfvec_hnsw":
        column = (
            "embedding" if whole and vector_type == "halfvec" else f"(subvector(embedding, 1, {dim})::halfvec({dim}))"
        )
        return column, "halfvec_cosine_ops", "<=>", f"%(q0)b::vector({dim})::halfvec({dim})"
    source = "embedding" if whole else f"subvector(embedding, 1, {dim})"
    return (
        f"(binary_quantize({source})::bit({dim}))",
        "bit_hamming_ops",
        "<~>",
        f"binary_quantize(%(q0)b::vector({dim}))::bit({dim})",
    )


def _full_param(name: str, full_dim: int, vector_type: str) -> str:
    cast = f"::vector({full_dim})"
    return f"%({name})b{cast}" + (f"::halfvec({full_dim})" if vector_type == "halfvec" else "")


def _prefix_cosine_sql(dim: int, param: str) -> str:
    return f"1 - (subvector(embedding, 1, {dim})::vector({dim}) <=> %({param})b::vector({dim}))"


@dataclass
class _State:
    """What the database holds for a table name: the metadata row and the table's columns and indexes."""

    config: dict | None
    tuning: dict | None
    table_exists: bool
    columns: dict[str, str]
    indexes: dict[str, dict]  # name -> {"valid": bool, "options": {"m": "16", ...}}
    extension: str | None


def _read_state(conn, table: str) -> _State:
    extension = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
    config = tuning = None
    if conn.execute("SELECT to_regclass(%s)", [METADATA_TABLE]).fetchone()[0] is not None:
        row = conn.execute(f"SELECT config, tuning FROM {METADATA_TABLE} WHERE table_name = %s", [table]).fetchone()
        if row is not None:
            config, tuning = row
    table_exists = conn.execute("SELECT to_regclass(%s)", [f'"{table}"']).fetchone()[0] is not None
    columns, indexes = {}, {}
    if table_exists:
        columns = dict(
            conn.execute(
                "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
                [f'"{table}"'],
            ).fetchall()
        )
        for name, valid, options in conn.execute(
            "SELECT c.relname, i.indisvalid, c.reloptions FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE i.indrelid = %s::regclass",
            [f'"{table}"'],
        ):
            indexes[name] = {"valid": valid, "options": dict(o.split("=", 1) for o in options or [])}
    return _State(config, tuning, table_exists, columns, indexes, extension[0] if extension else None)


def _expected_columns(full_dim: int, vector_type: str) -> dict[str, str]:
    return {"id": "bigint", "doc_id": "text", "embedding": f"{vector_type}({full_dim})"}


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version)[:3])


@dataclass
class _Source:
    """Where the rows come from: ``rows(start, stop)`` gives ``(stop - start, full_dim)`` unit vectors, encoded or
    sliced only when a chunk is loaded, so a resumed load encodes only the missing rows."""

    num_rows: int
    source_dim: int
    fingerprint: str
    rows: Callable[[int, int], np.ndarray]


class PgvectorIndex:
    """A funnel index in a PostgreSQL table: an HNSW expression index finds the shortlist, SQL reranks it.

    One table holds row number ``id``, optional external ``doc_id`` and the full ``embedding`` (``vector`` or
    ``halfvec``, unit length at ``full_dim``); one HNSW expression index serves each first stage; the table
    ``matryoshka_st_funnels`` holds its configuration and the schedule every client uses (written by :meth:`tune`
    and :meth:`save`). ``search`` runs the whole funnel in one SQL statement per query::

        SELECT id, -(embedding <#> q) FROM (                       -- full dim: inner product of unit vectors
            SELECT id, embedding FROM (
                SELECT id, embedding FROM docs                        -- stage 1: the HNSW index, 64-dim prefix
                ORDER BY subvector(embedding, 1, 64)::vector(64) <=> q[:64] LIMIT 200
            ) s1 ORDER BY subvector(embedding, 1, 128)::vector(128) <=> q[:128] LIMIT 50   -- stage 2
        ) s ORDER BY embedding <#> q LIMIT 10

    Build with :meth:`from_embeddings` or :meth:`from_model` (a rerun loads nothing twice and resumes a killed load),
    open a built table with :meth:`load`. The arguments mirror :class:`FunnelIndex`; ``first_stage`` is one of
    :data:`PG_FIRST_STAGES` (see :class:`PgvectorParams`).

    Example:
        >>> import numpy as np
        >>> corpus = np.random.default_rng(0).normal(size=(1000, 64)).astype("float32")
        >>> index = PgvectorIndex.from_embeddings(  # doctest: +SKIP
        ...     corpus, stages=[(16, 200)], dsn="postgresql://app@db/search", table="docs", show_progress_bar=False
        ... )
        >>> index.search(corpus[:3], k=5)[1][:, 0].tolist()  # doctest: +SKIP
        [0, 1, 2]
        >>> index = PgvectorIndex.load("postgresql://app@db/search", "docs")  # doctest: +SKIP
    """

    def __init__(self, conn, dsn: str | None, table: str, config: dict, tuning: dict | None = None) -> None:
        # Use from_embeddings, from_model or load: they check the table before handing over the connection.
        self._conn, self.dsn, self.table = conn, dsn, table
        self.full_dim = int(config["full_dim"])
        self.source_dim = int(config["source_dim"])
        self.vector_type = config["vector_type"]
        self.num_vectors = int(config["num_vectors"])
        self.model_name_or_path = config.get("model_name_or_path")
        self.params = PgvectorParams(**config["first_stage"])
        self.stages = validate_pg_stages(config["stages"], self.full_dim, self.params.kind)
        self.tuning = tuning
        self._config = config
        self._model: SentenceTransformer | None = None
        self._session: dict[str, str] = {}
        self._target: _PgvectorTarget | None = None

    # -- building ---------------------------------------------------------------------------------------------------

    @classmethod
    def from_embeddings(
        cls,
        embeddings: np.ndarray | torch.Tensor,
        stages: Sequence[Sequence[int]] = ((64, 200), (128, 50)),
        full_dim: int | None = None,
        first_stage: str = "hnsw",
        doc_ids: Sequence[str] | None = None,
        *,
        table: str,
        dsn: str | None = None,
        vector_type: str = "vector",
        overwrite: bool = False,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        show_progress_bar: bool = True,
        maintenance_work_mem: str | None = None,
        model_name_or_path: str | None = None,
        **first_stage_params,
    ) -> PgvectorIndex:
        """Load ``(N, D)`` embeddings into ``table`` and build the first-stage index.

        Args:
            embeddings, stages, full_dim, first_stage, doc_ids: as for :class:`FunnelIndex`.
            table: the table to create (or to resume, or to reuse when it already holds these embeddings).
            dsn: a libpq connection string or URI; ``None`` uses the ``PG*`` environment variables.
            vector_type: ``vector`` (float32) or ``halfvec`` (float16, half the table) for the stored full vectors.
            overwrite: drop a table this toolkit made before (never a table made by something else).
            chunk_rows: rows per ``COPY`` transaction; a killed load keeps every finished chunk.
            show_progress_bar: a tqdm bar over the rows loaded.
            maintenance_work_mem: e.g. ``"2GB"`` for the index build (HNSW builds much faster when the graph fits).
            hnsw_m, ef_construction, ef_search: see :class:`PgvectorParams`.

        Raises:
            ValueError: bad arguments, a table made by something else, or one holding other vectors; nothing is
                written then.
            PgvectorError: no server, no ``vector`` extension, or a connection lost during the load.
        """
        embeddings = as_float_matrix(embeddings, "embeddings")
        full_dim = _check_full_dim(full_dim, embeddings.shape[1], "embedding size")
        if len(embeddings) == 0:
            raise ValueError("The corpus is empty: pass at least one embedding.")
        if doc_ids is not None and len(doc_ids) != len(embeddings):
            raise ValueError(f"doc_ids has {len(doc_ids)} ids for {len(embeddings)} embeddings: give one per row.")
        digest = hashlib.blake2b(digest_size=16)
        for start in range(0, len(embeddings), 65536):
            digest.update(np.ascontiguousarray(embeddings[start : start + 65536, :full_dim], np.float32).tobytes())
        _digest_ids(digest, doc_ids)
        source = _Source(
            len(embeddings),
            embeddings.shape[1],
            "embeddings:" + digest.hexdigest(),
            lambda start, stop: truncate_numpy(np.asarray(embeddings[start:stop], np.float32), full_dim),
        )
        return cls._build(
            source, stages, full_dim, first_stage, doc_ids, table, dsn, vector_type, overwrite, chunk_rows,
            show_progress_bar, maintenance_work_mem, model_name_or_path, first_stage_params,
        )  # fmt: skip

    @classmethod
    def from_model(
        cls,
        model: SentenceTransformer,
        texts: Sequence[str],
        stages: Sequence[Sequence[int]] = ((64, 200), (128, 50)),
        full_dim: int | None = None,
        first_stage: str = "hnsw",
        doc_ids: Sequence[str] | None = None,
        batch_size: int = 32,
        show_progress_bar: bool = True,
        model_name_or_path: str | None = None,
        *,
        table: str,
        dsn: str | None = None,
        vector_type: str = "vector",
        overwrite: bool = False,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        maintenance_work_mem: str | None = None,
        **first_stage_params,
    ) -> PgvectorIndex:
        """Encode ``texts`` with ``model`` (ignoring its ``truncate_dim``) chunk by chunk into ``table``.

        Everything is checked before the first text is encoded; a rerun encodes only the chunks not yet loaded (none
        when the table is complete). The model is remembered, so ``search`` accepts texts. Other arguments as for
        :meth:`from_embeddings`.
        """
        model_dim = full_embedding_dim(model)
        if model_dim is None:
            raise ValueError(
                "The model does not report its embedding dimension; encode the texts and use from_embeddings."
            )
        full_dim = _check_full_dim(full_dim, model_dim, "model's embedding size")
        if isinstance(texts, str) or len(texts) == 0:
            raise ValueError("texts must be a non-empty list of strings (the corpus is empty).")
        if doc_ids is not None and len(doc_ids) != len(texts):
            raise ValueError(f"doc_ids has {len(doc_ids)} ids for {len(texts)} texts: give one per text.")
        digest = hashlib.blake2b(digest_size=16)
        digest.update(f"{model_name_or_path}\x00{full_dim}\x00".encode())
        for text in texts:
            digest.update(text.encode("utf-8", "surrogatepass") + b"\x00")
        _digest_ids(digest, doc_ids)
        source = _Source(
            len(texts),
            model_dim,
            "texts:" + digest.hexdigest(),
            lambda start, stop: truncate_numpy(encode(model, list(texts[start:stop]), batch_size, False), full_dim),
        )
        index = cls._build(
            source, stages, full_dim, first_stage, doc_ids, table, dsn, vector_type, overwrite, chunk_rows,
            show_progress_bar, maintenance_work_mem, model_name_or_path, first_stage_params,
        )  # fmt: skip
        index._model = model
        return index

    @classmethod
    def _build(
        cls, source: _Source, stages, full_dim, first_stage, doc_ids, table, dsn, vector_type, overwrite, chunk_rows,
        show_progress_bar, maintenance_work_mem, model_name_or_path, first_stage_params,
    ) -> PgvectorIndex:  # fmt: skip
        # Every argument is checked before connecting, and the table before anything is written.
        params = PgvectorParams(first_stage, **first_stage_params)
        stages = validate_pg_stages(stages, full_dim, params.kind)
        _check_table_name(table)
        if vector_type not in VECTOR_TYPES:
            raise ValueError(f"vector_type must be one of {VECTOR_TYPES}, got {vector_type!r}.")
        if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, Integral) or chunk_rows < 1:
            raise ValueError(f"chunk_rows must be a positive integer, got {chunk_rows!r}.")
        config = {
            "format_version": FORMAT_VERSION,
            "full_dim": full_dim,
            "source_dim": source.source_dim,
            "vector_type": vector_type,
            "num_vectors": source.num_rows,
            "fingerprint": source.fingerprint,
            "model_name_or_path": model_name_or_path,
            "first_stage": params.to_dict(),
            "stages": [list(stage) for stage in stages],
            "complete": False,
        }
        first_dim = stages[0][0]
        name = index_name(table, params.kind, first_dim)
        conn = _connect(dsn)
        try:
            with _database_errors(dsn, f"checking table {table!r}"):
                state = _read_state(conn, table)
            _check_extension(state, dsn, create_allowed=True)
            fresh = overwrite or state.config is None or not state.table_exists
            tuning = None
            if state.table_exists and state.config is None:
                raise ValueError(
                    f"Table {table!r} exists but was not made by matryoshka-st (no row in {METADATA_TABLE}): choose "
                    "another table name; nothing was changed."
                )
            if not fresh:
                _check_same_table(table, state, config)
                old_first = state.config["first_stage"]
                same_first_stage = old_first["kind"] == params.kind and state.config["stages"][0][0] == first_dim
                if name in state.indexes:
                    _check_index_options(name, state.indexes[name], params)
                if state.config.get("complete") and same_first_stage:
                    # A rerun of a finished build: keep the schedule clients use (perhaps a tuned one).
                    config.update(first_stage=old_first, stages=state.config["stages"])
                    params, tuning = PgvectorParams(**old_first), state.tuning
            with _database_errors(dsn, f"creating table {table!r}"):
                if state.extension is None:
                    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
                conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {METADATA_TABLE} (table_name text PRIMARY KEY, format_version "
                    "integer NOT NULL, config jsonb NOT NULL, tuning jsonb, updated_at timestamptz NOT NULL DEFAULT now())"
                )
                _register_types(conn)
                with conn.transaction():
                    if fresh:
                        if state.config is not None and not state.table_exists:
                            logger.warning("Table %r was dropped outside matryoshka-st; building it again.", table)
                        conn.execute(f'DROP TABLE IF EXISTS "{table}"' if state.config is not None else "SELECT 1")
                        conn.execute(
                            f'CREATE TABLE "{table}" (id bigint PRIMARY KEY, doc_id text, '
                            f"embedding {vector_type}({full_dim}) NOT NULL)"
                        )
                    _write_config(conn, table, config, tuning)
            _load_rows(conn, dsn, table, source, doc_ids, vector_type, chunk_rows, show_progress_bar)
            with _database_errors(dsn, f"building index {name!r}"):
                _ensure_index(conn, table, params, first_dim, full_dim, vector_type, maintenance_work_mem)
                conn.execute(f'ANALYZE "{table}"')
                config["complete"] = True
                _write_config(conn, table, config, tuning)
            index = cls(conn, dsn, table, config, tuning)
        except BaseException:
            conn.close()
            raise
        logger.info("Built %r.", index)
        return index

    @classmethod
    def load(cls, dsn: str | None, table: str) -> PgvectorIndex:
        """Open a table built by :meth:`from_embeddings` / :meth:`from_model`, with the schedule stored for it.

        Example:
            >>> index = PgvectorIndex.load("postgresql://app@db/search", "docs")  # doctest: +SKIP
            >>> index.stages, index.params.ef_search  # doctest: +SKIP
            ([(64, 120)], 160)
        """
        _check_table_name(table)
        conn = _connect(dsn)
        try:
            with _database_errors(dsn, f"reading table {table!r}"):
                state = _read_state(conn, table)
            _check_extension(state, dsn, create_allowed=False)
            if state.config is None:
                made = "exists but was not made by matryoshka-st" if state.table_exists else "does not exist"
                raise ValueError(
                    f"Table {table!r} {made} (no row in {METADATA_TABLE}): build it with "
                    "'matryoshka-st search build --backend pgvector --table ...'."
                )
            if not state.table_exists:
                raise ValueError(f"Table {table!r} was dropped: build it again.")
            if not state.config.get("complete"):
                raise ValueError(
                    f"Table {table!r} is not finished (a build was interrupted): run the same build again to resume it."
                )
            _check_columns(table, state.columns, state.config)
            _register_types(conn)
            return cls(conn, dsn, table, state.config, state.tuning)
        except BaseException:
            conn.close()
            raise

    # -- the index --------------------------------------------------------------------------------------------------

    @property
    def first_stage(self) -> str:
        return self.params.kind

    def __len__(self) -> int:
        return self.num_vectors

    def __repr__(self) -> str:
        return (
            f"PgvectorIndex(table={self.table!r}, num_vectors={len(self)}, stages={self.stages}, "
            f"full_dim={self.full_dim}, first_stage={self.first_stage!r}, vector_type={self.vector_type!r})"
        )

    def __enter__(self) -> PgvectorIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._conn.close()

    def first_stage_indexes(self) -> list[tuple[str, int]]:
        """``(kind, dim)`` of every first-stage index the table has."""
        with _database_errors(self.dsn, f"reading the indexes of {self.table!r}"):
            indexes = _read_state(self._conn, self.table).indexes
        found = []
        for kind in PG_FIRST_STAGES:
            for name, info in indexes.items():
                match = re.fullmatch(re.escape(f"{self.table}_{kind}_") + r"(\d+)", name)
                if match and info["valid"]:
                    found.append((kind, int(match.group(1))))
        return sorted(found)

    def set_search_params(self, stages: Sequence[Sequence[int]] | None = None, ef_search: int | None = None) -> None:
        """Change what this client's searches do: the shortlists and rerank dims of ``stages`` and ``ef_search``. The
        first-stage dim may change only to one the table has an index for; :meth:`save` stores the schedule for
        every client.

        Example:
            >>> index.set_search_params(stages=[(64, 300)], ef_search=320)  # doctest: +SKIP
        """
        params = self.params.replace(ef_search=ef_search)
        new_stages = self.stages
        if stages is not None:
            new_stages = validate_pg_stages(stages, self.full_dim, self.first_stage)
            if (
                new_stages[0][0] != self.stages[0][0]
                and (self.first_stage, new_stages[0][0]) not in self.first_stage_indexes()
            ):
                raise ValueError(
                    f"Table {self.table!r} has no {self.first_stage} index at dim {new_stages[0][0]}: stages must start "
                    f"with dim {self.stages[0][0]}, or build that first stage on the same table."
                )
        self.params, self.stages = params, new_stages

    def save(self) -> None:
        """Store this client's schedule (stages, ``ef_search``) and tuning record as the table's, for every client."""
        self._config.update(first_stage=self.params.to_dict(), stages=[list(stage) for stage in self.stages])
        with _database_errors(self.dsn, f"saving the schedule of {self.table!r}"):
            _write_config(self._conn, self.table, self._config, self.tuning)

    def search(
        self,
        queries: np.ndarray | torch.Tensor | Sequence[str] | str,
        k: int = 10,
        model: SentenceTransformer | None = None,
        batch_size: int = 32,
        show_progress_bar: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The top ``k`` rows for each query: ``(scores, ids)``, both ``(num_queries, k)``, best first; as
        :meth:`FunnelIndex.search` (ids are row numbers, ``-1`` with score ``-inf`` pads a short result)."""
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
        self._set_session(ef_search=min(MAX_EF_SEARCH, max(self.params.ef_search, self.stages[0][1])))
        sql = self._search_sql(k)
        rows = self._run_per_query(sql, [self._query_params(q) for q in queries])
        ids = np.full((len(queries), k), -1, np.int64)
        scores = np.full((len(queries), k), -np.inf, np.float32)
        for row, found in enumerate(rows):
            if found:
                ids[row, : len(found)] = [r[0] for r in found]
                scores[row, : len(found)] = [r[1] for r in found]
        return scores, ids

    def doc_ids_of(self, ids: np.ndarray) -> list[list]:
        """The ``doc_id`` of each row number in ``ids`` ``(Q, k)`` (the row number itself where none was given)."""
        wanted = sorted({int(i) for i in np.asarray(ids).reshape(-1) if i >= 0})
        with _database_errors(self.dsn, f"reading doc ids from {self.table!r}"):
            found = dict(self._conn.execute(f'SELECT id, doc_id FROM "{self.table}" WHERE id = ANY(%s)', [wanted]))
        return [[found.get(int(i)) if found.get(int(i)) is not None else int(i) for i in row] for row in ids]

    def tune(
        self, queries: np.ndarray | torch.Tensor | Sequence[str], target_recall: float = 0.99, k: int = 10, **options
    ) -> TuneResult:
        """Pick the fastest schedule (first shortlist, ``ef_search``, optionally the first-stage dim and a rerank
        stage) whose recall@``k`` against exact search meets ``target_recall``, and store it in the metadata table
        for every client. The search is :func:`matryoshka_st.search.tune.tune_index`, shared with FAISS; the exact
        top ``k`` is computed from the stored vectors. A first-stage dim of ``first_dims`` without an index gets one
        for the tuning, kept only if chosen.

        Example:
            >>> result = index.tune(sample_queries, target_recall=0.99, k=10, first_dims=[32, 64])  # doctest: +SKIP
            >>> PgvectorIndex.load(dsn, "docs").stages == result.stages  # doctest: +SKIP
            True
        """
        from matryoshka_st.search.tune import tune_index

        if options.get("nprobes") is not None:
            raise ValueError("nprobes is for IVF; a pgvector first stage is HNSW: tune ef_searches instead.")
        stages, params, tuning = self.stages, self.params, self.tuning
        try:
            result = tune_index(self, queries, target_recall=target_recall, k=k, **options)
        except BaseException:
            self.stages, self.params, self.tuning = stages, params, tuning
            if self._target is not None:
                self._target.release()
            raise
        finally:
            self._target = None
        self.save()
        return result

    def memory_report(self) -> MemoryReport:
        """Bytes per vector from ``pg_relation_size``: the first-stage HNSW index, and the table (heap, TOAST and
        primary key) the reranks read."""
        name = index_name(self.table, self.first_stage, self.stages[0][0])
        with _database_errors(self.dsn, f"measuring {self.table!r}"):
            first, table = self._conn.execute(
                "SELECT pg_relation_size(%s::regclass), pg_table_size(%s::regclass) + pg_relation_size(%s::regclass)",
                [f'"{name}"', f'"{self.table}"', f'"{self.table}_pkey"'],
            ).fetchone()
        n = len(self)
        return MemoryReport(
            num_vectors=n,
            first_stage_bytes_per_vector=first / n,
            rerank_bytes_per_vector=table / n,
            bytes_per_vector=(first + table) / n,
            total_bytes=int(first + table),
        )

    def drop(self) -> None:
        """Drop the table, its indexes and its metadata row, and close the connection."""
        with _database_errors(self.dsn, f"dropping {self.table!r}"), self._conn.transaction():
            self._conn.execute(f'DROP TABLE IF EXISTS "{self.table}"')
            self._conn.execute(f"DELETE FROM {METADATA_TABLE} WHERE table_name = %s", [self.table])
        self.close()

    # -- internals (also the tuning hooks) --------------------------------------------------------------------------

    def _query_matrix(self, queries, model, batch_size: int, show_progress_bar: bool) -> np.ndarray:
        return query_matrix(
            queries, model or self._model, batch_size, show_progress_bar, self.full_dim, self.source_dim
        )

    def _search_sql(self, k: int) -> str:
        column, _, op, query = _first_stage_sql(self.first_stage, self.stages[0][0], self.full_dim, self.vector_type)
        sql = f'SELECT id, embedding FROM "{self.table}" ORDER BY {column} {op} {query} LIMIT {self.stages[0][1]}'
        for number, (dim, keep) in enumerate(self.stages[1:], start=1):
            distance = f"subvector(embedding, 1, {dim})::vector({dim}) <=> %(q{number})b::vector({dim})"
            sql = f"SELECT id, embedding FROM ({sql}) s{number} ORDER BY {distance}, id LIMIT {keep}"
        full = f"embedding <#> {_full_param('q', self.full_dim, self.vector_type)}"
        return f"SELECT id, -({full}) FROM ({sql}) s ORDER BY {full}, id LIMIT {k}"

    def _query_params(self, query: np.ndarray, dims: Sequence[int] = ()) -> dict:
        params = {"q": query, "q0": np.ascontiguousarray(query[: self.stages[0][0]])}
        for number, (dim, _) in enumerate(self.stages[1:], start=1):
            params[f"q{number}"] = np.ascontiguousarray(query[:dim])
        for dim in dims:
            params[f"p{dim}"] = np.ascontiguousarray(query[:dim])
        return params

    def _set_session(self, **settings) -> None:
        """Session settings for the funnel queries, sent only when they change. ``enable_seqscan`` off keeps the
        planner on the HNSW index even for a small table, so a search does what tuning measured."""
        wanted = {"enable_seqscan": "off", **{f"hnsw.{name}": str(value) for name, value in settings.items()}}
        changed = {name: value for name, value in wanted.items() if self._session.get(name) != value}
        if changed:
            with _database_errors(self.dsn, "setting search parameters"):
                placeholders = ", ".join("set_config(%s, %s, false)" for _ in changed)
                self._conn.execute(f"SELECT {placeholders}", [v for item in changed.items() for v in item])
            self._session.update(changed)

    def _run_per_query(self, sql: str, params: list[dict]) -> list[list[tuple]]:
        """Run ``sql`` once per parameter set, pipelined (one round trip for the batch); the rows of each."""
        results = []
        with _database_errors(self.dsn, f"searching {self.table!r}"), self._conn.cursor() as cursor:
            cursor.executemany(sql, params, returning=True)
            while True:
                results.append(cursor.fetchall())
                if not cursor.nextset():
                    break
        return results

    def _shortlist(self, queries: np.ndarray, shortlist: int | None = None) -> np.ndarray:
        """First-stage ids ``(Q, S)``, best first, at the current ``ef_search`` (``-1`` pads)."""
        return self._pool(queries, shortlist or self.stages[0][1], ())[0]

    def _pool(self, queries: np.ndarray, size: int, dims: Sequence[int]) -> tuple[np.ndarray, dict]:
        """The first stage's ``size`` best ids ``(Q, P)`` at the current ``ef_search`` and their cosines at ``dims``
        (the full dim: inner product of the unit vectors), in one statement per query; ``-1`` / ``-inf`` pad."""
        self._set_session(ef_search=self.params.ef_search)
        column, _, op, query = _first_stage_sql(self.first_stage, self.stages[0][0], self.full_dim, self.vector_type)
        scores = []
        for dim in dims:
            if dim == self.full_dim:
                scores.append(f"-(embedding <#> {_full_param('q', self.full_dim, self.vector_type)})")
            else:
                scores.append(_prefix_cosine_sql(dim, f"p{dim}"))
        select = ", ".join(["id", *scores])
        # The subquery's rows come out in the index's order: nothing between its LIMIT and the SELECT reorders them.
        sql = f'SELECT {select} FROM (SELECT id, embedding FROM "{self.table}" ORDER BY {column} {op} {query} LIMIT {size}) s'
        rows = self._run_per_query(
            sql, [self._query_params(q, [d for d in dims if d != self.full_dim]) for q in queries]
        )
        ids = np.full((len(queries), size), -1, np.int64)
        cosines = {dim: np.full((len(queries), size), -np.inf, np.float32) for dim in dims}
        for row, found in enumerate(rows):
            if found:
                values = np.asarray(found, dtype=np.float64)  # (found, 1 + len(dims))
                ids[row, : len(found)] = values[:, 0].astype(np.int64)
                for column_number, dim in enumerate(dims, start=1):
                    cosines[dim][row, : len(found)] = values[:, column_number]
        return ids, cosines

    def _iter_vectors(self, chunk_rows: int = 20_000) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(ids, vectors)`` chunks of the whole table, streamed with ``COPY ... TO STDOUT (FORMAT BINARY)``."""
        with _database_errors(self.dsn, f"reading {self.table!r}"), self._conn.cursor() as cursor:
            with cursor.copy(f'COPY (SELECT id, embedding FROM "{self.table}") TO STDOUT (FORMAT BINARY)') as copy:
                copy.set_types(["int8", self.vector_type])
                ids, rows = [], []
                for row_id, vector in copy.rows():
                    ids.append(row_id)
                    rows.append(vector.to_numpy())
                    if len(ids) == chunk_rows:
                        yield np.asarray(ids, np.int64), np.asarray(rows, np.float32)
                        ids, rows = [], []
                if ids:
                    yield np.asarray(ids, np.int64), np.asarray(rows, np.float32)

    def _exact_top_k(self, queries: np.ndarray, k: int) -> np.ndarray:
        """Ids ``(Q, k)`` of the exact top ``k`` by inner product with the stored vectors, computed here."""
        q = torch.from_numpy(np.ascontiguousarray(queries, np.float32))
        best_scores = torch.full((len(q), k), -torch.inf)
        best_ids = torch.full((len(q), k), -1, dtype=torch.int64)
        for ids, vectors in self._iter_vectors():
            scores = torch.cat([best_scores, q @ torch.from_numpy(vectors).T], dim=1)
            every = torch.cat([best_ids, torch.from_numpy(ids).unsqueeze(0).expand(len(q), -1)], dim=1)
            best_scores, order = torch.topk(scores, k, dim=1)
            best_ids = torch.gather(every, 1, order)
        return best_ids.numpy()

    def _has_index(self, kind: str, dim: int) -> bool:
        return (kind, dim) in self.first_stage_indexes()

    def _build_index(self, kind: str, dim: int) -> None:
        with _database_errors(self.dsn, f"building index {index_name(self.table, kind, dim)!r}"):
            _ensure_index(
                self._conn, self.table, self.params.replace(kind=kind), dim, self.full_dim, self.vector_type, None
            )

    def _drop_index(self, kind: str, dim: int) -> None:
        with _database_errors(self.dsn, "dropping a tuning index"):
            self._conn.execute(f'DROP INDEX IF EXISTS "{index_name(self.table, kind, dim)}"')

    def _tune_target(self) -> _PgvectorTarget:
        self._target = _PgvectorTarget(self)
        return self._target


class _PgvectorTarget:
    """What :func:`~matryoshka_st.search.tune.tune_index` asks of a backend, answered in SQL; the FAISS counterpart
    is ``tune._FaissTarget``."""

    def __init__(self, index: PgvectorIndex) -> None:
        self.index = index
        self.built: list[int] = []  # first-stage dims whose index tuning created

    def settings(self, ef_searches, nprobes) -> list[int]:
        from matryoshka_st.search.tune import EF_SEARCHES, _grid

        return _grid("ef_searches", ef_searches, EF_SEARCHES, 1, MAX_EF_SEARCH)

    def validate_stages(self, stages) -> None:
        validate_stages(stages, self.index.full_dim, _SCHEDULE_KIND[self.index.first_stage])

    def setting_kwargs(self, setting: int) -> dict:
        return {"ef_search": setting}

    def pool_size(self, setting: int, longest_shortlist: int) -> int:
        return min(setting, len(self.index))

    def exact_top_k(self, queries: np.ndarray, k: int) -> np.ndarray:
        return self.index._exact_top_k(queries, k)

    def use_first_dim(self, dim: int, shortlist: int) -> None:
        index = self.index
        if dim != index.stages[0][0] and not index._has_index(index.first_stage, dim):
            logger.info("Building a %s index at dim %d on %r for tuning.", index.first_stage, dim, index.table)
            index._build_index(index.first_stage, dim)
            self.built.append(dim)
        index.stages = [(dim, min(shortlist, MAX_EF_SEARCH))]

    def drop_first_dim(self, dim: int) -> None:
        """Drop an index tuning built at ``dim`` that gave no candidate."""
        if dim in self.built:
            self.index._drop_index(self.index.first_stage, dim)
            self.built.remove(dim)

    def pool(self, queries: np.ndarray, pool_size: int, dims: Sequence[int]) -> tuple[np.ndarray, dict]:
        return self.index._pool(queries, pool_size, dims)

    def apply(self, candidate: dict) -> None:
        self.index.stages = [candidate["stages"][0]]  # the new first dim may not fit the old rerank stages
        self.index.set_search_params(stages=candidate["stages"], ef_search=candidate["setting"])

    def finish(self) -> None:
        for dim in self.built:
            if dim != self.index.stages[0][0]:
                self.index._drop_index(self.index.first_stage, dim)

    def release(self) -> None:
        for dim in self.built:
            self.index._drop_index(self.index.first_stage, dim)
        self.built = []

    def search_params(self) -> tuple[int, None]:
        return self.index.params.ef_search, None


# -- connection, checks, load ---------------------------------------------------------------------------------------


def _connect(dsn: str | None):
    psycopg = _import_psycopg()
    try:
        return psycopg.connect(dsn or "", autocommit=True, connect_timeout=10)
    except psycopg.Error as error:
        raise PgvectorError(f"cannot connect to PostgreSQL at {_where(dsn)}: {_scrub(error, dsn)}") from None


@contextmanager
def _database_errors(dsn: str | None, doing: str):
    """A database error while ``doing`` becomes one :class:`PgvectorError` line, password removed, no chained
    traceback that could carry it."""
    psycopg = _import_psycopg()
    try:
        yield
    except psycopg.Error as error:
        raise PgvectorError(f"PostgreSQL failed while {doing} at {_where(dsn)}: {_scrub(error, dsn)}") from None


def _register_types(conn) -> None:
    from pgvector.psycopg import register_vector

    register_vector(conn)


def _check_extension(state: _State, dsn: str | None, create_allowed: bool) -> None:
    if state.extension is None:
        if create_allowed:
            return  # created after every check, with the table
        raise PgvectorError(f"the database at {_where(dsn)} has no vector extension: CREATE EXTENSION vector.")
    if _version_tuple(state.extension) < MIN_PGVECTOR:
        raise PgvectorError(
            f"the database at {_where(dsn)} has pgvector {state.extension}; the funnel needs >= 0.7 (halfvec, bit, "
            "subvector, binary_quantize): ALTER EXTENSION vector UPDATE."
        )


def _check_full_dim(full_dim, size: int, what: str) -> int:
    if full_dim is None:
        return size
    if isinstance(full_dim, bool) or not isinstance(full_dim, Integral) or not 1 <= full_dim <= size:
        raise ValueError(f"full_dim {full_dim!r} is not in the {what}: use 1 <= full_dim <= {size}.")
    return int(full_dim)


def _digest_ids(digest, doc_ids) -> None:
    if doc_ids is not None:
        for doc_id in doc_ids:
            digest.update(str(doc_id).encode("utf-8", "surrogatepass") + b"\x00")


def _check_columns(table: str, columns: dict[str, str], config: dict) -> None:
    expected = _expected_columns(int(config["full_dim"]), config["vector_type"])
    if columns != expected:
        raise ValueError(
            f"Table {table!r} has columns {columns}, not the {expected} matryoshka-st made: it was changed outside "
            "matryoshka-st; rebuild it with overwrite=True (--overwrite) or use another table."
        )


def _check_same_table(table: str, state: _State, config: dict) -> None:
    """A table to resume or reuse must hold the same vectors; otherwise nothing is written."""
    old = state.config
    _check_columns(table, state.columns, old)
    fix = "pass the same embeddings, another table, or overwrite=True (--overwrite) to replace it; nothing was changed"
    if (old["full_dim"], old["vector_type"]) != (config["full_dim"], config["vector_type"]):
        raise ValueError(
            f"Table {table!r} holds {old['full_dim']}-dim {old['vector_type']} vectors, not {config['full_dim']}-dim "
            f"{config['vector_type']}: {fix}."
        )
    if old["num_vectors"] != config["num_vectors"] or old.get("fingerprint") != config["fingerprint"]:
        raise ValueError(
            f"Table {table!r} holds another corpus ({old['num_vectors']} rows, fingerprint {old.get('fingerprint')}; "
            f"this one has {config['num_vectors']}, {config['fingerprint']}): {fix}."
        )


def _check_index_options(name: str, info: dict, params: PgvectorParams) -> None:
    options = info["options"]
    have = (int(options.get("m", 16)), int(options.get("ef_construction", 64)))
    if info["valid"] and have != (params.hnsw_m, params.ef_construction):
        raise ValueError(
            f"Index {name!r} exists with m={have[0]}, ef_construction={have[1]}, not hnsw_m={params.hnsw_m}, "
            f"ef_construction={params.ef_construction}: pass those, or DROP INDEX {name} first."
        )


def _write_config(conn, table: str, config: dict, tuning: dict | None) -> None:
    from psycopg.types.json import Jsonb

    conn.execute(
        f"INSERT INTO {METADATA_TABLE} (table_name, format_version, config, tuning) VALUES (%s, %s, %s, %s) "
        "ON CONFLICT (table_name) DO UPDATE SET format_version = EXCLUDED.format_version, config = EXCLUDED.config, "
        "tuning = EXCLUDED.tuning, updated_at = now()",
        [table, FORMAT_VERSION, Jsonb(config), Jsonb(tuning) if tuning is not None else None],
    )


def _load_rows(conn, dsn, table, source: _Source, doc_ids, vector_type, chunk_rows, show_progress_bar) -> None:
    """COPY the rows in chunks of ``chunk_rows``, one transaction each; chunks already complete are skipped and a
    partly written one (there is none unless someone else wrote rows) is replaced, so a rerun never duplicates."""
    from pgvector import HalfVector
    from tqdm.auto import tqdm

    n = source.num_rows
    num_chunks = -(-n // chunk_rows)

    def chunk_size(chunk: int) -> int:
        return min(n, (chunk + 1) * chunk_rows) - chunk * chunk_rows

    with _database_errors(dsn, f"counting the rows of {table!r}"):
        counts = dict(conn.execute(f'SELECT id / %s, count(*) FROM "{table}" GROUP BY 1', [chunk_rows]).fetchall())
    pending = [chunk for chunk in range(num_chunks) if counts.get(chunk, 0) != chunk_size(chunk)]
    loaded = n - sum(chunk_size(chunk) for chunk in pending)
    if not pending:
        logger.info("Table %r already holds all %d rows: nothing to load.", table, n)
        return
    logger.info("Loading %d of %d rows into %r at %s.", n - loaded, n, table, _where(dsn))
    wrap = HalfVector if vector_type == "halfvec" else (lambda row: row)
    psycopg = _import_psycopg()
    with tqdm(total=n, initial=loaded, unit="rows", desc=f"COPY {table}", disable=not show_progress_bar) as bar:
        for chunk in pending:
            start, stop = chunk * chunk_rows, chunk * chunk_rows + chunk_size(chunk)
            vectors = source.rows(start, stop)  # (stop - start, full_dim): encoded now, only for missing chunks
            try:
                with conn.transaction(), conn.cursor() as cursor:
                    if counts.get(chunk):
                        cursor.execute(f'DELETE FROM "{table}" WHERE id >= %s AND id < %s', [start, stop])
                    copy_sql = f'COPY "{table}" (id, doc_id, embedding) FROM STDIN (FORMAT BINARY)'
                    with cursor.copy(copy_sql) as copy:
                        copy.set_types(["int8", "text", vector_type])
                        for offset, vector in enumerate(vectors):
                            row = start + offset
                            copy.write_row((row, None if doc_ids is None else str(doc_ids[row]), wrap(vector)))
            except psycopg.Error as error:
                raise PgvectorError(
                    f"PostgreSQL failed while loading rows {start}-{stop - 1} into {table!r} at {_where(dsn)} "
                    f"({loaded} of {n} rows are committed): {_scrub(error, dsn)}. Run the same build again to "
                    "load the rest; nothing is loaded twice."
                ) from None
            loaded += stop - start
            bar.update(stop - start)


def _ensure_index(conn, table, params: PgvectorParams, dim, full_dim, vector_type, maintenance_work_mem) -> None:
    """``CREATE INDEX`` the first stage's HNSW expression index unless a valid one exists (a killed build leaves
    none: the statement is one transaction)."""
    name = index_name(table, params.kind, dim)
    state = _read_state(conn, table).indexes.get(name)
    if state is not None and state["valid"]:
        return
    column, opclass, _, _ = _first_stage_sql(params.kind, dim, full_dim, vector_type)
    start = time.perf_counter()
    logger.info("Building %s (m=%d, ef_construction=%d) on %r.", name, params.hnsw_m, params.ef_construction, table)
    with conn.transaction():
        if state is not None:
            conn.execute(f'DROP INDEX "{name}"')
        if maintenance_work_mem:
            conn.execute("SELECT set_config('maintenance_work_mem', %s, true)", [maintenance_work_mem])
        conn.execute(
            f'CREATE INDEX "{name}" ON "{table}" USING hnsw ({column} {opclass}) '
            f"WITH (m = {params.hnsw_m}, ef_construction = {params.ef_construction})"
        )
    logger.info("Built %s in %.1f s.", name, time.perf_counter() - start)
