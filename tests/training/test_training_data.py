from __future__ import annotations

import pytest
from datasets import Dataset

from matryoshka_st._bundled import SAMPLE_DEV_RETRIEVAL, SAMPLE_PAIRS
from matryoshka_st.training.data import (
    DataError,
    infer_loss_spec,
    load_data,
    parse_mapping,
    prepare_dataset,
    rename_columns,
    split_eval,
)
from matryoshka_st.training.evaluators import load_retrieval_set, retrieval_set_from_pairs
from tests.training._helpers import pair_rows, scored_rows, write_jsonl


@pytest.mark.parametrize(
    "rows, loss, texts, label",
    [
        ({"anchor": ["a"], "positive": ["b"]}, "MultipleNegativesRankingLoss", ["anchor", "positive"], None),
        (
            {"anchor": ["a"], "positive": ["b"], "negative_2": ["d"], "negative_1": ["c"], "source": ["x"]},
            "MultipleNegativesRankingLoss",
            ["anchor", "positive", "negative_1", "negative_2"],
            None,
        ),
        ({"sentence1": ["a"], "sentence2": ["b"], "score": [0.5]}, "CoSENTLoss", ["sentence1", "sentence2"], "score"),
        ({"sentence1": ["a"], "sentence2": ["b"], "label": [2]}, "SoftmaxLoss", ["sentence1", "sentence2"], "label"),
        ({"text": ["a"], "label": ["spam"]}, "BatchAllTripletLoss", ["text"], "label"),
    ],
)
def test_loss_follows_the_columns(rows, loss, texts, label):
    spec = infer_loss_spec(Dataset.from_dict(rows))
    assert (spec.name, spec.text_columns, spec.label_column) == (loss, texts, label)


def test_prepare_keeps_loss_columns_and_encodes_string_labels():
    dataset = Dataset.from_dict({"text": ["a", "b", "c"], "label": ["x", "y", "x"], "id": [1, 2, 3]})
    spec = infer_loss_spec(dataset)
    prepared = prepare_dataset(dataset, spec, "train")
    assert prepared.column_names == ["text", "label"]
    assert prepared["label"] == [0, 1, 0]


@pytest.mark.parametrize(
    "rows, loss, message",
    [
        ({"question": ["a"], "answer": ["b"]}, None, "Cannot choose a loss"),
        ({"text": ["a"], "score": [0.1]}, None, "Cannot choose a loss"),
        ({"anchor": ["a"], "positive": ["b"]}, "CoSENTLoss", "do not fit CoSENTLoss"),
        ({"sentence1": ["a"], "sentence2": ["b"], "score": [0.3]}, "SoftmaxLoss", "not a class"),
        ({"anchor": ["a"], "positive": ["b"]}, "NoSuchLoss", "Unknown loss 'NoSuchLoss'"),
        ({"anchor": ["a"], "positive": ["b"]}, "MatryoshkaLoss", "always applied"),
        ({"anchor": ["a"], "positive": [3]}, None, "should hold text"),
    ],
)
def test_columns_that_do_not_fit(rows, loss, message):
    with pytest.raises(DataError, match=message):
        infer_loss_spec(Dataset.from_dict(rows), loss)


def test_loss_kwargs_are_checked_against_the_signature():
    dataset = Dataset.from_dict({"anchor": ["a"], "positive": ["b"]})
    assert infer_loss_spec(dataset, None, {"scale": 30}).kwargs == {"scale": 30}
    with pytest.raises(DataError, match=r"does not accept the keyword arguments \['scael'\]"):
        infer_loss_spec(dataset, None, {"scael": 30})


def test_explicit_loss_name_is_case_insensitive():
    dataset = Dataset.from_dict({"anchor": ["a"], "positive": ["b"], "negative": ["c"]})
    assert infer_loss_spec(dataset, "tripletloss").name == "TripletLoss"


def test_load_formats_and_folders(tmp_path):
    write_jsonl(tmp_path / "folder" / "a.jsonl", pair_rows(3))
    write_jsonl(tmp_path / "folder" / "b.jsonl", pair_rows(2, seed=1))
    assert len(load_data(str(tmp_path / "folder"))) == 5
    (tmp_path / "s.csv").write_text("sentence1,sentence2,score\na,b,0.5\nc,d,0.25\n")
    assert load_data(str(tmp_path / "s.csv"))["score"] == [0.5, 0.25]
    (tmp_path / "s.tsv").write_text("text\tlabel\na\t1\n")
    assert load_data(str(tmp_path / "s.tsv")).column_names == ["text", "label"]
    Dataset.from_dict({"text": ["a", "b"], "label": [0, 1]}).to_parquet(str(tmp_path / "p.parquet"))
    assert len(load_data(str(tmp_path / "p.parquet"))) == 2
    assert len(load_data(str(SAMPLE_PAIRS))) > 1000  # .jsonl.gz


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("missing.jsonl", None, "does not exist"),
        ("empty.jsonl", "", "is empty"),
        ("header_only.csv", "anchor,positive\n", "is empty"),
        ("broken.jsonl", '{"anchor": "a", "positive": \n', "broken.jsonl:1: line 1 is not valid JSON"),
        ("latin1.jsonl", b'{"anchor": "caf\xe9"}\n', "latin1.jsonl:1: not UTF-8 text .byte 0xe9 at column 16."),
        ("latin1.csv", b"anchor,positive\ncaf\xe9,b\n", "latin1.csv:2: not UTF-8 text"),
        ("data.txt", "hello\n", "Unsupported data file"),
    ],
)
def test_bad_files(tmp_path, name, content, message):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=message):
        load_data(str(path))


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no data files"):
        load_data(str(tmp_path / "empty"))


def test_column_mapping():
    assert parse_mapping("question=anchor, answer=positive", "m") == {"question": "anchor", "answer": "positive"}
    assert parse_mapping('{"q": "anchor"}', "m") == {"q": "anchor"}
    with pytest.raises(DataError, match="not valid JSON"):
        parse_mapping("{oops", "column_mapping")
    dataset = rename_columns(Dataset.from_dict({"q": ["a"], "d": ["b"]}), {"q": "anchor", "d": "positive"}, "train")
    assert infer_loss_spec(dataset).name == "MultipleNegativesRankingLoss"
    with pytest.raises(DataError, match="renames \\['x'\\]"):
        rename_columns(dataset, {"x": "anchor"}, "train")


def test_split_eval():
    dataset = Dataset.from_list(pair_rows(20))
    train, held = split_eval(dataset, 0.25, seed=0)
    assert (len(train), len(held)) == (15, 5)
    train, held = split_eval(dataset, 4, seed=0)
    assert (len(train), len(held)) == (16, 4)
    with pytest.raises(DataError, match="leaves no training rows"):
        split_eval(dataset, 20, seed=0)


def test_retrieval_sets():
    shipped = load_retrieval_set(SAMPLE_DEV_RETRIEVAL)
    assert shipped.name == "dev_wordnet" and len(shipped.relevant) == 300
    assert all(doc in shipped.corpus for docs in shipped.relevant.values() for doc in docs)
    dataset = Dataset.from_list(scored_rows(3) and pair_rows(4))
    spec = infer_loss_spec(dataset)
    pairs = retrieval_set_from_pairs(prepare_dataset(dataset, spec, "eval"), spec)
    assert len(pairs.queries) == 4 and len(pairs.corpus) == 4
    assert pairs.corpus[next(iter(pairs.relevant["q2"]))] == dataset[2]["positive"]
