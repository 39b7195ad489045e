from __future__ import annotations

import mteb
import numpy as np
import pytest
from mteb.mocks.mock_tasks import (
    LegacyMockClusteringFastTask,
    MockClassificationTask,
    MockPairClassificationTask,
    MockRetrievalTask,
    MockSTSTask,
)
from mteb.results import TaskResult
from sentence_transformers.util import quantize_embeddings

from matryoshka_st.dims import truncate_numpy
from matryoshka_st.evaluation import evaluate
from matryoshka_st.evaluation.cache import TruncatedEncoder

from .conftest import DOCS, QUERIES, write_jsonl
from .test_cache import count_encoded_texts

MOCK_TASKS = [MockRetrievalTask, MockSTSTask, MockClassificationTask, MockPairClassificationTask]


def test_mteb_mock_tasks_at_each_dim(tiny_model, tmp_path):
    runs = evaluate(
        {"tiny": tiny_model},
        [cls() for cls in MOCK_TASKS] + [LegacyMockClusteringFastTask()],
        dims=[8],
        output_folder=tmp_path,
        show_progress_bar=False,
    )
    assert sorted({(r.dim, r.precision) for r in runs}) == [(8, "float32"), (64, "float32")]
    assert len(runs) == 5 * 2
    for run in runs:
        assert run.path == (
            tmp_path
            / "results"
            / "local__tiny"
            / run.revision
            / "experiments"
            / f"embed_dim_{run.dim}"
            / f"{run.task}.json"
        )
        assert run.path.exists() and (run.path.parent / "model_meta.json").exists()
        assert TaskResult.from_disk(run.path).get_score() == pytest.approx(run.score)
        assert -1.0 <= run.score <= 1.0
    assert len({r.path for r in runs}) == len(runs)


def test_local_task_kinds_end_to_end(tiny_model, tmp_path, beir_folder, sts_file, classification_file):
    pairs = write_jsonl(
        tmp_path / "pairs.jsonl",
        [{"sentence1": f"s {i}", "sentence2": f"s {i if i % 2 else i + 1}", "label": i % 2} for i in range(8)],
    )
    clusters = write_jsonl(
        tmp_path / "clusters.jsonl", [{"text": f"{w} {i}", "cluster": w} for w in ("cat", "bank") for i in range(6)]
    )
    runs = evaluate(
        {"tiny": tiny_model},
        [beir_folder, sts_file, classification_file, pairs, clusters],
        dims=[16],
        output_folder=tmp_path / "out",
        show_progress_bar=False,
    )
    assert {r.task for r in runs} == {"tiny_beir", "sts_sample", "topics", "pairs", "clusters"}
    assert len(runs) == 5 * 2  # dims 64 and 16
    for run in runs:
        assert run.result.dataset_revision and 0 <= abs(run.score) <= 1
    # each dim and precision has its own score on disk: none shadows another
    sts = {(r.dim, r.precision): TaskResult.from_disk(r.path).get_score() for r in runs if r.task == "sts_sample"}
    assert len(set(sts.values())) == 2


def test_results_load_with_mteb(tiny_model, tmp_path, beir_folder):
    evaluate({"tiny": tiny_model}, beir_folder, dims=[32], output_folder=tmp_path, show_progress_bar=False)
    loaded = mteb.ResultCache(tmp_path).load_results(load_experiments="match_name", include_remote=False)
    experiments = sorted(model.experiment_name for model in loaded.model_results)
    assert experiments == ["embed_dim_32", "embed_dim_64"]
    assert {model.model_name for model in loaded.model_results} == {"local/tiny"}


def test_rerun_skips_finished_results(tiny_model, tmp_path, beir_folder):
    first = evaluate({"tiny": tiny_model}, beir_folder, dims=[32, 16], output_folder=tmp_path, show_progress_bar=False)
    assert not any(r.skipped for r in first)
    seen = count_encoded_texts(tiny_model)
    again = evaluate({"tiny": tiny_model}, beir_folder, dims=[32, 16], output_folder=tmp_path, show_progress_bar=False)
    assert all(r.skipped for r in again) and not seen
    assert [r.score for r in again] == pytest.approx([r.score for r in first])
    # one new dim: only it runs
    more = evaluate({"tiny": tiny_model}, beir_folder, dims=[32, 8], output_folder=tmp_path, show_progress_bar=False)
    assert {r.dim: r.skipped for r in more} == {64: True, 32: True, 8: False}
    redo = evaluate(
        {"tiny": tiny_model}, beir_folder, dims=[32], output_folder=tmp_path, overwrite=True, show_progress_bar=False
    )
    assert not any(r.skipped for r in redo)


