"""The harness's precisions beyond sentence-transformers' own: binary+rescore and int8 with the model's scales."""

from __future__ import annotations

import json

import numpy as np
import pytest
from datasets import Dataset
from mteb.mocks.mock_tasks import MockRetrievalTask
from mteb.types import PromptType
from torch.utils.data import DataLoader

from matryoshka_st.dims import truncate_numpy
from matryoshka_st.evaluation import evaluate
from matryoshka_st.evaluation.cache import EmbeddingCache
from matryoshka_st.evaluation.report import load_scores, render
from matryoshka_st.metadata import MatryoshkaConfig, write_matryoshka_config
from matryoshka_st.quantization import BinaryCalibration, Int8Calibration, prefix_rotation, rescore_binary

from .conftest import DOCS, QUERIES

KWARGS = {"task_metadata": MockRetrievalTask().metadata, "hf_split": "test", "hf_subset": "default"}


def _loaders():
    return (
        DataLoader(Dataset.from_dict({"text": QUERIES}), batch_size=4),
        DataLoader(Dataset.from_dict({"text": DOCS}), batch_size=4),
    )


def test_binary_rescore_keeps_queries_float_and_scores_by_rescoring(tiny_model):
    cache = EmbeddingCache(tiny_model, name="local/tiny")
    queries, docs = _loaders()
    view = cache.view(16, "binary+rescore")
    q = view.encode(queries, prompt_type=PromptType.query, **KWARGS)
    d = view.encode(docs, prompt_type=PromptType.document, **KWARGS)
    full_q = cache.encode(queries, prompt_type=PromptType.query, **KWARGS)
    full_d = cache.encode(docs, prompt_type=PromptType.document, **KWARGS)
    np.testing.assert_allclose(q, truncate_numpy(full_q, 16), rtol=1e-6)  # the float query
    np.testing.assert_array_equal(d, np.where(full_d[:, :16] > 0, 1.0, -1.0))  # the stored codes
    scores = np.asarray(view.similarity(q, d))
    np.testing.assert_allclose(scores, rescore_binary(truncate_numpy(full_q, 16), d), atol=1e-6)
    assert view.mteb_model_meta.experiment_kwargs == {"embed_dim": 16, "output_dtypes": "binary", "rescore": 40}


def test_binary_int8_rescore_shortlists_by_the_codes_and_rescores_against_the_int8_codes(tiny_model):
    calibration = Int8Calibration.fit(tiny_model.encode(QUERIES + DOCS, convert_to_numpy=True), [64, 32, 16])
    rotation = BinaryCalibration(rotations={16: prefix_rotation(16)}, recall={})
    cache = EmbeddingCache(tiny_model, name="local/tiny", int8_calibration=calibration, binary_calibration=rotation)
    queries, docs = _loaders()
    view = cache.view(16, "binary+int8-rescore")
    q = view.encode(queries, prompt_type=PromptType.query, **KWARGS)
    d = view.encode(docs, prompt_type=PromptType.document, **KWARGS)
    prefix_q = truncate_numpy(cache.encode(queries, prompt_type=PromptType.query, **KWARGS), 16)
    prefix_d = truncate_numpy(cache.encode(docs, prompt_type=PromptType.document, **KWARGS), 16)
    int8_d = calibration.dequantize(calibration.quantize(prefix_d, 16), 16)
    codes_d = np.where(prefix_d @ prefix_rotation(16).T > 0, 1.0, -1.0)
    assert q.shape == (len(QUERIES), 32) and d.shape == (len(DOCS), 32)
    np.testing.assert_array_equal(d[:, :16], codes_d)  # the searched codes, after the saved rotation
    np.testing.assert_allclose(d[:, 16:], int8_d)  # the int8 codes that rescore the shortlist
    scores = np.asarray(view.similarity(q, d))
    hamming = np.where(prefix_q @ prefix_rotation(16).T > 0, 1.0, -1.0) @ codes_d.T
    for row, query in enumerate(prefix_q):
        shortlist = np.argsort(-hamming[row], kind="stable")[: min(40, len(DOCS))]
        cosines = int8_d[shortlist] @ query / np.linalg.norm(int8_d[shortlist], axis=1)
        np.testing.assert_allclose(scores[row, shortlist], cosines, atol=1e-5)
    # the int8 rescoring differs from rescoring against the sign codes
    assert not np.allclose(scores, rescore_binary(prefix_q @ prefix_rotation(16).T, codes_d))
    assert view.mteb_model_meta.experiment_kwargs == {
        "embed_dim": 16, "output_dtypes": "binary", "rescore": 40, "rescore_with": "int8",
        "int8_calibration": "shells", "binary_rotation": "prefix",
    }  # fmt: skip
    # pair tasks have no shortlist: they score the codes, as binary+rescore does
    pairwise = np.asarray(view.similarity_pairwise(d[:3], d[3:6]))
    np.testing.assert_allclose(pairwise, np.sum(codes_d[:3] * codes_d[3:6], axis=1) / 16, atol=1e-6)


