"""How much does evaluating six dimensions cost over evaluating one?

Wall time of :func:`matryoshka_st.evaluation.evaluate` over one dimension (the full one), over six, and of the naive
way: running mteb once per dimension with sentence-transformers' ``truncate_dim``, which encodes every text again for
each dimension. All three run in one process on the same loaded model and the same task objects, in a rotating order
per round; times are the median over rounds. The scores of the naive runs are compared with ours as a check.

    python benchmarks/eval_speed.py                                   # bundled all-MiniLM-L6-v2, shipped dev set
    python benchmarks/eval_speed.py --data ../shared/data/dev --device cuda --rounds 3

Target: ours over 6 dims <= 1.3x ours over 1 dim.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import mteb
import sentence_transformers
import torch
import transformers
from sentence_transformers import SentenceTransformer

import matryoshka_st
from matryoshka_st._bundled import SAMPLE_DEV_RETRIEVAL, bundled_model_path
from matryoshka_st.evaluation import evaluate
from matryoshka_st.evaluation.tasks import load_tasks

DIMS = [384, 256, 128, 64, 32, 16]


def count_texts(model: SentenceTransformer) -> Counter:
    """Count every text ``model.encode`` receives (encode_query/encode_document go through it too)."""
    seen: Counter = Counter()
    encode = model.encode

    def counting_encode(inputs, *args, **kwargs):
        seen.update([inputs] if isinstance(inputs, str) else list(inputs))
        return encode(inputs, *args, **kwargs)

    model.encode = counting_encode
    return seen


def ours(model, tasks, dims, batch_size):
    with tempfile.TemporaryDirectory() as folder:
        runs = evaluate(
            {"bench": model}, tasks, dims=dims, output_folder=folder, batch_size=batch_size, show_progress_bar=False
        )
    return {(r.task, r.dim): r.score for r in runs}


def mteb_per_dim(model, tasks, dims, batch_size):
    scores = {}
    try:
        for dim in dims:
            model.truncate_dim = dim
            result = mteb.evaluate(
                model,
                tasks,
                cache=None,
                encode_kwargs={"batch_size": batch_size, "show_progress_bar": False},
                co2_tracker=False,
                show_progress_bar=False,
            )
            scores.update({(t.task_name, dim): float(t.get_score()) for t in result.task_results})
    finally:
        model.truncate_dim = None
    return scores


def environment(device: str) -> list[str]:
    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") and torch.cuda.is_available() else "none"
    return [
        f"- machine: {platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch threads {torch.get_num_threads()}, GPU: {gpu}, device: {device}",
        f"- python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"sentence-transformers {sentence_transformers.__version__}, mteb {mteb.__version__}, "
        f"matryoshka_st {matryoshka_st.__version__}",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model path or Hub id (default: the bundled all-MiniLM-L6-v2)")
    parser.add_argument("--tasks", nargs="+", default=[str(SAMPLE_DEV_RETRIEVAL)], help="task specs")
    parser.add_argument(
        "--data", type=Path, default=None, help="also every BEIR folder in DIR, e.g. ../shared/data/dev"
    )
    parser.add_argument("--dims", nargs="+", type=int, default=DIMS)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    specs = list(args.tasks)
    if args.data is not None:
        specs += [str(p.parent) for p in sorted(args.data.glob("*/corpus.jsonl"))]
    tasks = load_tasks(specs)
    for task in tasks:
        task.load_data()
    model = SentenceTransformer(args.model or bundled_model_path(), device=args.device)
    full_dim = model.get_embedding_dimension()
    dims = sorted(set(args.dims) | {full_dim}, reverse=True)
    seen = count_texts(model)

    variants = {
        "ours, 1 dim": lambda: ours(model, tasks, [full_dim], args.batch_size),
        f"ours, {len(dims)} dims": lambda: ours(model, tasks, dims, args.batch_size),
        f"mteb once per dim, {len(dims)} dims": lambda: mteb_per_dim(model, tasks, dims, args.batch_size),
    }
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    encoded: dict[str, int] = {}
    scores: dict[str, dict] = {}
    ours_1 = "ours, 1 dim"
    for round_index in range(args.rounds):
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        for name in order:
            seen.clear()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            start = time.perf_counter()
            scores[name] = variants[name]()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
            encoded[name] = sum(seen.values())

    baseline = statistics.median(times[ours_1])
    ours_n, naive = names[1], names[2]
    diff = max(abs(scores[ours_n][key] - scores[naive][key]) for key in scores[naive])
    print(f"# Evaluation time over dimensions ({', '.join(t.metadata.name for t in tasks)}; dims {dims})\n")
    print("| variant | texts encoded | time (s) | ratio to ours, 1 dim |")
    print("| --- | ---: | ---: | ---: |")
    for name in names:
        median = statistics.median(times[name])
        print(f"| {name} | {encoded[name]} | {median:.1f} | {median / baseline:.2f}x |")
    ratio = statistics.median(times[ours_n]) / baseline
    print(
        f"\n{ours_n} / 1 dim = {ratio:.2f}x (target <= 1.3x: {'met' if ratio <= 1.3 else 'NOT met'}); "
        f"mteb once per dim / ours = {statistics.median(times[naive]) / statistics.median(times[ours_n]):.2f}x; "
        f"largest |score difference| ours vs mteb per dim: {diff:.2e}; rounds: {args.rounds}\n"
    )
    print("\n".join(environment(args.device)))
    print("\nmain score by dim (ours):")
    for task in tasks:
        row = ", ".join(f"{d}: {scores[ours_n][(task.metadata.name, d)]:.4f}" for d in dims)
        print(f"- {task.metadata.name}: {row}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
