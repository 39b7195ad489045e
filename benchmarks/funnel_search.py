"""Is funnel search (shortlist at a small dim, rerank at full) >= 10x faster than exact search at >= 0.99 recall@10?

Real corpus: seeded samples of the unique "positive" and "anchor" texts of ``train/pairs.jsonl.gz``, encoded by each
model (base all-MiniLM-L6-v2 and, with ``--finetuned``, a Matryoshka-fine-tuned MiniLM); queries: held-out dev queries
(``dev/*/queries.jsonl``). Embeddings are cached per chunk under ``--cache-dir`` so reruns only search and no text is
encoded twice. The corpus is filled up to ``--num-vectors`` with synthetic distractors, labelled as such and placed
after the real rows: samples of a Gaussian fitted to the model's real embeddings (mean + full covariance, so each
coordinate's variance and the prefix structure are kept), renormalised; they do not form near-duplicate clusters
around real vectors. Ground truth is exact full-dim ``faiss.IndexFlatIP`` top-k over the whole index. Every variant
runs in this one process with the same FAISS / torch thread count and query batch, after a warm-up; the median of
``--repeats`` timed searches is reported.

    python benchmarks/funnel_search.py --data ../shared/data --finetuned PATH [--model PATH]
"""

from __future__ import annotations

import argparse
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

from _common import pair_texts  # noqa: E402 - the script's folder is on sys.path

from matryoshka_st.readers import iter_jsonl  # noqa: E402

logger = logging.getLogger("funnel_search")

HERE = Path(__file__).resolve().parent


def load_texts(
    data: Path, num_positives: int, num_anchors: int, num_queries: int, seed: int
) -> tuple[list[str], list[str], list[str]]:
    """Seeded samples of the unique "positive" and "anchor" texts of train/pairs.jsonl.gz, and held-out dev queries.

    A text that is both an anchor and a positive is kept once, as a positive; dev queries are dropped from the corpus.
    """
    positives, anchors = {}, {}
    for pair in pair_texts(data):
        positives.setdefault(pair["positive"], None)
        anchors.setdefault(pair["anchor"], None)
    queries = []
    for task in sorted((data / "dev").iterdir()):
        queries.extend(row["text"] for _, row in iter_jsonl(task / "queries.jsonl"))
    random.Random(seed).shuffle(queries)
    queries = queries[:num_queries]
    held_out = set(queries)
    positive_list = sorted(t for t in positives if t not in held_out)
    anchor_list = sorted(t for t in anchors if t not in positives and t not in held_out)
    random.Random(seed).shuffle(positive_list)
    random.Random(seed).shuffle(anchor_list)
    return positive_list[:num_positives], anchor_list[:num_anchors], queries


