"""Is funnel search (shortlist at a small dim, rerank at full) >= 10x faster than exact search at >= 0.99 recall@10?

Real corpus: a seeded random sample of the unique long texts ("positive") of ``train/pairs.jsonl.gz``; queries: the
held-out dev queries (``dev/*/queries.jsonl``). Embeddings are cached under ``--cache-dir`` so reruns only search.
The corpus is then grown to ``--num-vectors`` with synthetic vectors: a random real vector plus isotropic Gaussian
noise, renormalised (labelled "synthetic" in the table). Every variant runs in this one process with the same FAISS /
torch thread count, the same query batch and a warm-up search; recall@10 is measured against exact full-dim
``faiss.IndexFlatIP`` search on the same vectors.

    python benchmarks/funnel_search.py --data ../shared/data [--model PATH] [--finetuned PATH]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import logging
import os
import platform
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

logger = logging.getLogger("funnel_search")

HERE = Path(__file__).resolve().parent


def load_texts(data: Path, num_real: int, num_queries: int, seed: int) -> tuple[list[str], list[str]]:
    """A seeded sample of unique "positive" texts (the corpus) and held-out dev queries."""
    positives = {}
    with gzip.open(data / "train" / "pairs.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            positives.setdefault(json.loads(line)["positive"], None)
    corpus = sorted(positives)
    random.Random(seed).shuffle(corpus)
    queries = []
    for task in sorted((data / "dev").iterdir()):
        with open(task / "queries.jsonl", encoding="utf-8") as f:
            queries.extend(json.loads(line)["text"] for line in f)
    random.Random(seed).shuffle(queries)
    return corpus[:num_real], queries[:num_queries]


def encode_cached(model_path: str, texts: list[str], cache_dir: Path, max_seq_length: int, chunk: int = 2000):
    """Encode ``texts`` (unit-length float32 rows), caching each chunk of ``chunk`` texts so a killed run resumes."""
    from sentence_transformers import SentenceTransformer
    from tqdm.auto import tqdm

    key = hashlib.sha1(
        json.dumps([str(Path(model_path).resolve()), max_seq_length, texts]).encode("utf-8")
    ).hexdigest()[:16]
    final = cache_dir / f"emb-{key}.npy"
    if final.exists():
        return np.load(final)
    parts_dir = cache_dir / f"parts-{key}"
    parts_dir.mkdir(parents=True, exist_ok=True)
    model = SentenceTransformer(model_path, device="cpu")
    model.max_seq_length = max_seq_length
    parts = []
    for start in tqdm(range(0, len(texts), chunk), desc=f"Encoding {len(texts)} texts", unit="chunk"):
        path = parts_dir / f"{start:08d}.npy"
        if not path.exists():
            emb = model.encode(texts[start : start + chunk], batch_size=64, normalize_embeddings=True)
            np.save(path, emb.astype(np.float32))
        parts.append(np.load(path))
    embeddings = np.concatenate(parts)
    np.save(final, embeddings)
    return embeddings


def grow(real: np.ndarray, num_vectors: int, noise: float, seed: int, chunk: int = 100_000) -> np.ndarray:
    """``real`` followed by synthetic rows up to ``num_vectors``: a random real row plus isotropic Gaussian noise of
    expected norm ``noise``, renormalised (``noise=0.5`` puts a synthetic row at cosine ~0.9 from its source)."""
    rng = np.random.default_rng(seed)
    out = np.empty((max(num_vectors, len(real)), real.shape[1]), dtype=np.float32)
    out[: len(real)] = real
    scale = noise / np.sqrt(real.shape[1])
    for start in range(len(real), len(out), chunk):
        stop = min(start + chunk, len(out))
        rows = real[rng.integers(0, len(real), stop - start)]
        rows = rows + rng.standard_normal(rows.shape, dtype=np.float32) * np.float32(scale)
        out[start:stop] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return out


@dataclass
class Variant:
    label: str
    stages: list[tuple[int, int]] | None  # None: exact full-dim IndexFlatIP
    first_stage: str = "float"


DEFAULT_VARIANTS = [
    Variant("exact", None),
    Variant("funnel", [(64, 1000), (128, 200)]),
    Variant("funnel", [(64, 4000), (128, 500)]),
    Variant("funnel", [(128, 1000)]),
    Variant("funnel", [(64, 4000), (128, 500)], "int8"),
    Variant("funnel", [(384, 500)], "binary"),
    Variant("funnel", [(384, 2000), (128, 200)], "binary"),
    Variant("funnel", [(256, 2000), (128, 200)], "binary"),
    Variant("funnel", [(128, 4000), (256, 400)], "binary"),
]


def parse_variants(value: str) -> list[Variant]:
    """``"float:64:1000,128:200;binary:384:500"`` -> variants, always preceded by exact search."""
    variants = [Variant("exact", None)]
    for spec in value.split(";"):
        kind, _, rest = spec.partition(":")
        stages = [(int(d), int(s)) for d, s in (p.split(":") for p in rest.split(","))]
        variants.append(Variant("funnel", stages, kind))
    return variants


def timed_search(search, queries: np.ndarray, repeats: int) -> tuple[float, float, np.ndarray]:
    """Best wall time and best process CPU time of ``repeats`` searches of the whole query batch, after a warm-up.

    CPU time is reported too because the cores are shared: it is what the search itself consumed."""
    search(queries[:16])
    wall, cpu, ids = float("inf"), float("inf"), None
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        ids = search(queries)
        wall = min(wall, time.perf_counter() - start)
        cpu = min(cpu, time.process_time() - start_cpu)
    return wall, cpu, ids


def bench_model(args, name: str, model_path: str, corpus_texts, query_texts) -> list[dict]:
    import faiss

    from matryoshka_st.search import FunnelIndex

    real = encode_cached(model_path, corpus_texts, args.cache_dir, args.max_seq_length)
    queries = encode_cached(model_path, query_texts, args.cache_dir, args.max_seq_length)
    corpus = grow(real, args.num_vectors, args.noise, args.seed)
    num_synthetic = len(corpus) - len(real)
    corpus_label = f"{len(corpus):,} ({len(real):,} real + {num_synthetic:,} synthetic)"
    logger.info("%s: searching %d queries in %s vectors", name, len(queries), corpus_label)
    dim = corpus.shape[1]

    rows, exact_ids, exact_time, exact_cpu = [], None, None, None
    for variant in args.variants:
        start = time.perf_counter()
        if variant.stages is None:
            index = faiss.IndexFlatIP(dim)
            index.add(corpus)
            build = time.perf_counter() - start
            elapsed, cpu, ids = timed_search(lambda q, index=index: index.search(q, args.k)[1], queries, args.repeats)
            first_bytes = total_bytes = 4 * dim
            stages_label, first_label = f"{dim}", "float"
            exact_ids, exact_time, exact_cpu = ids, elapsed, cpu
        else:
            index = FunnelIndex.from_embeddings(corpus, stages=variant.stages, first_stage=variant.first_stage)
            build = time.perf_counter() - start
            elapsed, cpu, ids = timed_search(lambda q, index=index: index.search(q, args.k)[1], queries, args.repeats)
            memory = index.memory_report()
            first_bytes, total_bytes = memory.first_stage_bytes_per_vector, memory.bytes_per_vector
            stages_label = " -> ".join(f"{d}@{s}" for d, s in variant.stages) + f" -> {dim}@{args.k}"
            first_label = variant.first_stage
        del index
        recall = np.mean([len(set(a) & set(b)) / args.k for a, b in zip(ids, exact_ids)])
        row = {
            "model": name,
            "corpus": corpus_label,
            "method": variant.label,
            "stages": stages_label,
            "first stage": first_label,
            "QPS": len(queries) / elapsed,
            "speedup": exact_time / elapsed,
            "CPU ms/query": 1000 * cpu / len(queries),
            "CPU speedup": exact_cpu / cpu,
            f"recall@{args.k}": recall,
            "bytes/vec (1st stage)": first_bytes,
            "bytes/vec (total)": total_bytes,
            "index MB": total_bytes * len(corpus) / 1e6,
            "build s": build,
        }
        logger.info("%s", row)
        rows.append(row)
    return rows


def environment(threads: int) -> list[str]:
    import faiss
    import sentence_transformers
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return [
        f"- machine: {cpu}, {os.cpu_count()} cores visible, {threads} FAISS/torch threads for every variant; "
        f"load average at the start {os.getloadavg()[0]:.1f} (the cores are shared with other jobs)",
        f"- python {platform.python_version()}, faiss {faiss.__version__}, torch {torch.__version__}, "
        f"numpy {np.__version__}, sentence-transformers {sentence_transformers.__version__}",
    ]


def render(rows: list[dict], header: list[str]) -> str:
    columns = list(rows[0])
    fmt = {
        "QPS": "{:,.0f}",
        "speedup": "{:.1f}x",
        "CPU ms/query": "{:.2f}",
        "CPU speedup": "{:.1f}x",
        "bytes/vec (1st stage)": "{:g}",
        "bytes/vec (total)": "{:g}",
    }
    fmt.update({"index MB": "{:,.0f}", "build s": "{:.1f}"})
    lines = [*header, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [fmt.get(c, "{:.3f}" if isinstance(row[c], float) else "{}").format(row[c]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    parser.add_argument("--model", default=None, help="Model to benchmark (default: the bundled all-MiniLM-L6-v2).")
    parser.add_argument("--finetuned", default=None, help="A Matryoshka-fine-tuned model: adds its rows.")
    parser.add_argument("--num-real", type=int, default=30_000, help="Real corpus texts to encode.")
    parser.add_argument("--num-vectors", type=int, default=1_000_000, help="Grow the corpus to this many vectors.")
    parser.add_argument("--num-queries", type=int, default=300)
    parser.add_argument("--noise", type=float, default=0.5, help="Norm of the noise added to synthetic vectors.")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--repeats", type=int, default=2, help="Timed searches per variant; the best is kept.")
    parser.add_argument("--variants", type=parse_variants, default=DEFAULT_VARIANTS, help="kind:dim:n,dim:n;...")
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, default=HERE / ".cache")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "funnel_search.md")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)

    import faiss
    import torch

    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    if args.model is None:
        from matryoshka_st._bundled import bundled_model_path

        args.model = bundled_model_path()
    models = [("all-MiniLM-L6-v2 (base)" if args.model == bundled_model_path_or_none() else args.model, args.model)]
    if args.finetuned:
        models.append((f"{args.finetuned} (Matryoshka fine-tuned)", args.finetuned))

    corpus_texts, query_texts = load_texts(args.data, args.num_real, args.num_queries, args.seed)
    header = [
        "# Funnel search vs exact full-dim search",
        "",
        f"`python benchmarks/{Path(__file__).name} {' '.join(argv if argv is not None else sys.argv[1:])}`".replace(
            "  ", " "
        ).replace(" `", "`"),
        "",
        f"- corpus: {len(corpus_texts):,} real texts (unique `positive` of train/pairs.jsonl.gz, seed {args.seed}, "
        f"max_seq_length {args.max_seq_length}) grown to {args.num_vectors:,} vectors with synthetic rows "
        f"(a random real vector + Gaussian noise of norm {args.noise}, renormalised)",
        f"- queries: {len(query_texts):,} held-out dev queries (dev/*/queries.jsonl), searched as one batch; "
        f"recall@{args.k} is the overlap with exact full-dim `faiss.IndexFlatIP` top-{args.k}; time is the best of "
        f"{args.repeats} after a warm-up; stages read `dim@shortlist`",
        *environment(args.threads),
    ]
    rows = []
    for name, path in models:
        rows.extend(bench_model(args, name, path, corpus_texts, query_texts))
    table = render(rows, header)
    print(table)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(table, encoding="utf-8")
    return 0


def bundled_model_path_or_none() -> str | None:
    try:
        from matryoshka_st._bundled import bundled_model_path

        return bundled_model_path()
    except ImportError:
        return None


if __name__ == "__main__":
    sys.exit(main())
