"""Which Matryoshka recipe beats sentence-transformers' MatryoshkaLoss? Combines per-query scores into tables.

``quality_vs_dim.py --per-query-dir DIR`` writes one ``<variant>@<seed>.npz`` of per-query nDCG@10 per model and seed
(several processes, e.g. on a GPU, can fill one folder). This script reads such a folder and writes:

- nDCG@10 by dim for every variant, averaged over the seeds it has, with the seed-to-seed spread;
- every candidate minus the reference (sentence-transformers' ``MatryoshkaLoss``), per seed and on the seed average,
  with 95% paired-bootstrap intervals over queries (the per-query differences of each seed are averaged first, so
  the interval carries query noise and what is left of seed noise);
- the issue's targets for each candidate, and the candidate a fixed rule picks (``--select``):
  most targets met, then the largest ``sum over dev sets of (d64 + d32 + min(0, gap to plain at 384 + 0.3))``.

Example::

    python benchmarks/quality_vs_dim.py --scorer numpy --seeds 42 43 --variants plain reference pca-kl \\
        --head-steps 0 --per-query-dir benchmarks/.cache/recipe/per_query
    python benchmarks/recipe_report.py benchmarks/.cache/recipe/per_query --output benchmarks/results/recipe
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

TASKS = ("debian_descriptions", "wordnet_examples")
DIMS = (384, 256, 128, 64, 32, 16)
NOT_CANDIDATES = {"base", "plain", "reference", "base+pca-after", "plain+pca-after"}


def load(folder: Path) -> dict[str, dict[int, dict[str, dict[int, np.ndarray]]]]:
    """``{variant: {seed: {task: {dim: per-query scores}}}}`` from ``<variant>@<seed>.npz`` files."""
    runs: dict[str, dict[int, dict[str, dict[int, np.ndarray]]]] = {}
    for path in sorted(folder.glob("*@*.npz")):
        name, seed = path.stem.rsplit("@", 1)
        with np.load(path) as arrays:
            by_task: dict[str, dict[int, np.ndarray]] = {}
            for key in arrays.files:
                task, dim = key.rsplit("@", 1)
                by_task.setdefault(task, {})[int(dim)] = arrays[key]
        runs.setdefault(name, {})[int(seed)] = by_task
    if not runs:
        raise FileNotFoundError(f"No <variant>@<seed>.npz files in {folder}.")
    return runs


def interval(diff: np.ndarray, seed: int = 0, n: int = 2000) -> tuple[float, float]:
    """95% paired-bootstrap interval of the mean of per-query differences."""
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(n, len(diff)))].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def paired(
    runs: dict, name: str, against: str, task: str, dim: int
) -> tuple[float, tuple[float, float], list[float]] | None:
    """Seed-averaged difference ``name - against`` (points), its interval, and each shared seed's difference."""
    seeds = sorted(set(runs[name]) & set(runs[against]))
    if not seeds:
        return None
    per_seed = [runs[name][s][task][dim] - runs[against][s][task][dim] for s in seeds]
    diff = np.mean(per_seed, axis=0)
    low, high = interval(diff)
    return 100 * float(diff.mean()), (100 * low, 100 * high), [100 * float(d.mean()) for d in per_seed]


def targets(runs: dict, name: str) -> list[dict[str, Any]]:
    """The issue-14 targets for candidate ``name`` against ``reference`` (and ``plain`` at 384)."""
    rules = [
        (f">= +{need:.1f} pt over reference at {dim}", "reference", dim, need) for dim, need in ((64, 1.0), (32, 2.0))
    ]
    rules += [(f"no worse than reference at {dim}", "reference", dim, None) for dim in (256, 128)]
    rules += [("within 0.3 pt of plain at 384", "plain", 384, -0.3)]
    checks = []
    for task in TASKS:
        for target, against, dim, need in rules:
            res = paired(runs, name, against, task, dim) if against in runs else None
            if res is None:
                continue
            mean, (low, high), seeds = res
            if need is None:  # the interval is not wholly below zero
                met = high >= 0
            elif need > 0:  # a gain beyond noise, in every seed
                met = mean >= need and low > 0 and all(d > 0 for d in seeds)
            else:  # a bounded loss
                met = mean >= need
            checks.append(dict(task=task, target=target, mean=mean, low=low, high=high, seeds=seeds, met=met))
    return checks


