"""Saving and loading a :class:`~matryoshka_st.search.FunnelIndex`: one folder with a JSON config (schedule,
first-stage parameters, tuning record, doc ids), the float32 full-dim vectors (``.npy``, memory-mappable), the prefix
norms and the FAISS first-stage index."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from matryoshka_st._atomic import write_folder_atomically
from matryoshka_st.quantization import BINARY_ROTATIONS_NAME, BinaryCalibration
from matryoshka_st.search.first_stage import FirstStageParams, apply_search_params, read_index, write_index

if TYPE_CHECKING:
    from matryoshka_st.search.funnel import FunnelIndex

FORMAT_VERSION = 2
CONFIG_NAME = "funnel_index.json"
EMBEDDINGS_NAME = "embeddings.npy"
PREFIX_NORMS_NAME = "prefix_norms.npy"
FIRST_STAGE_NAME = "first_stage.faiss"


def save_index(index: FunnelIndex, path: str | Path) -> None:
    """Write ``index`` to the folder ``path`` (created if needed).

    The files are written into a temporary sibling folder that then replaces ``path``, so a killed build leaves the
    old index or the new one, never half of one (where ``path`` holds other files too, only the index files are
    replaced, the config last). Refusing to replace an index is the caller's choice.
    """
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
        "binary_calibration": None,
    }

    def write(folder: Path) -> None:
        if index.binary_calibration is not None:  # the rotations the sign bits were taken after
            config["binary_calibration"] = index.binary_calibration.save(folder)
        np.save(folder / EMBEDDINGS_NAME, np.asarray(index.embeddings))
        np.save(folder / PREFIX_NORMS_NAME, index._prefix_norms)
        write_index(index._index, index.first_stage, str(folder / FIRST_STAGE_NAME))
        (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    # a folder holding other files too keeps them: the index files are replaced one by one, the config last
    write_folder_atomically(
        path,
        write,
        own_files=[FIRST_STAGE_NAME, EMBEDDINGS_NAME, PREFIX_NORMS_NAME, BINARY_ROTATIONS_NAME, CONFIG_NAME],
    )


def load_index(cls: type[FunnelIndex], path: str | Path, mmap: bool = False) -> FunnelIndex:
    """Read the index in the folder ``path``; ``mmap`` leaves the full-dim vectors on disk. A missing or damaged file
    raises ``ValueError`` naming it and how to rebuild the index."""
    path = Path(path)
    if not (path / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"No funnel index in {str(path)!r}: expected {CONFIG_NAME} written by save().")
    rebuild = "rebuild the index with 'matryoshka-st search build ... --overwrite'"
    try:
        config = json.loads((path / CONFIG_NAME).read_text(encoding="utf-8"))
        if not isinstance(config, dict):
            raise ValueError(f"a {type(config).__name__}, not an object")
        stages, full_dim, source_dim = config["stages"], config["full_dim"], config["source_dim"]
        params = FirstStageParams.from_dict(config.get("first_stage_params") or {"kind": config["first_stage"]})
    except (ValueError, KeyError, TypeError) as error:
        what = f"lacks the key {error}" if isinstance(error, KeyError) else f"is not valid ({error})"
        raise ValueError(f"{path / CONFIG_NAME} {what}: {rebuild}.") from None
    if config.get("format_version") not in (1, FORMAT_VERSION):
        raise ValueError(f"{path} has format_version {config.get('format_version')!r}, expected {FORMAT_VERSION}.")
    try:
        first = read_index(params.kind, str(path / FIRST_STAGE_NAME))
    except RuntimeError as error:  # faiss reports a missing or truncated file as a RuntimeError
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else "unreadable"
        raise ValueError(f"{path / FIRST_STAGE_NAME} cannot be read ({reason}): {rebuild}.") from None
    arrays = {}
    for name in (EMBEDDINGS_NAME, PREFIX_NORMS_NAME):
        try:
            arrays[name] = np.load(path / name, mmap_mode="r" if mmap and name == EMBEDDINGS_NAME else None)
        except (OSError, ValueError, EOFError) as error:
            raise ValueError(f"{path / name} cannot be read ({error}): {rebuild}.") from None
    binary_calibration = None
    if config.get("binary_calibration"):
        try:
            binary_calibration = BinaryCalibration.load(path, config["binary_calibration"])
        except (OSError, ValueError) as error:
            raise ValueError(f"{path}: the saved sign-bit rotations cannot be read ({error}): {rebuild}.") from None
    options = {name: value for name, value in params.to_dict().items() if name != "kind"}
    index = cls(
        arrays[EMBEDDINGS_NAME],
        stages,
        full_dim=full_dim,
        first_stage=params.kind,
        doc_ids=config.get("doc_ids"),
        model_name_or_path=config.get("model_name_or_path"),
        _first_stage_index=first,
        _prefix_norms=arrays[PREFIX_NORMS_NAME],
        binary_calibration=binary_calibration,
        **options,
    )
    apply_search_params(first, params)
    index.source_dim = source_dim
    index.tuning = config.get("tuning")
    return index
