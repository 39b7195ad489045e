"""Small data files and a saved tiny model for the training tests (subprocesses need a model folder)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

from tests._data import write_jsonl  # noqa: F401  (re-exported to the training tests)
from tests.conftest import FIXTURES, build_tiny_model

REPO = Path(__file__).resolve().parents[2]


def _words() -> list[str]:
    words = [line.strip() for line in open(FIXTURES / "vocab.txt", encoding="utf-8")]
    return [w for w in words if w.isalpha() and len(w) > 2][:400]


def pair_rows(n: int = 64, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    words = _words()
    rows = []
    for _ in range(n):
        anchor = " ".join(rng.sample(words, 4))
        rows.append({"anchor": anchor, "positive": f"{anchor} {rng.choice(words)}", "source": "test"})
    return rows


def scored_rows(n: int = 48, seed: int = 0, integer: bool = False) -> list[dict]:
    rng = random.Random(seed)
    words = _words()
    rows = []
    for _ in range(n):
        a, b = " ".join(rng.sample(words, 4)), " ".join(rng.sample(words, 4))
        rows.append(
            {
                "sentence1": a,
                "sentence2": b,
                ("label" if integer else "score"): rng.randrange(3) if integer else rng.random(),
            }
        )
    return rows


def save_tiny_model(folder: Path) -> str:
    model = build_tiny_model(folder / "src")
    model.save_pretrained(str(folder / "model"))
    return str(folder / "model")


def cli_env() -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_DISABLED": "true"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"  # see the one_torch_thread fixture in tests/conftest.py
    return env


def run_subprocess(args: list[str], cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=timeout)


def console_script() -> str:
    return str(Path(sys.executable).parent / "matryoshka-st")