def encode_cached(model_path: str, texts: list[str], cache_dir: Path, max_seq_length: int, chunk: int = 2000):
    """Encode ``texts`` to unit-length float32 rows, caching each chunk of ``chunk`` texts on disk.

    A chunk's file is named by the model, ``max_seq_length`` and the chunk's texts, so a killed run resumes, a larger
    sample reuses the chunks of a smaller one, and no text is encoded twice by the same model."""
    from tqdm.auto import tqdm

    model_key = hashlib.sha1(str(Path(model_path).resolve()).encode("utf-8")).hexdigest()[:8]
    chunk_dir = cache_dir / "chunks"
    chunk_dir.mkdir(parents=True, exist_ok=True)
    model, parts = None, []
    for start in tqdm(range(0, len(texts), chunk), desc=f"Encoding {len(texts)} texts", unit="chunk"):
        texts_key = hashlib.sha1(json.dumps(texts[start : start + chunk]).encode("utf-8")).hexdigest()[:16]
        path = chunk_dir / f"{model_key}-{max_seq_length}-{texts_key}.npy"
        if not path.exists():
            if model is None:
                from sentence_transformers import SentenceTransformer

                model = SentenceTransformer(model_path, device="cpu")
                model.max_seq_length = max_seq_length
            emb = model.encode(texts[start : start + chunk], batch_size=64, normalize_embeddings=True)
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, emb.astype(np.float32))
            tmp.rename(path)
        parts.append(np.load(path))
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def gaussian_distractors(real: np.ndarray, num: int, seed: int, chunk: int = 100_000) -> np.ndarray:
    """``num`` synthetic unit vectors drawn from a Gaussian fitted to ``real`` (its mean and full covariance), then
    renormalised.

    The full covariance keeps what funnel search depends on: each coordinate's variance (a Matryoshka model puts most
    of it in the first coordinates) and the correlations between a prefix and the rest. Unlike noisy copies of real
    vectors, the samples form no near-duplicate clusters around real vectors, so a query's true neighbours are not
    decided by noise that no prefix can see."""
    rng = np.random.default_rng(seed)
    real64 = real.astype(np.float64)
    mean = real64.mean(axis=0)
    cov = np.cov(real64, rowvar=False)
    # Tiny ridge: with fewer distinct texts than dims the covariance may be singular.
    chol = np.linalg.cholesky(cov + 1e-8 * np.eye(len(cov))).astype(np.float32)
    out = np.empty((num, real.shape[1]), dtype=np.float32)
    for start in range(0, num, chunk):
        stop = min(start + chunk, num)
        rows = rng.standard_normal((stop - start, real.shape[1]), dtype=np.float32) @ chol.T + mean.astype(np.float32)
        out[start:stop] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return out


def build_corpus(real: np.ndarray, num_vectors: int, seed: int) -> np.ndarray:
    """``real`` rows first (ids ``0 .. len(real) - 1``), then Gaussian distractors up to ``num_vectors``."""
    num_synthetic = max(0, num_vectors - len(real))
    if num_synthetic == 0:
        return np.ascontiguousarray(real)
    return np.concatenate([real, gaussian_distractors(real, num_synthetic, seed)])


@dataclass
class Variant:
    label: str
    stages: list[tuple[int, int]] | None  # None: exact full-dim IndexFlatIP
    first_stage: str = "float"


DEFAULT_VARIANTS = [
    Variant("exact", None),
    Variant("funnel", [(64, 100)]),
    Variant("funnel", [(64, 300)]),
    Variant("funnel", [(64, 1000)]),
    Variant("funnel", [(64, 1000), (128, 200)]),
    Variant("funnel", [(128, 300)]),
    Variant("funnel", [(128, 1000)]),
    Variant("funnel", [(128, 300)], "int8"),
    Variant("funnel", [(128, 1000)], "binary"),
    Variant("funnel", [(256, 300)], "binary"),
    Variant("funnel", [(256, 1000)], "binary"),
    Variant("funnel", [(384, 300)], "binary"),
    Variant("funnel", [(384, 1000)], "binary"),
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
    """Median wall time and median process CPU time of ``repeats`` searches of the whole query batch, after a
    warm-up search of the first 32 queries (which scans the whole index once).

    CPU time is reported too because the cores are shared with other jobs: it is what the search itself consumed."""
    search(queries[:32])
    walls, cpus, ids = [], [], None
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        ids = search(queries)
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - start_cpu)
    return float(np.median(walls)), float(np.median(cpus)), ids


