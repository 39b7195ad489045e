from __future__ import annotations

import pytest
from mteb.abstasks import (
    AbsTaskClassification,
    AbsTaskClustering,
    AbsTaskPairClassification,
    AbsTaskRetrieval,
    AbsTaskSTS,
)

from matryoshka_st._bundled import SAMPLE_DEV_RETRIEVAL
from matryoshka_st.evaluation.tasks import ensure_task_data, load_task, load_tasks

from .conftest import DOCS, QUERIES, write_jsonl


def test_beir_folder_is_an_mteb_retrieval_task(beir_folder):
    task = load_task(beir_folder)
    assert isinstance(task, AbsTaskRetrieval)
    assert task.metadata.name == "tiny_beir"
    assert task.metadata.main_score == "ndcg_at_10"
    assert task.metadata.eval_splits == ["test"]
    task.load_data()
    split = task.dataset["default"]["test"]
    assert split["corpus"]["text"] == DOCS
    assert split["queries"]["text"] == QUERIES
    assert split["relevant_docs"]["q3"] == {"d3": 1}


def test_revision_follows_file_contents(beir_folder):
    before = load_task(beir_folder).metadata.revision
    assert load_task(beir_folder).metadata.revision == before
    write_jsonl(beir_folder / "queries.jsonl", [{"_id": f"q{i}", "text": t.upper()} for i, t in enumerate(QUERIES)])
    assert load_task(beir_folder).metadata.revision != before


def test_shipped_dev_set_loads():
    task = load_task(SAMPLE_DEV_RETRIEVAL)
    task.load_data()
    split = task.dataset["default"]["test"]
    assert (len(split["queries"]), len(split["corpus"])) == (300, 1782)


@pytest.mark.parametrize(
    ("row", "base", "main_score"),
    [
        ({"sentence1": "a", "sentence2": "b", "score": 1.5}, AbsTaskSTS, "cosine_spearman"),
        ({"sentence1": "a", "sentence2": "b", "label": 1}, AbsTaskPairClassification, "max_ap"),
        ({"text": "a", "label": "x"}, AbsTaskClassification, "accuracy"),
        ({"text": "a", "cluster": "x"}, AbsTaskClustering, "v_measure"),
    ],
)
def test_jsonl_kind_from_columns(tmp_path, row, base, main_score):
    other = {k: (0 if k in ("label", "score") else "y" if k == "cluster" else "c") for k in row}
    task = load_task(write_jsonl(tmp_path / "task.jsonl", [row, other]))
    assert isinstance(task, base)
    assert task.metadata.name == "task"
    assert task.metadata.main_score == main_score
    task.load_data()
    assert len(task.dataset["test"]) == 2


def test_clustering_prefix_with_label_column(tmp_path):
    path = write_jsonl(tmp_path / "groups.jsonl", [{"text": "a", "label": "x"}, {"text": "b", "label": "y"}])
    assert isinstance(load_task(path), AbsTaskClassification)
    task = load_task(f"clustering:{path}")
    assert isinstance(task, AbsTaskClustering)
    task.load_data()
    assert task.dataset["test"]["labels"] == [0, 1]


def test_classification_split_column(tmp_path):
    rows = [{"text": f"t{i}", "label": i % 2, "split": "train" if i < 6 else "test"} for i in range(10)]
    task = load_task(write_jsonl(tmp_path / "c.jsonl", rows))
    assert task.metadata.eval_splits == ["test"] and not task.is_cross_validation
    task.load_data()
    assert (len(task.dataset["train"]), len(task.dataset["test"])) == (6, 4)
    no_split = load_task(write_jsonl(tmp_path / "d.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": 1}]))
    assert no_split.is_cross_validation and no_split.train_split == "test"


@pytest.mark.parametrize(
    ("rows", "match"),
    [
        ([{"sentence1": "a", "sentence2": "b", "score": 1}, {"sentence1": "a", "score": 2}], r"t\.jsonl:2.*sentence2"),
        ([{"question": "a", "answer": "b"}], "Cannot tell the task kind.*clustering:"),
        ([{"sentence1": "a", "sentence2": "b", "label": 2}], "must be 0 or 1"),
        ([{"text": "a", "split": "test", "label": 0}], "needs 'train'"),
    ],
)
def test_malformed_files_name_the_problem(tmp_path, rows, match):
    with pytest.raises(ValueError, match=match):
        load_task(write_jsonl(tmp_path / "t.jsonl", rows))


def test_qrels_with_unknown_ids(beir_folder):
    with (beir_folder / "qrels" / "test.tsv").open("a") as handle:
        handle.write("q1\td99\t1\n")
    with pytest.raises(ValueError, match=r"test\.tsv:8: id 'd99' is not in corpus\.jsonl"):
        load_task(beir_folder)


def test_not_a_beir_folder(tmp_path):
    with pytest.raises(ValueError, match="not a BEIR retrieval folder"):
        load_task(tmp_path)


def test_unknown_name_and_duplicates(beir_folder):
    with pytest.raises(ValueError, match="neither an existing file or folder nor an mteb task name"):
        load_task("NoSuchTaskAnywhere")
    with pytest.raises(ValueError, match="occur more than once"):
        load_tasks([beir_folder, beir_folder])


def test_mteb_task_offline_names_the_missing_dataset(monkeypatch):
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    task = load_task("STS12")
    assert task.metadata.name == "STS12"
    try:
        ensure_task_data(task)
    except ConnectionError as error:
        assert "'STS12' needs the dataset 'mteb/sts12-sts'" in str(error) and "local task file" in str(error)
    else:
        pytest.skip("STS12 is in the local datasets cache")
