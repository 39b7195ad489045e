"""Saving and loading a :class:`~matryoshka_st.search.FunnelIndex`: one folder with a JSON config (schedule,
first-stage parameters, tuning record, doc ids), the float32 full-dim vectors (``.npy``, memory-mappable), the prefix
norms and the FAISS first-stage index."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from matryoshka_st.search.first_stage import FirstStageParams, apply_search_params, read_index, write_index

if TYPE_CHECKING:
    from matryoshka_st.search.funnel import FunnelIndex

FORMAT_VERSION = 2
CONFIG_NAME = "funnel_index.json"
EMBEDDINGS_NAME = "embeddings.npy"
PREFIX_NORMS_NAME = "prefix_norms.npy"
FIRST_STAGE_NAME = "first_stage.faiss"


def save_index(index: FunnelIndex, path: str | Path) -> None:
    """Write ``index`` to the folder ``path`` (created if needed)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = {
        "format_version": FORMAT_VERSION,
        "stages": [list(stage) for stage in index.stages],
        "full_dim": index.full_dim,
        "source_dim": index.source_dim,
        "first_stage": index.first_stage,
        "first_stage_params": index.params.to_dict(),
        "num_vectors": len(index),
        "model_name_or_path": index.model_name_or_path,
        "tuning": index.tuning,
        "doc_ids": index.doc_ids,
        "memory": asdict(index.memory_report()),
    }
    np.save(path / EMBEDDINGS_NAME, np.asarray(index.embeddings))
    np.save(path / PREFIX_NORMS_NAME, index._prefix_norms)
    write_index(index._index, index.first_stage, str(path / FIRST_STAGE_NAME))
    (path / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def load_index(cls: type[FunnelIndex], path: str | Path, mmap: bool = False) -> FunnelIndex:
    """Read the index in the folder ``path``; ``mmap`` leaves the full-dim vectors on disk."""
    path = Path(path)
    if not (path / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"No funnel index in {str(path)!r}: expected {CONFIG_NAME} written by save().")
    config = json.loads((path / CONFIG_NAME).read_text(encoding="utf-8"))
    if config.get("format_version") not in (1, FORMAT_VERSION):
        raise ValueError(f"{path} has format_version {config.get('format_version')!r}, expected {FORMAT_VERSION}.")
    params = FirstStageParams.from_dict(config.get("first_stage_params") or {"kind": config["first_stage"]})
    first = read_index(params.kind, str(path / FIRST_STAGE_NAME))
    options = {name: value for name, value in params.to_dict().items() if name != "kind"}
    index = cls(
        np.load(path / EMBEDDINGS_NAME, mmap_mode="r" if mmap else None),
        config["stages"],
        full_dim=config["full_dim"],
        first_stage=params.kind,
        doc_ids=config.get("doc_ids"),
        model_name_or_path=config.get("model_name_or_path"),
        _first_stage_index=first,
        _prefix_norms=np.load(path / PREFIX_NORMS_NAME),
        **options,
    )
    apply_search_params(first, params)
    index.source_dim = config["source_dim"]
    index.tuning = config.get("tuning")
    return index