def test_int8_uses_the_scales_the_model_saved(tiny_model):
    calibration_texts = [f"{q} {d}" for q in QUERIES for d in DOCS]
    fit = tiny_model.encode(calibration_texts, convert_to_numpy=True)
    calibration = Int8Calibration.fit(fit, [64, 32, 16])
    cache = EmbeddingCache(tiny_model, name="local/tiny", int8_calibration=calibration)
    queries, _ = _loaders()
    full = cache.encode(queries, prompt_type=PromptType.query, **KWARGS)
    codes = cache.view(32, "int8").encode(queries, prompt_type=PromptType.query, **KWARGS)
    expected = calibration.dequantize(calibration.quantize(truncate_numpy(full, 32), 32), 32)
    np.testing.assert_array_equal(codes, expected)
    assert cache.view(32, "int8").mteb_model_meta.experiment_kwargs["int8_calibration"] == "shells"
    # a dim without saved scales falls back to ranges fitted on the task's texts (values in [-128, 127])
    other = cache.view(8, "int8")
    assert "int8_calibration" not in other.mteb_model_meta.experiment_kwargs
    fallback = other.encode(queries, prompt_type=PromptType.query, **KWARGS)
    assert fallback.max() > 1 and np.allclose(fallback, np.round(fallback))


@pytest.mark.parametrize("saved", [False, True])
def test_evaluate_reads_the_saved_scales_and_reports_binary_rescore(tiny_model, beir_folder, tmp_path, saved):
    folder = tmp_path / "model"
    tiny_model.save(str(folder))
    if saved:
        fit = tiny_model.encode(QUERIES + DOCS, convert_to_numpy=True)
        scales = Int8Calibration.fit(fit, [64, 32]).to_dict()
        write_matryoshka_config(folder, MatryoshkaConfig([64, 32], [1.0, 1.0], 64, int8_calibration=scales))
    runs = evaluate(
        {"tiny": str(folder)},
        [beir_folder],
        dims=[64, 32],
        precisions=["float32", "int8", "binary", "binary+rescore", "binary+int8-rescore"],
        output_folder=tmp_path / "out",
        show_progress_bar=False,
    )
    assert sorted((r.dim, r.precision) for r in runs) == sorted(
        (d, p) for d in (64, 32) for p in ("float32", "int8", "binary", "binary+rescore", "binary+int8-rescore")
    )
    metas = [json.loads(p.read_text()) for p in (tmp_path / "out").rglob("model_meta.json")]
    int8_kwargs = [m["experiment_kwargs"] for m in metas if m["experiment_kwargs"].get("output_dtypes") == "int8"]
    assert len(int8_kwargs) == 2
    assert all(("int8_calibration" in kwargs) == saved for kwargs in int8_kwargs)
    int8_rescored = [m["experiment_kwargs"] for m in metas if m["experiment_kwargs"].get("rescore_with") == "int8"]
    assert len(int8_rescored) == 2 and all(("int8_calibration" in kwargs) == saved for kwargs in int8_rescored)
    # the report reads the rescored runs back as their own precision
    assert {s.precision for s in load_scores([tmp_path / "out"])} == {
        "float32", "int8", "binary", "binary+rescore", "binary+int8-rescore"
    }  # fmt: skip
    # and the report leads with the (dim, precision) grid: score, share of full float32, bytes per vector
    render([tmp_path / "out"], tmp_path / "report")
    markdown = (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    grid = markdown[markdown.index("every (dimension, precision)") :]
    assert "| dim | float32 | int8 | binary | binary+rescore | binary+int8-rescore |" in grid
    row32 = next(line for line in grid.splitlines() if line.startswith("| 32 |"))
    cells = [cell.strip() for cell in row32.strip("|").split("|")]
    assert [cell.rsplit("· ", 1)[1] for cell in cells[1:]] == ["128 B", "32 B", "4 B", "4 B", "36 B"]
    assert markdown.index("every (dimension, precision)") < markdown.index("tiny: float32")


def test_binary_codes_take_the_models_prefix_rotation(tiny_model):
    calibration = BinaryCalibration(rotations={32: prefix_rotation(32)}, recall={})
    cache = EmbeddingCache(tiny_model, name="local/tiny", binary_calibration=calibration)
    queries, docs = _loaders()
    full_q = cache.encode(queries, prompt_type=PromptType.query, **KWARGS)
    full_d = cache.encode(docs, prompt_type=PromptType.document, **KWARGS)
    rotated_d = truncate_numpy(full_d, 32) @ prefix_rotation(32).T
    codes = cache.view(32, "binary").encode(docs, prompt_type=PromptType.document, **KWARGS)
    np.testing.assert_array_equal(codes, np.where(rotated_d > 0, 1.0, -1.0))
    assert cache.view(32, "binary").mteb_model_meta.experiment_kwargs["binary_rotation"] == "prefix"
    # the rescoring query lives in the same rotated space: its float scores are those of the plain prefix
    query = cache.view(32, "binary+rescore").encode(queries, prompt_type=PromptType.query, **KWARGS)
    np.testing.assert_allclose(
        query @ rotated_d.T, truncate_numpy(full_q, 32) @ truncate_numpy(full_d, 32).T, atol=1e-5
    )
    # a dim without a rotation keeps the axes' own signs
    plain = cache.view(16, "binary")
    np.testing.assert_array_equal(
        plain.encode(docs, prompt_type=PromptType.document, **KWARGS), np.where(full_d[:, :16] > 0, 1.0, -1.0)
    )
    assert "binary_rotation" not in plain.mteb_model_meta.experiment_kwargs
