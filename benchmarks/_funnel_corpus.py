"""Corpus texts and cached embeddings for ``funnel_search.py``: every unique text of ``train/pairs.jsonl.gz`` plus
the dev corpora, the dev queries, each encoded once per model and cached in resumable chunks.

    python benchmarks/_funnel_corpus.py --data ../shared/data [--model PATH]   # encode only (a long background job)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

logger = logging.getLogger("funnel_corpus")

HERE = Path(__file__).resolve().parent


def load_texts(data: Path, seed: int = 0) -> tuple[list[str], list[str]]:
    """``(corpus, queries)``: the unique texts of ``dev/*/corpus.jsonl`` first, then every other unique text of
    train/pairs.jsonl.gz (anchors and positives) in a seeded random order, so that any prefix of the corpus is the
    dev corpora plus a random sample of the pairs; and the ``dev/*/queries.jsonl`` texts."""
    from _common import load_task, pair_texts

    dev: dict[str, None] = {}
    queries: list[str] = []
    for task in sorted(p for p in (data / "dev").iterdir() if p.is_dir()):
        _, task_queries, _, docs, _ = load_task(task)
        dev.update(dict.fromkeys(docs))
        queries.extend(task_queries)
    pairs: dict[str, None] = {}
    for pair in pair_texts(data):
        for text in (pair["anchor"], pair["positive"]):
            if text not in dev:
                pairs.setdefault(text, None)
    rest = list(pairs)
    random.Random(seed).shuffle(rest)
    return list(dev) + rest, queries


def model_key(model_path: str, max_seq_length: int) -> str:
    return hashlib.sha1(f"{Path(model_path).resolve()}|{max_seq_length}".encode()).hexdigest()[:10]


def encode_cached(
    model_path: str,
    texts: list[str],
    cache_dir: Path,
    max_seq_length: int = 128,
    limit: int | None = None,
    chunk: int = 4096,
    name: str = "",
    encode_missing: bool = True,
) -> np.ndarray:
    """Unit-length float32 embeddings of the first ``limit`` of ``texts`` (all by default), cached under
    ``cache_dir`` in chunks of ``chunk`` texts.

    Each chunk is saved as soon as it is encoded, so a killed run resumes and a later, larger ``limit`` only
    encodes the new chunks. With ``encode_missing=False`` nothing is encoded: the longest run of cached chunks
    (up to ``limit``) is returned."""
    key = hashlib.sha1(json.dumps(texts).encode("utf-8")).hexdigest()[:12]
    folder = cache_dir / "embeddings" / f"{model_key(model_path, max_seq_length)}-{key}"
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"model": str(model_path), "max_seq_length": max_seq_length, "num_texts": len(texts), "name": name}
    (folder / "meta.json").write_text(json.dumps(meta))
    limit = len(texts) if limit is None else min(limit, len(texts))
    model, parts, start_time = None, [], time.time()
    for number, start in enumerate(range(0, limit, chunk)):
        path = folder / f"chunk{number:05d}.npy"
        if not path.exists():
            if not encode_missing:
                break
            if model is None:
                from sentence_transformers import SentenceTransformer

                model = SentenceTransformer(model_path, device="cpu")
                model.max_seq_length = max_seq_length
            emb = model.encode(texts[start : start + chunk], batch_size=64, normalize_embeddings=True)
            np.save(folder / "tmp.npy", emb.astype(np.float32))
            (folder / "tmp.npy").rename(path)
            logger.info(
                "%s: %d / %d texts encoded (%.0f s)",
                name or model_path,
                start + len(emb),
                limit,
                time.time() - start_time,
            )
        parts.append(np.load(path))
    out = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
    return out[:limit]


def encode_all(
    data: Path, model_path: str, cache_dir: Path, max_seq_length: int = 128, limit: int | None = None, **kwargs
) -> tuple[np.ndarray, np.ndarray, int]:
    """``(corpus_embeddings, query_embeddings, num_texts)`` for one model: the first ``limit`` corpus texts of
    :func:`load_texts` (``num_texts`` is the size of the whole corpus)."""
    corpus, queries = load_texts(data)
    query_emb = encode_cached(model_path, queries, cache_dir, max_seq_length, name="queries")
    corpus_emb = encode_cached(model_path, corpus, cache_dir, max_seq_length, limit, name="corpus", **kwargs)
    return corpus_emb, query_emb, len(corpus)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Encode the funnel benchmark's corpus and queries (cached).")
    parser.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    parser.add_argument("--model", default=None, help="Model path (default: the bundled all-MiniLM-L6-v2).")
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--limit", type=int, default=None, help="Encode only the first N corpus texts.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path, default=HERE / ".cache")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    import torch

    torch.set_num_threads(args.threads)
    if args.model is None:
        from matryoshka_st._bundled import bundled_model_path

        args.model = bundled_model_path()
    corpus, queries, _ = encode_all(args.data, args.model, args.cache_dir, args.max_seq_length, args.limit)
    logger.info("Done: corpus %s, queries %s", corpus.shape, queries.shape)
    return 0


if __name__ == "__main__":
    sys.exit(main())
