from __future__ import annotations

import random
from pathlib import Path

import pytest

VOCAB = Path(__file__).resolve().parents[1] / "fixtures" / "vocab.txt"


def make_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` random sentences of 4-12 words from the test vocabulary."""
    words = [w for w in VOCAB.read_text(encoding="utf-8").split() if w.isalpha() and len(w) > 2]
    rng = random.Random(seed)
    return [" ".join(rng.choices(words, k=rng.randint(4, 12))) for _ in range(n)]


@pytest.fixture(scope="session")
def texts() -> list[str]:
    return make_texts(160)
