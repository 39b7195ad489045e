"""Write the training file of the CLI-path studies: 9,600 shared pairs in the issue-21 mix, one jsonl.

The pairs of each source are ordered by a hash of (seed, anchor, positive), so the sample does not depend on the
order of ``train/pairs.jsonl.gz`` and a larger ``--pairs`` only adds pairs. The rows are shuffled with the same seed,
so a batch mixes sources as a user's file would. ``--source-column`` adds each pair's ``source`` (same pairs, same
order), for the one-source-per-batch path (``matryoshka-st train --group_by source``).

    python benchmarks/_cli_pairs.py --data ../shared/data --out benchmarks/.cache/cli_pairs_9600.jsonl
    python benchmarks/_cli_pairs.py --data ../shared/data --source-column --out benchmarks/.cache/cli_pairs_9600_sources.jsonl
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from _common import pairs_by_source  # the script's own folder is on sys.path

MIX = {"debian": 0.40, "wordnet-example": 0.25, "wordnet-lemma": 0.10, "bible-kjv-web": 0.15, "jargon": 0.10}


def build(data: Path, n_pairs: int, seed: int, source_column: bool = False) -> list[dict[str, str]]:
    by_source = pairs_by_source(data, seed, MIX)
    rows = [
        {"anchor": row["anchor"], "positive": row["positive"], **({"source": source} if source_column else {})}
        for source, share in MIX.items()
        for row in by_source[source][: round(n_pairs * share)]
    ]
    random.Random(seed).shuffle(rows)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/.cache/cli_pairs_9600.jsonl"))
    parser.add_argument("--pairs", type=int, default=9600)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--source-column", action="store_true", help="write each pair's source as a column")
    args = parser.parse_args()
    rows = build(args.data, args.pairs, args.seed, args.source_column)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{len(rows)} pairs -> {args.out}")


if __name__ == "__main__":
    main()
