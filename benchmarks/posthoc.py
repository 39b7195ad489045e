"""Matryoshka without retraining: how much of the full-dim retrieval score do PCA and the adaptor keep at each dim?

Rows, each scored by nDCG@10 on the dev retrieval sets at dims 384..16:

- base: the encoder as shipped, prefixes cut and renormalised;
- PCA: an orthogonal rotation (``matryoshka_st.posthoc.fit_pca_rotation``) fitted on the task's own texts
  (queries + corpus, no labels), and a second one fitted on 8,000 training texts (``PCA (train texts)``);
- adaptor: the Matryoshka-Adaptor (``matryoshka_st.posthoc.MatryoshkaAdaptor``), unsupervised, fitted on the task's
  own texts; the encoder is never touched;
- Matryoshka fine-tune / PCA + Matryoshka fine-tune: models given by ``--finetuned`` / ``--pca-finetuned``, or
  trained here with ``--train-seconds S`` (sentence-transformers' trainer, our ``MatryoshkaLoss`` around
  ``MultipleNegativesRankingLoss``, same seed, same pairs, same steps; the second starts from the PCA-rotated model).

Every model encodes each text once; embeddings are cached under ``--cache-dir`` (delete it to re-encode) and all dims
are derived from the cached full-size vectors. The PCA and adaptor rows apply the fitted transform to the cached base
embeddings, which is exactly what the saved model computes (tests/posthoc check that equivalence). CPU seconds are
process CPU time (``time.process_time``) of each method's own work: fitting, or training; encoding is listed apart.

    python benchmarks/posthoc.py --data ../shared/data [--train-seconds 240] [--finetuned PATH --pca-finetuned PATH]
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
from collections.abc import Callable
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _common import load_task, ndcg_at_10_per_query, pair_texts  # noqa: E402 - the script's folder is on sys.path

logger = logging.getLogger("posthoc")

# quality_vs_dim.py imports these two from here
__all__ = ["load_task", "ndcg_at_10_per_query"]

HERE = Path(__file__).resolve().parent
TASKS = ("debian_descriptions", "wordnet_examples")
DIMS = (384, 256, 128, 64, 32, 16)


# ---------------------------------------------------------------------------------------------------- data + scoring


def train_texts(data: Path, n: int, seed: int) -> list[str]:
    """A seeded sample of ``n`` unique texts (anchors and positives) from ``train/pairs.jsonl.gz``."""
    texts: dict[str, None] = {}
    for row in pair_texts(data):
        texts.setdefault(row["anchor"], None)
        texts.setdefault(row["positive"], None)
    pool = sorted(texts)
    random.Random(seed).shuffle(pool)
    return pool[:n]


def train_pairs(data: Path, n: int, seed: int) -> list[dict[str, str]]:
    """A seeded sample of ``n`` anchor/positive pairs from ``train/pairs.jsonl.gz``."""
    rows = pair_texts(data)
    random.Random(seed).shuffle(rows)
    return [{"anchor": r["anchor"], "positive": r["positive"]} for r in rows[:n]]


# ----------------------------------------------------------------------------------------------------- cached encoding


def model_key(model_path: str) -> str:
    """Identifies a model folder's weights: its resolved path and the size + mtime of every file in it."""
    path = Path(model_path).resolve()
    stamp = [str(path)]
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        stat = file.stat()
        stamp.append(f"{file.relative_to(path)}:{stat.st_size}:{int(stat.st_mtime)}")
    return hashlib.sha1("\n".join(stamp).encode("utf-8")).hexdigest()[:12]


def encode_cached(
    model_path: str, texts: list[str], cache_dir: Path, max_seq_length: int, timings: dict[str, float], label: str
) -> np.ndarray:
    """Full-size embeddings of ``texts`` with the model at ``model_path``, from ``cache_dir`` when already there."""
    key = hashlib.sha1(json.dumps([model_key(model_path), max_seq_length, texts]).encode("utf-8")).hexdigest()[:16]
    path = cache_dir / f"emb-{key}.npy"
    if path.exists():
        return np.load(path)
    from sentence_transformers import SentenceTransformer

    start = time.process_time()
    model = SentenceTransformer(model_path, device="cpu")
    model.max_seq_length = max_seq_length
    embeddings = model.encode(texts, batch_size=64, show_progress_bar=True, convert_to_numpy=True).astype(np.float32)
    timings[label] = timings.get(label, 0.0) + time.process_time() - start
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(path, embeddings)
    return embeddings


