"""The output folder of a run: what is already there, which checkpoint to resume, and the atomic final save."""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeVar

from sentence_transformers import SentenceTransformer
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from matryoshka_st._atomic import write_folder_atomically
from matryoshka_st.training.arguments import ConfigError, TrainConfig

FINAL_DIR_NAME = "final"
T = TypeVar("T")


def output_contents(output_dir: Path) -> list[str]:
    if not output_dir.is_dir():
        return []
    found = []
    if (output_dir / FINAL_DIR_NAME).exists():
        found.append(f"a model in {FINAL_DIR_NAME}/")
    if (output_dir / "modules.json").exists() or (output_dir / "config.json").exists():
        found.append("a model")
    checkpoints = sorted(p.name for p in output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.is_dir())
    if checkpoints:
        found.append(f"checkpoints {checkpoints}")
    return found


def resolve_resume(config: TrainConfig) -> str | None:
    value = config.training.resume_from_checkpoint
    if value in (None, "", False):
        return None
    output_dir = config.training.output_dir
    if str(value).lower() in ("true", "latest", "last", "1"):
        last = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
        if last is None:
            raise ConfigError(
                f"--resume_from_checkpoint {value}: there is no {PREFIX_CHECKPOINT_DIR}-* folder in {output_dir!r}."
            )
        return last
    if not os.path.isdir(value):
        raise ConfigError(f"--resume_from_checkpoint {value!r} is not a checkpoint folder.")
    return str(value)


def save_atomically(model: SentenceTransformer, path: str | os.PathLike, write_extras: Callable[[str], None]) -> str:
    """Save ``model`` (and whatever ``write_extras(folder)`` adds) to a temporary sibling folder, then rename it to
    ``path`` (:func:`~matryoshka_st._atomic.write_folder_atomically`): a reader sees the previous complete model
    or the new complete model, never a half-written one."""

    def write(folder: Path) -> None:
        model.save_pretrained(str(folder))
        write_extras(str(folder))

    return str(write_folder_atomically(path, write))


def _remove_previous_run(output_dir: Path) -> None:
    for checkpoint in output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        if checkpoint.is_dir():
            shutil.rmtree(checkpoint)


def remove_previous_run(output_dir: Path) -> None:
    for checkpoint in output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        if checkpoint.is_dir():
            shutil.rmtree(checkpoint)


_SET_ASIDE: ContextVar[list[PreviousRun] | None] = ContextVar("matryoshka_st_set_aside", default=None)


class PreviousRun:
    """The checkpoints an ``--overwrite_output_dir`` run replaces: moved into a hidden sibling folder when training
    starts, deleted at the new run's first save, and moved back if the run fails (or is interrupted) before it."""

    def __init__(self, output_dir: Path) -> None:
        self.output_dir = Path(output_dir)
        self.holding: Path | None = None

    def set_aside(self) -> None:
        checkpoints = [p for p in self.output_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.is_dir()]
        if not checkpoints:
            return
        self.holding = Path(tempfile.mkdtemp(prefix=".previous-run-", dir=self.output_dir))
        for checkpoint in checkpoints:
            os.rename(checkpoint, self.holding / checkpoint.name)
        pending = _SET_ASIDE.get()
        if pending is not None:
            pending.append(self)

    def restore(self) -> None:
        if self.holding is None:
            return
        for checkpoint in self.holding.iterdir():
            target = self.output_dir / checkpoint.name
            if target.exists():  # written by the failed run
                shutil.rmtree(target)
            os.rename(checkpoint, target)
        self.holding.rmdir()
        self.holding = None

    def discard(self) -> None:
        if self.holding is not None:
            shutil.rmtree(self.holding, ignore_errors=True)
            self.holding = None

    def callback(self) -> TrainerCallback:
        previous = self

        class DiscardPreviousRun(TrainerCallback):
            def on_save(self, args, state, control, **kwargs):
                previous.discard()

        return DiscardPreviousRun()


def restores_previous_run(function: Callable[..., T]) -> Callable[..., T]:
    """Decorate a run: checkpoints a :class:`PreviousRun` set aside come back if the run raises before its first
    save (bad input found late, Ctrl-C), and are deleted when it returns."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        token = _SET_ASIDE.set([])
        try:
            result = function(*args, **kwargs)
        except BaseException:
            for previous in _SET_ASIDE.get() or []:
                previous.restore()
            raise
        else:
            for previous in _SET_ASIDE.get() or []:
                previous.discard()
            return result
        finally:
            _SET_ASIDE.reset(token)

    return wrapper
