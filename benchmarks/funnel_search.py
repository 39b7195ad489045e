"""Does funnel search (a sublinear first stage on a short prefix, rerank at full dim) beat full-dim HNSW?

Real embeddings only: the unique texts of ``train/pairs.jsonl.gz`` plus the dev corpora (``_funnel_corpus.py``:
dev corpora first, then the pair texts in a seeded random order, so ``--limit N`` is a random sample), encoded once
per model and cached under ``--cache-dir``. Queries: the dev queries, split at random into a tuning sample (for
``FunnelIndex.tune``) and evaluation queries (everything else in the table and plot). Ground truth: exact 384-dim
top-10 (``faiss.knn``). Every system runs in this one process with the same threads; each setting is timed as a
batch (best of ``--repeats``) and as single queries (p50 / p99).

Systems: exact flat at full dim; HNSW at full dim (M 32, efSearch swept); binary flat + rescoring as
``sentence_transformers.util.semantic_search_faiss(corpus_precision="ubinary")`` does it (vectorised: the float query
rescores the unpacked bits of the top ``k * multiplier``); the flat funnels (float 64-dim prefix, binary 384 bits);
the sublinear funnels (HNSW on a float prefix, HNSW on binary codes, IVF on a float prefix), swept and tuned.

    python benchmarks/_funnel_corpus.py --data ../shared/data [--model PATH]  # encode all 355,847 texts (cached, resumable)
    python benchmarks/funnel_search.py --data ../shared/data --finetuned PATH --repeats 2  # --limit N: a sample
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from _common import command_line  # the script's own folder is on sys.path
from _funnel_corpus import encode_all

os.environ.setdefault("HF_HUB_OFFLINE", "1")

logger = logging.getLogger("funnel_search")

HERE = Path(__file__).resolve().parent
HNSW_EFS = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
FUNNEL_EFS = (32, 48, 64, 96, 128, 192, 256, 384, 512)
NPROBES = (4, 8, 16, 32, 64)
SHORTLISTS = (50, 100, 200, 400, 1000)
RESCORE_MULTIPLIERS = (1, 4, 16)


@dataclass
class System:
    """One curve: a searched index, how many bytes it holds, and one point per swept setting."""

    name: str
    index_bytes: float  # bytes of the index searched for every query
    total_bytes_per_vector: float  # everything a query may touch, incl. rerank vectors
    build_s: float
    points: list[dict] = field(default_factory=list)
    tuned: dict | None = None


def recall(ids: np.ndarray, exact: np.ndarray) -> float:
    from matryoshka_st.search.tune import recall_at_k

    return recall_at_k(ids, exact)


def timed_point(search, queries: np.ndarray, exact: np.ndarray, repeats: int, setting: str) -> dict:
    """Recall, batch q/s and single-query p50 / p99 of one setting. Every system's one-query searches run FAISS on
    one thread, as the funnel does (a 2-thread team for one query waits on busy cores)."""
    from matryoshka_st.search import measure_speed
    from matryoshka_st.search.first_stage import single_thread_if

    def search_one_thread_if_single(q):
        with single_thread_if(len(q) == 1):
            return search(q)

    ids = search(queries)
    speed = measure_speed(search_one_thread_if_single, queries, repeats=repeats, num_single=100)
    return {
        "setting": setting,
        "recall": recall(ids, exact),
        "qps": speed.queries_per_second,
        "p50_ms": speed.latency_p50_ms,
        "p99_ms": speed.latency_p99_ms,
    }


def faiss_bytes(index) -> int:
    import faiss

    if isinstance(index, faiss.IndexBinary):
        return int(faiss.serialize_index_binary(index).size)
    return int(faiss.serialize_index(index).size)


def bench_peers(corpus, queries, exact, k, repeats, ef_construction: int) -> list[System]:
    import faiss

    n, dim = corpus.shape
    systems = []
    start = time.perf_counter()
    flat = faiss.IndexFlatIP(dim)
    flat.add(corpus)
    system = System(f"exact flat {dim}", faiss_bytes(flat), 4 * dim, time.perf_counter() - start)
    system.points.append(timed_point(lambda q, index=flat: index.search(q, k)[1], queries, exact, repeats, "-"))
    systems.append(system)
    del flat
    logger.info("%s: %s", system.name, system.points[-1])

    start = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = ef_construction
    hnsw.add(corpus)
    build = time.perf_counter() - start
    size = faiss_bytes(hnsw)
    system = System(f"HNSW {dim} (M 32, efConstruction {ef_construction})", size, size / n, build)
    for ef in HNSW_EFS:
        hnsw.hnsw.efSearch = ef
        system.points.append(
            timed_point(lambda q, index=hnsw: index.search(q, k)[1], queries, exact, repeats, f"efSearch {ef}")
        )
        logger.info("%s: %s", system.name, system.points[-1])
        if system.points[-1]["recall"] >= 0.999:
            break
    systems.append(system)
    del hnsw

    # sentence-transformers' recipe (semantic_search_faiss, corpus_precision="ubinary", rescore=True), vectorised:
    # Hamming search for k * multiplier, then float query . unpacked corpus bits, keep the top k.
    start = time.perf_counter()
    binary = faiss.IndexBinaryFlat(dim)
    codes = np.packbits(corpus > 0, axis=-1)
    binary.add(codes)
    system = System(f"binary flat {dim} + rescoring (sentence-transformers)", faiss_bytes(binary), dim / 8, 0.0)
    system.build_s = time.perf_counter() - start

    def st_rescore(q, multiplier):
        import torch

        ids = binary.search(np.packbits(q > 0, axis=-1), k * multiplier)[1]
        bits = np.unpackbits(codes[ids], axis=-1).astype(np.float32)  # (Q, k * m, dim)
        scores = torch.bmm(torch.from_numpy(bits), torch.from_numpy(q)[:, :, None])[..., 0]
        return np.take_along_axis(ids, torch.topk(scores, k, dim=1).indices.numpy(), axis=1)

    _check_st_recipe(binary, corpus, queries[:20], k, st_rescore)
    for multiplier in RESCORE_MULTIPLIERS:
        system.points.append(
            timed_point(lambda q, m=multiplier: st_rescore(q, m), queries, exact, repeats, f"rescore x{multiplier}")
        )
        logger.info("%s: %s", system.name, system.points[-1])
    systems.append(system)
    return systems


def _check_st_recipe(binary, corpus, queries, k, st_rescore) -> None:
    """The vectorised recipe returns what sentence-transformers' own function returns (same ids per query)."""
    from sentence_transformers.util.quantization import semantic_search_faiss

    results, _ = semantic_search_faiss(
        queries, corpus_index=binary, corpus_precision="ubinary", top_k=k, rescore=True, rescore_multiplier=4
    )
    theirs = [sorted(hit["corpus_id"] for hit in row) for row in results]
    ours = [sorted(row.tolist()) for row in st_rescore(queries, 4)]
    same = np.mean([a == b for a, b in zip(theirs, ours)])
    logger.info("binary rescoring recipe: %.0f%% of queries identical to semantic_search_faiss", 100 * same)