def test_int8_rerun_after_float32_results_calibrates_on_the_whole_task(tiny_model, tmp_path, beir_folder, monkeypatch):
    """A rerun that finds the float32 results on disk and only has int8 to compute still calibrates int8 on all of
    the task's texts (queries and documents), and scores what a clean run scores.

    Breakage checks (each in a throwaway copy fails this test): calibrating per ``encode`` call
    (``calibration_embeddings=truncated`` in ``EmbeddingCache.derive``); dropping the full-size run that
    ``evaluate`` does before the first int8 view of a task when the cache has not seen its texts.
    """
    dims = [32, 16]
    evaluate({"tiny": tiny_model}, beir_folder, dims=dims, output_folder=tmp_path / "a", show_progress_bar=False)

    seen = []  # (dim, precision, full-size vectors, what the view returned) for every call mteb makes
    encode = TruncatedEncoder.encode

    def recording_encode(self, inputs, **kwargs):
        output = encode(self, inputs, **kwargs)
        seen.append((self.dim, self.precision, self.cache.encode(inputs, **kwargs), output))  # cached: no encoding
        return output

    monkeypatch.setattr(TruncatedEncoder, "encode", recording_encode)
    rerun = evaluate(
        {"tiny": tiny_model},
        beir_folder,
        dims=dims,
        precisions=["float32", "int8"],
        output_folder=tmp_path / "a",
        show_progress_bar=False,
    )
    assert {(r.precision, r.skipped) for r in rerun} == {("float32", True), ("int8", False)}
    int8_calls = [call for call in seen if call[1] == "int8"]
    assert {dim for dim, *_ in int8_calls} == {64, 32, 16}
    for dim in (64, 32, 16):
        calls = [(full, output) for d, _, full, output in int8_calls if d == dim]
        assert len(calls) == 2  # the queries and the documents, one call each
        union = truncate_numpy(np.concatenate([full for full, _ in calls]), dim)  # (6 + 8, dim)
        assert len(union) == len(QUERIES) + len(DOCS)
        for full, output in calls:
            expected = quantize_embeddings(truncate_numpy(full, dim), "int8", calibration_embeddings=union)
            np.testing.assert_array_equal(output, expected.astype(np.float32))
    monkeypatch.undo()
    clean = evaluate(
        {"tiny": tiny_model},
        beir_folder,
        dims=dims,
        precisions=["float32", "int8"],
        output_folder=tmp_path / "b",
        show_progress_bar=False,
    )
    assert {(r.dim, r.precision): r.score for r in rerun} == {(r.dim, r.precision): r.score for r in clean}


def test_edited_task_file_is_recomputed(tiny_model, tmp_path, beir_folder):
    evaluate({"tiny": tiny_model}, beir_folder, dims=[64], output_folder=tmp_path, show_progress_bar=False)
    with (beir_folder / "corpus.jsonl").open("a") as handle:
        handle.write('{"_id": "d99", "title": "", "text": "a new document"}\n')
    (run,) = evaluate({"tiny": tiny_model}, beir_folder, dims=[64], output_folder=tmp_path, show_progress_bar=False)
    assert not run.skipped


def test_default_dims_and_model_names(tiny_model, tmp_path, beir_folder):
    model_dir = tmp_path / "runs" / "tuned"
    tiny_model.save(str(model_dir))
    runs = evaluate(str(model_dir), beir_folder, output_folder=tmp_path / "out", show_progress_bar=False)
    assert [r.dim for r in runs] == [64, 32]  # default_dims(64)
    assert {r.model for r in runs} == {"runs/tuned"}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dims": [128]}, r"exceed the model's embedding dimension 64"),
        ({"dims": [32.5]}, "positive integers"),
        ({"dims": []}, "non-empty"),
        ({"precisions": ["float16"]}, "Unknown precision"),
    ],
)
def test_bad_arguments_fail_before_encoding(tiny_model, tmp_path, beir_folder, kwargs, match):
    seen = count_encoded_texts(tiny_model)
    with pytest.raises(ValueError, match=match):
        evaluate({"tiny": tiny_model}, beir_folder, output_folder=tmp_path, **kwargs)
    assert not seen


def test_two_models_with_one_name(tiny_model, _tiny_model, tmp_path, beir_folder):
    with pytest.raises(ValueError, match="both named 'local/x'"):
        evaluate({"x": tiny_model, "local/x": _tiny_model}, beir_folder, output_folder=tmp_path)
