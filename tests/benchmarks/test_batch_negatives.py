"""benchmarks/batch_negatives.py: the two batchings it compares, and the per-anchor statistics on known scores."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import batch_negatives  # noqa: E402


def test_grouped_batches_hold_one_source_and_mixed_ones_do_not():
    sources = ["a"] * 150 + ["b"] * 70 + ["c"] * 20
    sources = list(np.random.default_rng(0).permutation(sources))
    for grouped in (False, True):
        drawn = batch_negatives.batches(sources, grouped, seed=1)
        assert sorted(np.concatenate(drawn).tolist()) == list(range(len(sources)))  # every row once
        kinds = [len({sources[i] for i in rows}) for rows in drawn]
        if grouped:
            assert kinds == [1] * len(drawn) and [len(r) for r in drawn] == [64, 64, 22, 64, 6, 20]
        else:
            assert max(kinds) == 3 and [len(r) for r in drawn] == [64, 64, 64, 48]


def test_per_anchor_counts_negatives_that_outscore_the_positive():
    anchors = np.eye(4)
    positives = np.eye(4)
    positives[0] = [0.6, 0.8, 0, 0]
    positives[1] = [0.8, 0.6, 0, 0]  # anchors 0 and 1 score their own positive 0.6 and the other one 0.8
    stats = batch_negatives.per_anchor(anchors, positives, [np.arange(4)])
    assert stats["above"].tolist() == [1, 1, 0, 0]
    assert stats["margin"] == pytest.approx([0.2, 0.2, -1.0, -1.0])
    logits = 20 * np.array([0.6, 0.8, 0, 0])
    assert stats["loss"][0] == pytest.approx(np.log(np.exp(logits).sum()) - logits[0])
