"""``group_by``: the training rows split by a source column into one dataset per source, so that every batch holds
rows of one source (sentence-transformers' multi-dataset training), checked on the batches the trainer draws."""

from __future__ import annotations

import random

import pytest
from transformers import TrainerCallback

from matryoshka_st.training import parse_config, run
from matryoshka_st.training.data import DataError
from matryoshka_st.training.run import _load_datasets
from tests.training._helpers import pair_rows, write_jsonl

SIZES = {"debian": 40, "wordnet": 24, "bible": 16}


@pytest.fixture()
def mixed_file(tmp_path):
    rows = []
    for index, (source, n) in enumerate(SIZES.items()):
        rows += [{**row, "source": source} for row in pair_rows(n, seed=index)]
    random.Random(0).shuffle(rows)  # sources interleaved, as in a user's file
    return write_jsonl(tmp_path / "mixed.jsonl", rows), rows


def _config(tiny_model_dir, train_data, output_dir, **overrides):
    values = {
        "model_name_or_path": tiny_model_dir,
        "train_data": str(train_data),
        "output_dir": str(output_dir),
        "per_device_train_batch_size": 8,
        "report_to": "none",
        "seed": 1,
        "evaluate_before_training": False,
        "save_strategy": "no",
    }
    return parse_config({**values, **overrides})


class RecordBatches(TrainerCallback):
    """The anchors of every batch of the first epoch, read through the trainer's own batch sampler and dataset."""

    def __init__(self):
        self.batches: list[list[str]] = []

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        sampler = train_dataloader.batch_sampler
        sampler = getattr(sampler, "batch_sampler", sampler)  # accelerate's shard wrapper, where present
        dataset = train_dataloader.dataset
        self.batches = [[dataset[i]["anchor"] for i in batch] for batch in sampler]


def test_load_splits_rows_by_source_and_keeps_file_order(tiny_model_dir, mixed_file, tmp_path):
    path, rows = mixed_file
    grouped = _load_datasets(_config(tiny_model_dir, path, tmp_path / "out", group_by="source"))
    plain = _load_datasets(_config(tiny_model_dir, path, tmp_path / "out"))
    assert {name: len(part) for name, part in grouped.train.items()} == {
        source: SIZES[source] for source in dict.fromkeys(row["source"] for row in rows)
    }
    for name, part in grouped.train.items():
        assert part.column_names == ["anchor", "positive"]
        assert part["anchor"] == [row["anchor"] for row in rows if row["source"] == name]
    # the flat rows (PCA texts, int8 scales, binary pairs) are the ungrouped run's, in file order
    assert grouped.rows["anchor"] == plain.rows["anchor"] == [row["anchor"] for row in rows]
    assert grouped.spec.columns == plain.spec.columns == ["anchor", "positive"]


def test_held_out_rows_stay_one_set(tiny_model_dir, mixed_file, tmp_path):
    path, _ = mixed_file
    data = _load_datasets(_config(tiny_model_dir, path, tmp_path / "out", group_by="source", eval_size=10))
    assert data.eval.column_names == ["anchor", "positive"] and len(data.eval) == 10
    assert sum(len(part) for part in data.train.values()) == sum(SIZES.values()) - 10
    held_out = set(data.eval["anchor"])
    assert not held_out & {a for part in data.train.values() for a in part["anchor"]}


@pytest.mark.parametrize("group_by", [None, "source"])
def test_every_batch_holds_one_source(tiny_model_dir, mixed_file, tmp_path, group_by):
    path, rows = mixed_file
    recorder = RecordBatches()
    overrides = {"group_by": group_by} if group_by else {}
    result = run(_config(tiny_model_dir, path, tmp_path / "out", max_steps=3, **overrides), callbacks=[recorder])
    assert result.global_step == 3
    source_of = {row["anchor"]: row["source"] for row in rows}
    # every row is drawn once per epoch, in full batches of 8 (the sizes are multiples of 8)
    assert sorted(a for batch in recorder.batches for a in batch) == sorted(source_of)
    assert {len(batch) for batch in recorder.batches} == {8}
    sources = [{source_of[anchor] for anchor in batch} for batch in recorder.batches]
    if group_by is None:
        assert max(len(s) for s in sources) > 1  # one mixed dataset: batches mix sources
    else:
        assert all(len(s) == 1 for s in sources)
        per_source = [next(iter(s)) for s in sources]
        assert {source: per_source.count(source) for source in SIZES} == {"debian": 5, "wordnet": 3, "bible": 2}


@pytest.mark.parametrize(
    "bad_rows, message",
    [
        ([{"source": 0.5}, {"source": 1.5}], "should hold source names (text or integers)"),
        ([{"source": "a"}, {"source": ""}], "Row 1 has no value in the group_by column 'source'"),
    ],
)
def test_bad_group_column_is_refused_before_the_model_loads(tmp_path, bad_rows, message):
    rows = [{**pair, **bad} for pair, bad in zip(pair_rows(2), bad_rows)]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    config = _config("no-such-model-folder", path, tmp_path / "out", group_by="source")
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        run(config)
    assert not (tmp_path / "out").exists()
