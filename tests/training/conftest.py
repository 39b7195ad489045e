from __future__ import annotations

import pytest

from tests.training._helpers import pair_rows, save_tiny_model, write_jsonl


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> str:
    """The tiny random BERT saved to a folder, as subprocesses and ``model_name_or_path`` need."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny_saved"))


@pytest.fixture()
def pairs_file(tmp_path):
    return write_jsonl(tmp_path / "data" / "pairs.jsonl", pair_rows())


@pytest.fixture(autouse=True)
def _one_torch_thread(one_torch_thread):
    """Every test here runs the tiny model with one intra-op thread (see ``tests/conftest.py``)."""
    yield