# ------------------------------------------------------------------------------------------------------------ methods


def timed(fn: Callable[..., object], *args: object, **kwargs: object) -> tuple[object, float]:
    """``(fn(*args, **kwargs), CPU seconds it took)``."""
    start = time.process_time()
    result = fn(*args, **kwargs)
    return result, time.process_time() - start


def fit_adaptor_cached(
    cache: Path, name: str, docs: np.ndarray, dims: list[int], pairs: tuple[np.ndarray, np.ndarray] | None, **settings
):
    """``(adaptor, CPU seconds of its fit)``, from ``cache`` when this exact fit was done before."""
    from matryoshka_st.posthoc import MatryoshkaAdaptor

    parts = [docs.tobytes(), json.dumps([name, dims, sorted(settings.items())]).encode()]
    if pairs is not None:
        parts += [pairs[0].tobytes(), pairs[1].tobytes()]
    key = hashlib.sha1(b"".join(parts)).hexdigest()[:16]
    folder = cache / f"adaptor-{key}"
    if (folder / "cpu_seconds.json").exists():
        return MatryoshkaAdaptor.load(folder), json.loads((folder / "cpu_seconds.json").read_text())["cpu_seconds"]
    adaptor, seconds = timed(MatryoshkaAdaptor.fit, docs, dims, pairs=pairs, **settings)
    adaptor.save(folder)
    (folder / "cpu_seconds.json").write_text(json.dumps({"cpu_seconds": seconds}))
    return adaptor, seconds


def finetune_dir(cache: Path, args: argparse.Namespace, pca_texts: list[str] | None) -> Path:
    tag = f"s{args.train_steps}-b{args.train_batch_size}-l{args.train_max_seq_length}-n{args.train_pairs}"
    return cache / (f"model-pca{len(pca_texts)}-finetune-{tag}" if pca_texts else f"model-finetune-{tag}")


def finetune(
    base_path: str, output: Path, pairs: list[dict[str, str]], args: argparse.Namespace, pca_texts: list[str] | None
) -> tuple[str, float]:
    """Matryoshka fine-tuning with sentence-transformers' trainer: ``MatryoshkaLoss(MultipleNegativesRankingLoss)``
    over ``args.dims``, ``args.train_steps`` steps. With ``pca_texts`` the model first gets a PCA rotation fitted on
    them (``add_pca_rotation``), then trains exactly the same way. Returns the saved model's path and the CPU seconds
    it took (PCA fit included), both cached next to the model so a rerun only scores."""
    seconds_file = output.parent / f"{output.name}.cpu_seconds.json"
    if (output / "modules.json").exists() and seconds_file.exists():
        return str(output), json.loads(seconds_file.read_text())["cpu_seconds"]
    start = time.process_time()
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from matryoshka_st import MatryoshkaLoss
    from matryoshka_st.posthoc import add_pca_rotation

    model = SentenceTransformer(base_path, device="cpu")
    if pca_texts is not None:
        add_pca_rotation(model, texts=pca_texts, batch_size=64)
    model.max_seq_length = args.train_max_seq_length
    loss = MatryoshkaLoss(model, MultipleNegativesRankingLoss(model), list(args.dims))
    training_args = SentenceTransformerTrainingArguments(
        output_dir=str(output / "checkpoints"),
        max_steps=args.train_steps,
        per_device_train_batch_size=args.train_batch_size,
        learning_rate=2e-5,
        warmup_steps=max(1, args.train_steps // 10),
        seed=args.seed,
        data_seed=args.seed,
        save_strategy="no",
        logging_steps=max(1, args.train_steps // 5),
        report_to="none",
        use_cpu=True,
        dataloader_drop_last=True,
    )
    trainer = SentenceTransformerTrainer(
        model=model, args=training_args, train_dataset=Dataset.from_list(pairs), loss=loss
    )
    trainer.train()
    model.max_seq_length = args.max_seq_length
    model.save(str(output))
    cpu_seconds = time.process_time() - start
    seconds_file.write_text(json.dumps({"cpu_seconds": cpu_seconds}))
    return str(output), cpu_seconds


# -------------------------------------------------------------------------------------------------------------- report


def render(
    scores: dict[str, dict[str, dict[int, float]]],
    seconds: dict[str, float],
    notes: dict[str, str],
    dims: list[int],
    header: str,
) -> str:
    lines = [header, ""]
    for task in TASKS:
        full = scores["base"][task][dims[0]]
        lines += [
            f"### {task}: nDCG@10 (in brackets: share of base at {dims[0]} dims)",
            "",
            "| method | " + " | ".join(str(d) for d in dims) + " | CPU s | fitted on |",
            "| --- | " + " | ".join("---:" for _ in dims) + " | ---: | --- |",
        ]
        for method, by_task in scores.items():
            if task not in by_task:
                continue
            cells = [f"{by_task[task][d]:.3f} ({by_task[task][d] / full:.0%})" for d in dims]
            cpu = seconds.get(f"{method}|{task}", seconds.get(method))
            lines.append(
                f"| {method} | " + " | ".join(cells) + f" | {'' if cpu is None else f'{cpu:.0f}'} | {notes[method]} |"
            )
        lines.append("")
    extra = {k: v for k, v in seconds.items() if k.startswith("encode")}
    if extra:
        lines.append("Encoding (not included above): " + ", ".join(f"{k} {v:.0f} CPU s" for k, v in extra.items()))
        lines.append("")
    return "\n".join(lines)


def machine() -> str:
    import sentence_transformers
    import torch

    return (
        f"{platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"sentence-transformers {sentence_transformers.__version__}, Python {platform.python_version()}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"), help="Folder with dev/ and train/.")
    parser.add_argument("--model", default=None, help="Base model (default: the bundled all-MiniLM-L6-v2).")
    parser.add_argument("--dims", type=int, nargs="+", default=list(DIMS))
    parser.add_argument("--cache-dir", type=Path, default=HERE / ".cache" / "posthoc")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "posthoc.md")
    parser.add_argument("--max-seq-length", type=int, default=256, help="Encoding length (MiniLM's own).")
    parser.add_argument("--pca-train-texts", type=int, default=8000, help="Train texts for the 'PCA (train)' row.")
    parser.add_argument("--adaptor-steps", type=int, default=1000)
    parser.add_argument("--pairs", type=int, default=2000, help="Train pairs for the supervised adaptor (0: skip).")
    parser.add_argument("--finetuned", default=None, help="A Matryoshka fine-tuned model to score.")
    parser.add_argument("--pca-finetuned", default=None, help="A PCA-initialised Matryoshka fine-tuned model.")
    parser.add_argument("--train-steps", type=int, default=0, help="Fine-tune here for this many steps (0: skip).")
    parser.add_argument("--train-pairs", type=int, default=4000)
    parser.add_argument("--train-batch-size", type=int, default=16)
    parser.add_argument("--train-max-seq-length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads for everything (CPU s are honest).")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)

    import torch

    from matryoshka_st._bundled import bundled_model_path
    from matryoshka_st.dims import validate_dims
    from matryoshka_st.posthoc import fit_pca_rotation

    torch.set_num_threads(args.threads)
    dims = validate_dims(args.dims)[0]
    missing = [str(args.data / "dev" / t) for t in TASKS if not (args.data / "dev" / t / "corpus.jsonl").is_file()]
    if missing or not (args.data / "train" / "pairs.jsonl.gz").is_file():
        parser.error(f"--data {args.data} lacks {missing or 'train/pairs.jsonl.gz'}: pass the shared data folder.")
    base_path = args.model or bundled_model_path()
    cache, length = args.cache_dir, args.max_seq_length
    seconds: dict[str, float] = {}
    tasks = {task: load_task(args.data / "dev" / task) for task in TASKS}
    base = {
        task: (
            encode_cached(base_path, q, cache, length, seconds, "encode base"),
            encode_cached(base_path, d, cache, length, seconds, "encode base"),
        )
        for task, (_, q, _, d, _) in tasks.items()
    }

    scores: dict[str, dict[str, dict[int, float]]] = {}
    notes: dict[str, str] = {}

    def score(method: str, task: str, queries: np.ndarray, docs: np.ndarray, note: str) -> None:
        query_ids, _, doc_ids, _, qrels = tasks[task]
        scores.setdefault(method, {})[task] = {
            d: float(ndcg_at_10_per_query(queries, docs, query_ids, doc_ids, qrels, d).mean()) for d in dims
        }
        notes[method] = note
        logger.info("%s on %s: %s", method, task, {d: round(v, 3) for d, v in scores[method][task].items()})

    for task, (queries, docs) in base.items():
        score("base", task, queries, docs, "-")

    # PCA on the task's own corpus (no queries, no labels), and on a domain-mixed sample of training texts.
    for task, (queries, docs) in base.items():
        rotation, seconds[f"PCA (task corpus)|{task}"] = timed(fit_pca_rotation, docs)
        score("PCA (task corpus)", task, queries @ rotation.T, docs @ rotation.T, "the task's corpus, unlabelled")
    texts = train_texts(args.data, args.pca_train_texts, args.seed)
    sample = encode_cached(base_path, texts, cache, length, seconds, "encode train texts")
    rotation, seconds["PCA (train texts)"] = timed(fit_pca_rotation, sample)
    for task, (queries, docs) in base.items():
        score("PCA (train texts)", task, queries @ rotation.T, docs @ rotation.T, f"{len(texts)} train texts")

    # The Matryoshka-Adaptor on frozen embeddings: unsupervised on the corpus, then with train pairs as well.
    settings = {"steps": args.adaptor_steps, "seed": args.seed, "num_threads": args.threads}
    for task, (queries, docs) in base.items():
        adaptor, seconds[f"adaptor (task corpus)|{task}"] = fit_adaptor_cached(
            cache, task, docs, dims, None, **settings
        )
        score(
            "adaptor (task corpus)",
            task,
            adaptor.transform(queries),
            adaptor.transform(docs),
            "the task's corpus, unlabelled",
        )
    if args.pairs:
        pairs = train_pairs(args.data, args.pairs, args.seed + 1)
        anchors = encode_cached(base_path, [p["anchor"] for p in pairs], cache, length, seconds, "encode pairs")
        positives = encode_cached(base_path, [p["positive"] for p in pairs], cache, length, seconds, "encode pairs")
        for task, (queries, docs) in base.items():
            adaptor, seconds[f"adaptor + pairs|{task}"] = fit_adaptor_cached(
                cache, task, docs, dims, (anchors, positives), **settings
            )
            score(
                "adaptor + pairs",
                task,
                adaptor.transform(queries),
                adaptor.transform(docs),
                f"corpus + {len(pairs)} train pairs",
            )

    # Matryoshka fine-tuning of the encoder, plain and from the PCA-rotated model (same pairs, steps, seed).
    finetuned = {"Matryoshka fine-tune": args.finetuned, "PCA + Matryoshka fine-tune": args.pca_finetuned}
    if args.train_steps:
        pairs = train_pairs(args.data, args.train_pairs, args.seed + 2)
        for method, pca in (("Matryoshka fine-tune", None), ("PCA + Matryoshka fine-tune", texts)):
            if finetuned[method]:
                continue
            output = finetune_dir(cache, args, pca)
            finetuned[method], seconds[method] = finetune(base_path, output, pairs, args, pca)
    for method, path in finetuned.items():
        if not path:
            continue
        seconds_file = Path(f"{Path(path)}.cpu_seconds.json")
        if method not in seconds and seconds_file.exists():
            seconds[method] = json.loads(seconds_file.read_text())["cpu_seconds"]
        for task, (_, q, _, d, _) in tasks.items():
            queries = encode_cached(path, q, cache, length, seconds, f"encode {method}")
            docs = encode_cached(path, d, cache, length, seconds, f"encode {method}")
            score(
                method,
                task,
                queries,
                docs,
                f"{args.train_steps} steps x {args.train_batch_size} train pairs" if args.train_steps else path,
            )

    header = (
        f"## Post-hoc Matryoshka on {args.model or 'all-MiniLM-L6-v2 (bundled)'}\n\n"
        f"`python benchmarks/{Path(__file__).name} {' '.join(argv if argv is not None else sys.argv[1:])}`\n\n"
        f"Machine: {machine()}. CPU s: process CPU time of fitting / training only."
    )
    table = render(scores, seconds, notes, dims, header)
    print(table)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(table + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