def rank_key(runs: dict, name: str) -> tuple[int, float]:
    """(targets met, sum over dev sets of the gains at 64 and 32 plus any shortfall beyond 0.3 pt to plain at 384),
    read from the target checks so that each bootstrap runs once."""
    checks = targets(runs, name)
    means = {(c["task"], c["target"]): c["mean"] for c in checks}
    secondary = 0.0
    for task in TASKS:
        for dim, need in ((64, 1.0), (32, 2.0)):
            secondary += means.get((task, f">= +{need:.1f} pt over reference at {dim}"), -1e9)
        secondary += min(0.0, means.get((task, "within 0.3 pt of plain at 384"), -0.3) + 0.3)
    return sum(c["met"] for c in checks), secondary


def select(runs: dict, min_seeds: int = 2) -> str:
    """The candidate the fixed rule picks (only candidates scored on at least ``min_seeds`` seeds shared with the
    reference take part)."""
    candidates = [
        n for n in runs if n not in NOT_CANDIDATES and len(set(runs[n]) & set(runs.get("reference", {}))) >= min_seeds
    ]
    if not candidates:
        raise ValueError(f"No candidate with {min_seeds} seeds shared with the reference in {sorted(runs)}.")
    return max(candidates, key=lambda n: rank_key(runs, n))


def render(runs: dict, title: str, settings: str = "") -> tuple[str, dict[str, Any]]:
    names = sorted(runs, key=lambda n: (n not in ("base", "plain", "reference"), n))
    out = [f"# {title}", ""] + ([settings, ""] if settings else [])
    summary: dict[str, Any] = {"means": {}, "targets": {}}
    for task in TASKS:
        out += [f"## {task}: nDCG@10, mean over seeds (seed sd) [seeds]", ""]
        out += ["| variant | seeds | " + " | ".join(str(d) for d in DIMS) + " |", "|---|---|" + "---:|" * len(DIMS)]
        for name in names:
            seeds = sorted(runs[name])
            cells = []
            for dim in DIMS:
                values = np.array([runs[name][s][task][dim].mean() for s in seeds])
                sd = f" ({values.std(ddof=1):.4f})" if len(values) > 1 else ""
                cells.append(f"{values.mean():.4f}{sd}")
                summary["means"].setdefault(name, {}).setdefault(task, {})[dim] = float(values.mean())
            out.append(f"| {name} | {','.join(map(str, seeds))} | " + " | ".join(cells) + " |")
        out.append("")
    others = [n for n in names if n not in ("reference", "base") and set(runs[n]) & set(runs.get("reference", {}))]
    if "reference" in runs:
        out += ["## Minus the reference, nDCG@10 points: seed-averaged [95% paired-bootstrap interval] (per seed)", ""]
        for task in TASKS:
            out += [f"### {task}", "", "| variant | " + " | ".join(str(d) for d in DIMS) + " |"]
            out.append("|---|" + "---:|" * len(DIMS))
            for name in others:
                cells = []
                for dim in DIMS:
                    mean, (low, high), seeds = paired(runs, name, "reference", task, dim)
                    cells.append(f"{mean:+.2f} [{low:+.2f}, {high:+.2f}] ({', '.join(f'{d:+.2f}' for d in seeds)})")
                out.append(f"| {name} | " + " | ".join(cells) + " |")
            out.append("")
        out += ["## Targets per candidate (met / total)", "", "| variant | met | misses |", "|---|---:|---|"]
        for name in others:
            if name in NOT_CANDIDATES:
                continue
            checks = targets(runs, name)
            summary["targets"][name] = checks
            misses = "; ".join(
                f"{c['task'].split('_')[0]} {c['target']}: {c['mean']:+.2f}" for c in checks if not c["met"]
            )
            out.append(f"| {name} | {sum(c['met'] for c in checks)}/{len(checks)} | {misses or '-'} |")
        out.append("")
    return "\n".join(out), summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="folder of <variant>@<seed>.npz files")
    parser.add_argument("--output", type=Path, default=None, help="write <stem>.md and <stem>.json here")
    parser.add_argument("--stem", default="recipe")
    parser.add_argument("--title", default="Matryoshka recipes against sentence-transformers' MatryoshkaLoss")
    parser.add_argument("--settings", default="", help="a line describing the runs, written under the title")
    parser.add_argument("--select", action="store_true", help="print only the name of the selected candidate")
    args = parser.parse_args(argv)
    runs = load(args.folder)
    if args.select:
        print(select(runs))
        return 0
    text, summary = render(runs, args.title, args.settings)
    if args.output:
        args.output.mkdir(parents=True, exist_ok=True)
        (args.output / f"{args.stem}.md").write_text(text + "\n", encoding="utf-8")
        (args.output / f"{args.stem}.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