def bench_funnels(
    corpus, queries, tune_queries, exact, k, repeats, target, ef_construction: int, binary_calibration=None
) -> list[System]:
    """The funnels; with ``binary_calibration`` (the sign-bit rotations a trained model saved) the binary funnels
    also run with their bits taken after those rotations, and the small-byte graphs (int8 64 and binary 384 at
    M 16, under 1/8 of full-dim HNSW's bytes per vector) are added."""
    from matryoshka_st.search import FunnelIndex
    from matryoshka_st.search.first_stage import HNSW_STAGES

    specs = [
        ("flat funnel: float 64 -> rerank 384", [(64, 100)], "float", {}),
        ("flat funnel: binary 384 -> rerank 384", [(384, 100)], "binary", {}),
        ("HNSW funnel: float 64 (M 16) -> rerank 384", [(64, 100)], "hnsw", {"hnsw_m": 16}),
        ("HNSW funnel: int8 128 (M 32) -> rerank 384", [(128, 100)], "int8_hnsw", {"hnsw_m": 32}),
        ("HNSW funnel: binary 384 (M 32) -> rerank 384", [(384, 100)], "binary_hnsw", {"hnsw_m": 32}),
        ("IVF funnel: float 64 -> rerank 384", [(64, 100)], "ivf", {}),
    ]
    if binary_calibration is not None:
        rotated = {"binary_calibration": binary_calibration}
        specs += [
            ("flat funnel: binary 384, saved rotation -> rerank 384", [(384, 100)], "binary", rotated),
            (
                "HNSW funnel: binary 384, saved rotation (M 32) -> rerank 384",
                [(384, 100)],
                "binary_hnsw",
                {"hnsw_m": 32, **rotated},
            ),
            (
                "HNSW funnel: binary 384, saved rotation (M 16) -> rerank 384",
                [(384, 100)],
                "binary_hnsw",
                {"hnsw_m": 16, **rotated},
            ),
            ("HNSW funnel: int8 64 (M 16) -> rerank 384", [(64, 100)], "int8_hnsw", {"hnsw_m": 16}),
        ]
    systems = []
    for name, stages, kind, options in specs:
        start = time.perf_counter()
        if kind in HNSW_STAGES:
            options = {**options, "ef_construction": ef_construction}
        index = FunnelIndex.from_embeddings(corpus, stages=stages, first_stage=kind, **options)
        build = time.perf_counter() - start
        memory = index.memory_report()
        system = System(name, memory.first_stage_bytes_per_vector * len(index), memory.bytes_per_vector, build)
        first_dim = stages[0][0]
        if kind in HNSW_STAGES:
            # A shortlist shorter than ef_search keeps the graph search as wide and reranks fewer rows.
            grid = [(ef, s) for ef in FUNNEL_EFS for s in sorted({max(2 * k, ef // 4), ef // 2, ef})]
        elif kind == "ivf":
            grid = [(p, s) for p in NPROBES for s in (100, 200, 400)]
        else:
            grid = [(None, s) for s in SHORTLISTS]
        for setting, shortlist in grid:
            option = {"ef_search": setting} if kind in HNSW_STAGES else {"nprobe": setting}
            index.set_search_params(stages=[(first_dim, shortlist)], **(option if setting else {}))
            label = (f"{next(iter(option))} {setting}, " if setting else "") + f"shortlist {shortlist}"
            point = timed_point(lambda q, index=index: index.search(q, k=k)[1], queries, exact, repeats, label)
            system.points.append(point)
            logger.info("%s: %s", name, point)
        if kind not in ("float", "binary"):
            try:
                result = index.tune(tune_queries, target_recall=target, k=k)
            except ValueError as error:
                system.tuned = {"error": str(error)}
                logger.info("%s: %s", name, error)
                systems.append(system)
                continue
            point = timed_point(lambda q, index=index: index.search(q, k=k)[1], queries, exact, repeats, "tuned")
            system.tuned = {
                "stages": result.stages,
                "ef_search": result.ef_search,
                "nprobe": result.nprobe,
                "tune_recall": result.tune_recall,
                "holdout_recall": result.holdout_recall,
                "holdout_qps": result.holdout_speed.queries_per_second,
                "num_tune": result.num_tune_queries,
                "num_holdout": result.num_holdout_queries,
                "eval": point,
            }
            logger.info("%s tuned: %s", name, system.tuned)
        systems.append(system)
        del index
    return systems


def best_at(system: System, target: float) -> dict | None:
    """The fastest point of ``system`` with recall >= ``target``."""
    points = [p for p in system.points if p["recall"] >= target]
    return max(points, key=lambda p: p["qps"]) if points else None


def render(model_name: str, systems: list[System], n: int, target: float) -> list[str]:
    exact_qps = systems[0].points[0]["qps"]
    hnsw = next(s for s in systems if s.name.startswith("HNSW"))
    hnsw_best = best_at(hnsw, target)
    lines = [
        f"### {model_name}: fastest setting with recall@10 >= {target}",
        "",
        "| system | setting | q/s | vs exact | vs HNSW 384 at >= its recall | p50 ms | p99 ms | recall@10 | searched "
        "index MB | searched bytes/vec | total bytes/vec | build s | targets: >= 10x exact / >= 1.5x HNSW / <= 1/4 "
        "HNSW bytes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for system in systems:
        point = best_at(system, target)
        if point is None:
            top = max(system.points, key=lambda p: p["recall"])
            lines.append(
                f"| {system.name} | never reaches {target} (best {top['recall']:.3f} at {top['setting']}, "
                f"{top['qps']:,.0f} q/s) | | | | | | | {system.index_bytes / 1e6:,.1f} | {system.index_bytes / n:,.0f} "
                f"| {system.total_bytes_per_vector:,.0f} | {system.build_s:.1f} | |"
            )
            continue
        # HNSW's fastest setting whose recall is at least this point's: the comparison "at equal recall".
        hnsw_match = best_at(hnsw, point["recall"])
        versus = f"{point['qps'] / hnsw_match['qps']:.2f}x" if hnsw_match else "n/a (HNSW never as high)"
        beats_hnsw = hnsw_match is None or point["qps"] >= 1.5 * hnsw_match["qps"]
        targets = " / ".join(
            "yes" if met else "no"
            for met in (point["qps"] >= 10 * exact_qps, beats_hnsw, system.index_bytes <= hnsw.index_bytes / 4)
        )
        lines.append(
            f"| {system.name} | {point['setting']} | {point['qps']:,.0f} | {point['qps'] / exact_qps:.1f}x | {versus} "
            f"| {point['p50_ms']:.2f} | {point['p99_ms']:.2f} | {point['recall']:.4f} | {system.index_bytes / 1e6:,.1f} "
            f"| {system.index_bytes / n:,.0f} | {system.total_bytes_per_vector:,.0f} | {system.build_s:.1f} "
            f"| {targets if system not in (systems[0], hnsw) else ''} |"
        )
    tuned = [s for s in systems if s.tuned]
    if tuned:
        lines += [
            "",
            f"`FunnelIndex.tune(target_recall={target}, k=10)` on the tuning queries (its own split: tuning / held "
            "back), then the kept schedule on the evaluation queries:",
            "",
            "| system | kept schedule | tune recall | held-back recall | evaluation recall | evaluation q/s | p50 ms | "
            "p99 ms | meets target within 0.005 |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for system in tuned:
            if "error" in system.tuned:
                lines.append(f"| {system.name} | none: {system.tuned['error']} | | | | | | | **no** |")
                continue
            t, e = system.tuned, system.tuned["eval"]
            setting = (
                f"ef_search {t['ef_search']}" if t["ef_search"] else (f"nprobe {t['nprobe']}" if t["nprobe"] else "")
            )
            meets = "yes" if min(t["holdout_recall"], e["recall"]) >= target - 0.005 else "**no**"
            lines.append(
                f"| {system.name} | {t['stages']} {setting} | {t['tune_recall']:.4f} ({t['num_tune']} q) | "
                f"{t['holdout_recall']:.4f} ({t['num_holdout']} q) | {e['recall']:.4f} | {e['qps']:,.0f} | "
                f"{e['p50_ms']:.2f} | {e['p99_ms']:.2f} | {meets} |"
            )
    if hnsw_best:
        lines += [
            "",
            f"HNSW 384 reference at >= {target}: {hnsw_best['setting']}, {hnsw_best['qps']:,.0f} q/s, "
            f"recall {hnsw_best['recall']:.4f}, {hnsw.index_bytes / n:,.0f} bytes/vec.",
        ]
    return lines


def plot(results: dict, path: Path, target: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(8 * len(results), 6), squeeze=False)
    for ax, (model_name, systems) in zip(axes[0], results.items()):
        for system in systems:
            points = sorted(system.points, key=lambda p: p["recall"])
            # The Pareto frontier: for each point, nothing both faster and more accurate.
            frontier = [
                p for p in points if not any(o["qps"] > p["qps"] and o["recall"] >= p["recall"] for o in points)
            ]
            style = "o" if len(frontier) == 1 else "o-"
            ax.plot([p["qps"] for p in frontier], [p["recall"] for p in frontier], style, label=system.name, ms=3)
        ax.axhline(target, color="grey", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("queries/s (batch, 2 threads)")
        ax.set_ylabel("recall@10 vs exact 384-dim")
        ax.set_ylim(0.7, 1.001)
        ax.set_title(model_name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def environment(threads: int) -> list[str]:
    import faiss
    import sentence_transformers
    import torch

    cpu = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return [
        f"- machine: {cpu}, {os.cpu_count()} cores visible, {threads} FAISS/torch threads for every system; load "
        f"average at the start {os.getloadavg()[0]:.1f} (the cores are shared with other jobs: wall-clock q/s is noisy)",
        f"- python {platform.python_version()}, faiss {faiss.__version__} ({faiss.get_compile_options().strip()}), torch {torch.__version__}, numpy "
        f"{np.__version__}, sentence-transformers {sentence_transformers.__version__}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=HERE.parent.parent / "shared" / "data")
    parser.add_argument("--model", default=None, help="Base model (default: the bundled all-MiniLM-L6-v2).")
    parser.add_argument("--finetuned", default=None, help="A Matryoshka-fine-tuned model: adds its systems.")
    parser.add_argument(
        "--finetuned-only", action="store_true", help="Only the --finetuned model's systems (the targets' headline)."
    )
    parser.add_argument("--limit", type=int, default=None, help="Corpus texts (default: all 355,847).")
    parser.add_argument("--encode", action="store_true", help="Encode missing chunks (default: use the cache).")
    parser.add_argument("--tune-queries", type=int, default=1000, help="Dev queries given to tune; rest evaluate.")
    parser.add_argument("--target-recall", type=float, default=0.99)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument(
        "--ef-construction",
        type=int,
        default=100,
        help="HNSW efConstruction of every graph, full-dim HNSW and funnels alike (FAISS default: 40).",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="Timed batch searches per setting; the best is kept.")
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
    if args.model is None:
        from matryoshka_st._bundled import bundled_model_path

        args.model = bundled_model_path()
    models = [("all-MiniLM-L6-v2 (base)", args.model)]
    if args.finetuned:
        models.append(("MiniLM + Matryoshka fine-tuning", args.finetuned))
    if args.finetuned_only:
        if not args.finetuned:
            parser.error("--finetuned-only needs --finetuned PATH.")
        models = models[1:]
    command = command_line(__file__, argv)
    lines = [
        "# Funnel search vs full-dim HNSW, exact search and binary rescoring (real embeddings)",
        "",
        f"`{command}`",
        "",
    ]
    lines += environment(args.threads)
    results, raw = {}, {}
    for model_name, path in models:
        corpus, queries, num_texts = encode_all(
            args.data, path, args.cache_dir, args.max_seq_length, args.limit, encode_missing=args.encode
        )
        corpus = np.ascontiguousarray(corpus, dtype=np.float32)
        order = np.random.default_rng(args.seed).permutation(len(queries))
        tune_queries = np.ascontiguousarray(queries[order[: args.tune_queries]])
        eval_queries = np.ascontiguousarray(queries[order[args.tune_queries :]])
        exact = faiss.knn(eval_queries, corpus, args.k, metric=faiss.METRIC_INNER_PRODUCT)[1]
        logger.info(
            "%s: %d vectors, %d tuning + %d evaluation queries",
            model_name,
            len(corpus),
            len(tune_queries),
            len(eval_queries),
        )
        systems = bench_peers(corpus, eval_queries, exact, args.k, args.repeats, args.ef_construction)
        from matryoshka_st.usage import load_binary_calibration

        systems += bench_funnels(
            corpus,
            eval_queries,
            tune_queries,
            exact,
            args.k,
            args.repeats,
            args.target_recall,
            args.ef_construction,
            binary_calibration=load_binary_calibration(path),
        )
        results[model_name] = systems
        raw[model_name] = [vars(s) for s in systems]
        lines += [
            "",
            f"- {model_name}: corpus **{len(corpus):,} real vectors** (the dev corpora + a seeded random sample of the "
            f"pair texts, {len(corpus) / num_texts:.0%} of all {num_texts:,} unique texts), max_seq_length "
            f"{args.max_seq_length}; {len(eval_queries):,} evaluation + {len(tune_queries):,} tuning dev queries",
            "",
            *render(model_name, systems, len(corpus), args.target_recall),
        ]
    png = args.output.with_suffix(".png")
    lines += [
        "",
        f"Recall@10 against queries/s, one Pareto curve per system: [{png.name}]({png.name}); every point "
        f"in [{args.output.with_suffix('.json').name}]({args.output.with_suffix('.json').name}).",
    ]
    table = "\n".join(lines) + "\n"
    print(table)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(table, encoding="utf-8")
    args.output.with_suffix(".json").write_text(json.dumps(raw, indent=1, default=float) + "\n", encoding="utf-8")
    plot(results, png, args.target_recall)
    return 0


if __name__ == "__main__":
    sys.exit(main())