def bench_model(args, name: str, model_path: str, text_groups, query_texts) -> tuple[list[dict], dict]:
    import faiss

    from matryoshka_st.search import FunnelIndex
    from matryoshka_st.search.funnel import validate_stages

    # Each group is cached on its own, so chunk boundaries (and cache files) do not depend on the other's size.
    real = np.concatenate(
        [encode_cached(model_path, texts, args.cache_dir, args.max_seq_length) for texts in text_groups if texts]
    )
    queries = encode_cached(model_path, query_texts, args.cache_dir, args.max_seq_length)
    corpus = build_corpus(real, args.num_vectors, args.seed)
    num_real, num_synthetic = len(real), len(corpus) - len(real)
    logger.info(
        "%s: %d queries, %d vectors = %d real + %d synthetic", name, len(queries), len(corpus), num_real, num_synthetic
    )
    dim = corpus.shape[1]

    rows, exact_ids, exact_time, exact_cpu, stats, built = [], None, None, None, {}, {}
    for variant in args.variants:
        start = time.perf_counter()
        if variant.stages is None:
            index = faiss.IndexFlatIP(dim)
            index.add(corpus)
            build = time.perf_counter() - start
            elapsed, cpu, ids = timed_search(lambda q, index=index: index.search(q, args.k)[1], queries, args.repeats)
            first_bytes = total_bytes = 4 * dim
            stages_label, first_label = f"{dim}@{args.k}", "float"
            exact_ids, exact_time, exact_cpu = ids, elapsed, cpu
            stats = {
                "num_real": num_real,
                "num_synthetic": num_synthetic,
                "synthetic_share": float(np.mean(ids >= num_real)),
                "queries_with_synthetic": float(np.mean((ids >= num_real).any(axis=1))),
            }
        else:
            # Variants that differ only in shortlist sizes share one index (same first-stage codes, same prefix norms).
            key = (variant.first_stage, variant.stages[0][0], tuple(d for d, _ in variant.stages[1:]))
            if key not in built:
                built.clear()  # one funnel index in memory at a time
                built[key] = (
                    FunnelIndex.from_embeddings(corpus, stages=variant.stages, first_stage=variant.first_stage),
                    time.perf_counter() - start,
                )
            index, build = built[key]
            index.stages = validate_stages(variant.stages, index.full_dim, variant.first_stage)
            elapsed, cpu, ids = timed_search(lambda q, index=index: index.search(q, args.k)[1], queries, args.repeats)
            memory = index.memory_report()
            first_bytes, total_bytes = memory.first_stage_bytes_per_vector, memory.bytes_per_vector
            stages_label = " -> ".join(f"{d}@{s}" for d, s in variant.stages) + f" -> {dim}@{args.k}"
            first_label = variant.first_stage
        del index
        recall = float(np.mean([len(set(a) & set(b)) / args.k for a, b in zip(ids, exact_ids)]))
        # Of the exact top-k ids that are real vectors, the share found: do the misses fall on real texts?
        real_hits = sum(len(set(a) & {i for i in b if i < num_real}) for a, b in zip(ids, exact_ids))
        real_recall = real_hits / max(1, int(np.sum(exact_ids < num_real)))
        speedup = exact_time / elapsed
        row = {
            "model": name,
            "method": variant.label,
            "stages": stages_label,
            "first stage": first_label,
            "QPS": len(queries) / elapsed,
            "speedup": speedup,
            "CPU ms/query": 1000 * cpu / len(queries),
            "CPU speedup": exact_cpu / cpu,
            f"recall@{args.k}": recall,
            f"recall@{args.k} (real ids)": real_recall,
            "meets target": "-"
            if variant.stages is None
            else ("**yes**" if speedup >= 10 and recall >= 0.99 else "no"),
            "bytes/vec (1st stage)": first_bytes,
            "bytes/vec (total)": total_bytes,
            "index MB": total_bytes * len(corpus) / 1e6,
            "1st stage MB": first_bytes * len(corpus) / 1e6,
            "build s": build,
        }
        logger.info("%s", row)
        rows.append(row)
    built.clear()
    del corpus
    return rows, stats


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
    try:
        simd = faiss.get_compile_options()
    except AttributeError:
        simd = "?"
    return [
        f"- machine: {cpu}, {os.cpu_count()} cores visible, {threads} FAISS/torch threads for every variant; "
        f"load average at the start {os.getloadavg()[0]:.1f} (the cores are shared with other jobs)",
        f"- python {platform.python_version()}, faiss {faiss.__version__} ({simd.strip()}), torch {torch.__version__}, "
        f"numpy {np.__version__}, sentence-transformers {sentence_transformers.__version__}",
    ]


