"""One atomic folder write for the model saves (training, adapt) and index saves (search)."""

from __future__ import annotations

import os
import stat

import pytest

from matryoshka_st._atomic import write_folder_atomically


def _files(folder):
    return {p.name: p.read_text() for p in folder.iterdir()}


def test_a_folder_is_replaced_whole_or_not_at_all(tmp_path):
    target = tmp_path / "out" / "model"
    assert write_folder_atomically(target, lambda f: (f / "a").write_text("1")) == target
    assert _files(target) == {"a": "1"}
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~_umask()  # not mkdtemp's 0700

    def fail(folder):
        (folder / "a").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_folder_atomically(target, fail)
    assert _files(target) == {"a": "1"} and sorted(os.listdir(target.parent)) == ["model"]  # no temporary left
    write_folder_atomically(target, lambda f: (f / "b").write_text("2"))
    assert _files(target) == {"b": "2"} and sorted(os.listdir(target.parent)) == ["model"]


def test_own_files_replace_only_those_where_the_folder_holds_others(tmp_path):
    target = tmp_path / "index"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    (target / "config.json").write_text("old")
    write_folder_atomically(target, lambda f: (f / "config.json").write_text("new"), own_files=["config.json"])
    assert _files(target) == {"notes.txt": "mine", "config.json": "new"}
    assert sorted(os.listdir(tmp_path)) == ["index"]


def test_training_adapt_and_search_share_it():
    import inspect

    from matryoshka_st.posthoc import run as posthoc_run
    from matryoshka_st.search import persistence
    from matryoshka_st.training import checkpoints

    for module, save in ((checkpoints, "save_atomically"), (posthoc_run, "adapt"), (persistence, "save_index")):
        assert module.write_folder_atomically is write_folder_atomically
        assert "mkdtemp" not in inspect.getsource(getattr(module, save))  # no folder swap of its own
    assert "matryoshka_st.training" not in inspect.getsource(posthoc_run)  # posthoc no longer reaches up


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask
