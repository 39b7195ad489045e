"""How hard the in-batch negatives of each training source are, batched as the two CLI paths batch them.

For the issue-21 study of ``--group_by source``: the same rows in batches of 64 drawn from the whole shuffled file
(the mixed path) or from one source at a time (the grouped path), scored by a model's cosine similarities. Per source
and path: the MultipleNegativesRankingLoss of its anchors (scale 20, in-batch negatives only), how many in-batch
positives outscore the anchor's own (per anchor), and the cosine of the hardest negative against the positive's.

    python benchmarks/batch_negatives.py --model bundled --out benchmarks/results/batch_negatives.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from _common import command_line  # the script's own folder is on sys.path

from matryoshka_st._bundled import bundled_model_path

BATCH = 64
SCALE = 20.0


def batches(sources: list[str], grouped: bool, seed: int) -> list[np.ndarray]:
    """Row indices per batch: shuffled over the whole file, or shuffled within each source (partial last batches kept,
    as the trainer keeps them)."""
    rng = np.random.default_rng(seed)
    if not grouped:
        order = rng.permutation(len(sources))
        return [order[i : i + BATCH] for i in range(0, len(order), BATCH)]
    out = []
    for source in dict.fromkeys(sources):
        rows = rng.permutation([i for i, s in enumerate(sources) if s == source])
        out += [rows[i : i + BATCH] for i in range(0, len(rows), BATCH)]
    return out


def per_anchor(anchors: np.ndarray, positives: np.ndarray, batch_rows: list[np.ndarray]) -> dict[str, np.ndarray]:
    n = len(anchors)
    loss, above, margin = np.zeros(n), np.zeros(n), np.zeros(n)
    for rows in batch_rows:
        scores = anchors[rows] @ positives[rows].T  # unit vectors: cosines
        own = np.diag(scores).copy()
        logits = torch.from_numpy(SCALE * scores)
        loss[rows] = torch.nn.functional.cross_entropy(logits, torch.arange(len(rows)), reduction="none").numpy()
        np.fill_diagonal(scores, -np.inf)
        above[rows] = (scores > own[:, None]).sum(axis=1)
        margin[rows] = scores.max(axis=1) - own if len(rows) > 1 else -np.inf
    return {"loss": loss, "above": above, "margin": margin}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-file", type=Path, default=Path("benchmarks/.cache/cli_pairs_9600_sources.jsonl"))
    parser.add_argument("--model", default="bundled", help="a model folder, or 'bundled'")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43], help="batch draws")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/batch_negatives.md"))
    args = parser.parse_args()
    from sentence_transformers import SentenceTransformer

    rows = [json.loads(line) for line in args.train_file.open(encoding="utf-8")]
    sources = [row["source"] for row in rows]
    model = SentenceTransformer(str(bundled_model_path() if args.model == "bundled" else args.model), device="cpu")
    model.max_seq_length = 128

    def encode(texts: list[str]) -> np.ndarray:
        return model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)

    anchors, positives = encode([r["anchor"] for r in rows]), encode([r["positive"] for r in rows])
    lines = [
        "# In-batch negatives by source: mixed batches against one source per batch",
        "",
        f"`{command_line(__file__, None)}`",
        "",
        f"{len(rows)} pairs, batches of {BATCH}, batch draws with seeds {args.seeds} (means over both). Per anchor: "
        f"MNRL loss (scale {SCALE:g}, in-batch negatives only); how many other positives of its batch outscore its "
        "own; the hardest negative's cosine minus the positive's (> 0: a negative wins).",
        "",
        "| source | rows | loss mixed | loss grouped | outscoring mixed | outscoring grouped "
        "| hardest - positive mixed | hardest - positive grouped |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    stats = {
        grouped: [per_anchor(anchors, positives, batches(sources, grouped, seed)) for seed in args.seeds]
        for grouped in (False, True)
    }
    for source in [*dict.fromkeys(sources), "all"]:
        mask = np.ones(len(rows), bool) if source == "all" else np.array([s == source for s in sources])
        cells = []
        for key in ("loss", "above", "margin"):
            for grouped in (False, True):
                values = [s[key][mask][np.isfinite(s[key][mask])].mean() for s in stats[grouped]]
                cells.append(f"{np.mean(values):.3f}")
        lines.append(f"| {source} | {int(mask.sum())} | " + " | ".join(cells) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