def render(rows: list[dict]) -> list[str]:
    columns = list(rows[0])
    fmt = {
        "QPS": "{:,.1f}",
        "speedup": "{:.1f}x",
        "CPU ms/query": "{:.2f}",
        "CPU speedup": "{:.1f}x",
        "bytes/vec (1st stage)": "{:g}",
        "bytes/vec (total)": "{:g}",
        "index MB": "{:,.0f}",
        "1st stage MB": "{:,.0f}",
        "build s": "{:.1f}",
    }
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [fmt.get(c, "{:.3f}" if isinstance(row[c], float) else "{}").format(row[c]) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    parser.add_argument("--model", default=None, help="Base model (default: the bundled all-MiniLM-L6-v2).")
    parser.add_argument("--finetuned", default=None, help="A Matryoshka-fine-tuned model: adds its rows.")
    parser.add_argument("--num-positives", type=int, default=12_000, help="Real `positive` texts to encode.")
    parser.add_argument("--num-anchors", type=int, default=12_000, help="Real `anchor` texts to encode.")
    parser.add_argument("--num-vectors", type=int, default=1_000_000, help="Fill up to this many with distractors.")
    parser.add_argument("--num-queries", type=int, default=300)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--repeats", type=int, default=3, help="Timed searches per variant; the median is kept.")
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
    base_default = bundled_model_path_or_none()
    model = args.model or base_default
    models = [("all-MiniLM-L6-v2 (base)" if model == base_default else f"{model} (base)", model)]
    if args.finetuned:
        models.append(("MiniLM + Matryoshka fine-tuning", args.finetuned))

    positives, anchors, query_texts = load_texts(
        args.data, args.num_positives, args.num_anchors, args.num_queries, args.seed
    )
    command = " ".join(["python", f"benchmarks/{Path(__file__).name}", *(argv if argv is not None else sys.argv[1:])])
    environment_lines = environment(args.threads)
    rows, stats = [], {}
    for name, path in models:
        model_rows, stats[name] = bench_model(args, name, path, [positives, anchors], query_texts)
        rows.extend(model_rows)
    any_stats = next(iter(stats.values()))
    num_real, num_synthetic = any_stats["num_real"], any_stats["num_synthetic"]
    lines = [
        "# Funnel search vs exact full-dim search",
        "",
        f"`{command}`",
        "",
        f"- corpus: {num_real + num_synthetic:,} vectors = **{num_real:,} real** ({len(positives):,} unique `positive` "
        f"+ {len(anchors):,} unique `anchor` texts of train/pairs.jsonl.gz, seeded sample, max_seq_length "
        f"{args.max_seq_length}) + **{num_synthetic:,} synthetic distractors** (ids >= {num_real:,}): samples of a "
        "Gaussian fitted to each model's real embeddings (mean + full covariance), renormalised",
        f"- queries: {len(query_texts):,} held-out dev queries (dev/*/queries.jsonl, not in the corpus), searched as one "
        f"batch; recall@{args.k} is the overlap with exact full-dim `faiss.IndexFlatIP` top-{args.k} over all "
        f"{num_real + num_synthetic:,} vectors",
        *(
            f"- {name}: {s['synthetic_share']:.1%} of the exact top-{args.k} ids are synthetic "
            f"({s['queries_with_synthetic']:.0%} of queries have at least one)"
            for name, s in stats.items()
        ),
        f"- timing: median of {args.repeats} searches of the whole batch after a warm-up search; QPS and speedup "
        "from wall time, CPU ms/query from process CPU time; stages read `dim@shortlist`; "
        f"meets target = speedup >= 10x and recall@{args.k} >= 0.99",
        *environment_lines,
        "",
        *render(rows),
    ]
    table = "\n".join(lines) + "\n"
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
