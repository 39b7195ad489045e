"""benchmarks/recipe_report.py: per-query files in, differences, targets and the fixed selection rule out."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import quality_vs_dim as qvd  # noqa: E402
import recipe_report as rr  # noqa: E402

from matryoshka_st.recipes import DEFAULT_RECIPE, get_recipe  # noqa: E402


def _write(folder: Path, name: str, seed: int, shift: dict[int, float], n: int = 400) -> None:
    """Per-query scores: the reference's are a fixed draw; a variant adds ``shift[dim]`` (+ small per-seed noise)."""
    base = np.random.default_rng(0).uniform(0.2, 0.8, size=n)
    noise = np.random.default_rng(seed).normal(0, 0.001, size=n)
    arrays = {f"{task}@{dim}": base + shift.get(dim, 0.0) + noise for task in rr.TASKS for dim in rr.DIMS}
    np.savez(folder / f"{name}@{seed}.npz", **arrays)


@pytest.fixture()
def folder(tmp_path):
    for seed in (42, 43):
        _write(tmp_path, "reference", seed, {})
        _write(tmp_path, "plain", seed, {384: 0.008})
        # meets every target: +1.5 at 64, +2.5 at 32, ties at 128/256, 0.2 behind plain at 384
        _write(tmp_path, "good", seed, {384: 0.006, 64: 0.015, 32: 0.025})
        # better at small dims still, but 1 pt behind plain at 384
        _write(tmp_path, "greedy", seed, {384: -0.002, 64: 0.03, 32: 0.04})
    _write(tmp_path, "one-seed", 42, {64: 0.05, 32: 0.05})
    return tmp_path


def test_paired_difference_and_interval(folder):
    runs = rr.load(folder)
    mean, (low, high), per_seed = rr.paired(runs, "good", "reference", "debian_descriptions", 64)
    assert mean == pytest.approx(1.5, abs=0.05)
    assert low < mean < high and low > 1.3 and high < 1.7
    assert len(per_seed) == 2 and all(d == pytest.approx(1.5, abs=0.05) for d in per_seed)


def test_targets_and_selection(folder):
    runs = rr.load(folder)
    good = {c["target"]: c["met"] for c in rr.targets(runs, "good") if c["task"] == "debian_descriptions"}
    assert all(good.values()) and len(good) == 5
    greedy = {c["target"]: c["met"] for c in rr.targets(runs, "greedy") if c["task"] == "debian_descriptions"}
    assert not greedy["within 0.3 pt of plain at 384"] and greedy[">= +2.0 pt over reference at 32"]
    # most targets first; a candidate with one seed does not take part
    assert rr.select(runs) == "good"
    text, summary = rr.render(runs, "t")
    assert "| good | 10/10 | - |" in text and set(summary["targets"]) == {"good", "greedy", "one-seed"}


def test_the_benchmark_trains_the_package_default_recipe():
    assert qvd.RECIPES[DEFAULT_RECIPE] is get_recipe(DEFAULT_RECIPE)
    assert qvd.parse_args(["--variants", "default", "--scorer", "numpy"]).variants == [DEFAULT_RECIPE]
