"""Rebuild (or enlarge) the small data sample shipped in ``matryoshka_st/data`` from the full data set.

The full set (see the README, "Data") lives outside the project; by default this reads ``../shared/data``.
Only permissively licensed sources are shipped: WordNet 3.0 (WordNet licence, notice in
``matryoshka_st/data/NOTICE.md``), the Jargon File and the public-domain Bible translations. The Debian
descriptions are left out of the sample because their licences vary by package.

    python scripts/build_sample.py --source ../shared/data --pairs 4000 --dev-queries 300 --dev-distractors 1500
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import re
from collections import Counter, defaultdict
from pathlib import Path

SHIPPABLE = {
    "wordnet-example": 0.35,
    "wordnet-lemma": 0.25,
    "jargon": 0.15,
    "bible-kjv-web": 0.15,
    "bible-kjv-ylt": 0.1,
}
DATA_DIR = Path(__file__).resolve().parent.parent / "matryoshka_st" / "data"


def read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def build_pairs(source: Path, n_pairs: int, rng: random.Random) -> list[dict]:
    by_source = defaultdict(list)
    for row in read_jsonl(source / "train" / "pairs.jsonl.gz"):
        if row["source"] in SHIPPABLE:
            by_source[row["source"]].append(row)
    pairs = []
    for name, share in SHIPPABLE.items():
        rows = by_source[name]
        pairs.extend(rng.sample(rows, min(len(rows), round(n_pairs * share))))
    rng.shuffle(pairs)
    return pairs


def build_dev(source: Path, out: Path, n_queries: int, n_distractors: int, rng: random.Random) -> None:
    folder = source / "dev" / "wordnet_examples"
    corpus = {row["_id"]: row for row in read_jsonl(folder / "corpus.jsonl")}
    queries = {row["_id"]: row for row in read_jsonl(folder / "queries.jsonl")}
    qrels = defaultdict(dict)
    with open(folder / "qrels" / "test.tsv", encoding="utf-8") as handle:
        next(handle)
        for line in handle:
            qid, cid, score = line.rstrip("\n").split("\t")
            qrels[qid][cid] = int(score)
    chosen = sorted(rng.sample(sorted(qrels), n_queries), key=lambda q: int(q[1:]))
    relevant = {cid for qid in chosen for cid in qrels[qid]}
    others = sorted(set(corpus) - relevant)
    keep = relevant | set(rng.sample(others, min(n_distractors, len(others))))
    write_jsonl(out / "corpus.jsonl", [corpus[cid] for cid in corpus if cid in keep])
    write_jsonl(out / "queries.jsonl", [queries[qid] for qid in chosen])
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    with open(out / "qrels" / "test.tsv", "w", encoding="utf-8") as handle:
        handle.write("query-id\tcorpus-id\tscore\n")
        for qid in chosen:
            for cid, score in qrels[qid].items():
                handle.write(f"{qid}\t{cid}\t{score}\n")


def build_vocab(pairs: list[dict], path: Path, size: int) -> None:
    """A small lowercase WordPiece vocabulary for the tiny test BERT (tests/fixtures/vocab.txt)."""
    counts = Counter(
        w for row in pairs for text in (row["anchor"], row["positive"]) for w in re.findall(r"[a-z]+", text.lower())
    )
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789.,;:!?'\"()-")
    pieces = ["##" + c for c in chars[:26]]
    words = [w for w, _ in counts.most_common() if len(w) > 1][: size - len(specials) - len(chars) - len(pieces)]
    path.write_text("\n".join(specials + chars + pieces + words) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=Path("../shared/data"), help="the full data folder")
    parser.add_argument("--out", type=Path, default=DATA_DIR)
    parser.add_argument("--pairs", type=int, default=4000)
    parser.add_argument("--dev-queries", type=int, default=300)
    parser.add_argument("--dev-distractors", type=int, default=1500)
    parser.add_argument("--vocab", type=Path, default=None, help="also write a test vocabulary here")
    parser.add_argument("--seed", type=int, default=12)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    pairs = build_pairs(args.source, args.pairs, rng)
    write_jsonl(
        args.out / "train_pairs.jsonl.gz",
        [{"anchor": p["anchor"], "positive": p["positive"], "source": p["source"]} for p in pairs],
    )
    build_dev(args.source, args.out / "dev_wordnet", args.dev_queries, args.dev_distractors, rng)
    if args.vocab is not None:
        build_vocab(pairs, args.vocab, 3000)
    print(f"wrote {len(pairs)} pairs and a dev set of {args.dev_queries} queries to {args.out}")


if __name__ == "__main__":
    main()
