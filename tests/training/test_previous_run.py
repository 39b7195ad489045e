"""``--overwrite_output_dir``: old checkpoints are set aside, restored when the run fails before its first save, and
deleted at that save or when the run returns."""

from __future__ import annotations

from pathlib import Path

import pytest

from matryoshka_st.training.checkpoints import PreviousRun, restores_previous_run


def _old_run(folder: Path) -> Path:
    for step in (1, 2):
        (folder / f"checkpoint-{step}").mkdir(parents=True)
        (folder / f"checkpoint-{step}" / "weights").write_bytes(bytes([step]) * 8)
    return folder


def _listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("error", [ValueError("late bad input"), KeyboardInterrupt()])
def test_failure_before_the_first_save_restores_the_old_checkpoints(tmp_path, error):
    folder = _old_run(tmp_path / "out")
    before = _listing(folder)

    @restores_previous_run
    def run():
        PreviousRun(folder).set_aside()
        assert not list(folder.glob("checkpoint-*"))
        (folder / "checkpoint-1").mkdir()  # the failed run's own partial checkpoint is replaced by the old one
        raise error

    with pytest.raises(type(error)):
        run()
    assert _listing(folder) == before
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-1", "checkpoint-2"]  # no hidden folder left


def test_first_save_deletes_them(tmp_path):
    folder = _old_run(tmp_path / "out")

    @restores_previous_run
    def run():
        previous = PreviousRun(folder)
        previous.set_aside()
        previous.callback().on_save(None, None, None)
        (folder / "checkpoint-5").mkdir()
        raise RuntimeError("after the first save")

    with pytest.raises(RuntimeError):
        run()
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-5"]


def test_success_deletes_them(tmp_path):
    folder = _old_run(tmp_path / "out")
    restores_previous_run(lambda: PreviousRun(folder).set_aside())()
    assert list(folder.iterdir()) == []
