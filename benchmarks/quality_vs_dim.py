"""Quality against dimension on real data: does Matryoshka fine-tuning keep small prefixes good?

The bundled all-MiniLM-L6-v2 is fine-tuned several times with the same seed, the same sample of
``train/pairs.jsonl.gz``, the same steps, batch and learning rate; only the loss differs:

- ``plain``: ``MultipleNegativesRankingLoss`` alone;
- ``matryoshka``: our ``MatryoshkaLoss`` around it, dims 384, 256, 128, 64, 32, uniform weights;
- ``reference``: sentence-transformers' own ``MatryoshkaLoss``, same dims and weights;
- ``matryoshka-small``: ours with weights favouring the small dims, ``w_d ~ sqrt(384 / d)`` rescaled to the same
  total as uniform (so the effective learning rate is unchanged): 0.51, 0.62, 0.88, 1.24, 1.76.

The base model and each fine-tune are scored by nDCG@10 at dims 384, 256, 128, 64, 32, 16 on the dev retrieval sets
(``dev/debian_descriptions``, ``dev/wordnet_examples``) with the project's eval harness
(``matryoshka_st.evaluation.evaluate`` + ``render``), which writes the mteb results, the report, the CSV and the plots.

Noise: each text's embedding is recorded while the harness encodes it, and the same nDCG@10 is recomputed per query
(``_common.ndcg_at_10_per_query``, mteb's pytrec_eval; its means match the harness to 1e-3, checked every run). Differences between two
models are then given a 95% paired-bootstrap interval over queries (2,000 resamples); "no worse than the reference"
means the interval of (matryoshka - reference) does not lie wholly below zero. ``--seeds 1 2 3 --scorer numpy`` instead
retrains every variant per seed and reports the seed-to-seed spread (the harness is skipped, so it runs where mteb is
not installed, e.g. a GPU box).

Heads: a 3-way pair-classification set is built from pairs outside the retrieval sample: (anchor, its own positive),
(anchor, another positive of the same source), (anchor, a positive of another source). ``SoftmaxLoss`` inside our
``MatryoshkaLoss`` is trained with ``head_mode="separate"`` (a head per dim, MRL) and ``"shared"`` (one weight sliced
per dim, MRL-E); test accuracy is read with each dim's own head. sentence-transformers' ``MatryoshkaLoss`` cannot train
this loss at all (its classifier expects the full size).

Training data (a fixed, documented sample; ``--pairs`` sets its size): per source, the pairs with the smallest
``sha1(seed:anchor:positive)``, in the shares of ``MIX``. Batches come from one source at a time (sentence-transformers'
proportional multi-dataset sampler, no duplicate texts in a batch), so in-batch negatives are from the same domain.
The dev sets' package families and synsets are not in the training pairs.

Models are cached under ``--cache-dir`` (keyed by every setting that changes them); delete it to retrain. One command
from a clean clone (about 75 minutes on a 2-core CPU)::

    python benchmarks/quality_vs_dim.py --data ../shared/data
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
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _common import load_task, ndcg_at_10_per_query, pairs_by_source  # noqa: E402  (the script's own folder is on sys.path)

logger = logging.getLogger("quality_vs_dim")

HERE = Path(__file__).resolve().parent
TASKS = ("debian_descriptions", "wordnet_examples")
EVAL_DIMS = (384, 256, 128, 64, 32, 16)
TRAIN_DIMS = (384, 256, 128, 64, 32)
MIX = {
    "debian": 0.40,
    "wordnet-example": 0.30,
    "wordnet-lemma": 0.15,
    "bible-kjv-web": 0.05,
    "bible-kjv-ylt": 0.05,
    "jargon": 0.05,
}
# Recipes (issue 14): the package's named recipes (matryoshka_st.recipes.RECIPES, whose "reference" is the variant
# "matryoshka" here) and the study-only variants, each a package recipe with some fields overridden. What a recipe
# trains with: its MatryoshkaLoss arguments and, for init "pca", a PCA-rotated start fitted on the model's
# embeddings of the training sample's texts (as `matryoshka-st train --recipe pca`); its pca_after is scored by
# --posthoc-pca.
STUDY_ONLY: dict[str, tuple[str, dict[str, Any]]] = {
    "kl": ("reference", dict(distill_weight=1.0, distill_temperature=1.0)),
    "kl-t2": ("reference", dict(distill_weight=1.0, distill_temperature=2.0)),
    "kl-light": ("reference", dict(distill_weight=0.3)),
    "share": ("reference", dict(full_dim_share=0.4)),
    "pca-kl": ("pca", dict(distill_weight=1.0, distill_temperature=1.0)),
    "share-kl": ("reference", dict(full_dim_share=0.4, distill_weight=1.0, distill_temperature=1.0)),
    "pca-share": ("pca-share-kl", dict(distill_weight=0.0)),
    "pca-share-kl-t2": ("pca-share-kl", dict(distill_temperature=2.0)),
    "pca-share6-kl": ("pca-share-kl", dict(full_dim_share=0.6)),
}
STUDY_ORDER = ("kl", "kl-t2", "kl-light", "share", "pca", "pca-kl", "share-kl", "pca-share", "pca-share-kl")
STUDY_ORDER += ("pca-share-kl-t2", "pca-share6-kl")


def _study_recipes() -> dict[str, Any]:
    from matryoshka_st.recipes import RECIPES as PACKAGE_RECIPES

    recipes = {name: recipe for name, recipe in PACKAGE_RECIPES.items() if name != "reference"}
    recipes.update({name: PACKAGE_RECIPES[base].with_overrides(**o) for name, (base, o) in STUDY_ONLY.items()})
    order = [name for name in STUDY_ORDER if name in recipes]
    return {name: recipes[name] for name in order + sorted(set(recipes) - set(order))}


RECIPES = _study_recipes()  # name -> matryoshka_st.recipes.Recipe


def recipe_settings(variant: str) -> dict[str, Any]:
    """What a recipe trains with, as the model cache key holds it: ``init`` (when "pca") and the loss arguments."""
    recipe = RECIPES[variant]
    return {**({"init": "pca"} if recipe.init == "pca" else {}), **recipe.loss_kwargs()}


# "default": the recipe `matryoshka-st train` uses by default (matryoshka_st.recipes.DEFAULT_RECIPE), one of RECIPES
VARIANTS = ("plain", "matryoshka", "reference", "matryoshka-small", *RECIPES, "default")
# a variant name with this suffix is the same trained model with a PCA rotation fitted after training (no training
# cost; `matryoshka-st adapt`), applied to the vectors before truncation
POSTHOC = "+pca-after"
PCA_TEXTS = 5000  # texts of the training sample the rotations are fitted on (the CLI's --init_texts default)
HEAD_MODES = ("separate", "shared")
LABELS = ("own positive", "same source", "other source")


def small_dim_weights(dims: tuple[int, ...] = TRAIN_DIMS) -> list[float]:
    """``sqrt(full / d)`` per dim, rescaled so the weights sum to ``len(dims)`` (as uniform weights do)."""
    raw = np.sqrt(dims[0] / np.array(dims, dtype=np.float64))
    return [round(float(w), 4) for w in raw * len(dims) / raw.sum()]


# ---------------------------------------------------------------------------------------------------------------- data


def read_pairs(data: Path, seed: int) -> dict[str, list[dict[str, str]]]:
    """Every pair of ``train/pairs.jsonl.gz`` by source, each source ordered by its hash rank (``_common``)."""
    return pairs_by_source(data, seed, MIX)


def split_sample(
    by_source: dict[str, list[dict[str, str]]], n_retrieval: int, n_classification: int
) -> tuple[dict[str, list[dict[str, str]]], list[dict[str, str]]]:
    """``(retrieval pairs by source, classification pairs)``: the first ``MIX[s] * n_retrieval`` pairs of each source
    train retrieval; the next ``MIX[s] * n_classification`` are the classification pool (disjoint)."""
    if n_retrieval <= 0:  # every pair of every source (the sources' own sizes, not MIX), nothing for classification
        return {source: by_source[source] for source in MIX}, []
    retrieval, pool = {}, []
    for source, share in MIX.items():
        rows, n, m = by_source[source], round(share * n_retrieval), round(share * n_classification)
        if len(rows) < n + m:
            raise ValueError(f"Source {source!r} has {len(rows)} pairs; the sample needs {n + m}.")
        retrieval[source] = rows[:n]
        pool.extend(rows[n : n + m])
    return retrieval, pool


def sample_texts(retrieval: dict[str, list[dict[str, str]]], n: int, seed: int) -> list[str]:
    """``n`` distinct texts (anchors and positives) of the retrieval sample, drawn with ``seed``."""
    texts = sorted({r[c] for rows in retrieval.values() for r in rows for c in ("anchor", "positive")})
    random.Random(seed).shuffle(texts)
    return texts[:n]


def classification_set(pool: list[dict[str, str]], seed: int) -> list[dict[str, Any]]:
    """``{"sentence1", "sentence2", "label"}`` rows, labels cycling 0, 1, 2 (see ``LABELS``)."""
    rng = random.Random(seed)
    by_source: dict[str, list[str]] = {}
    for row in pool:
        by_source.setdefault(row["source"], []).append(row["positive"])
    sources = sorted(by_source)
    rows = []
    for i, row in enumerate(pool):
        label = i % 3
        if label == 0:
            other = row["positive"]
        elif label == 1:
            other = row["positive"]
            while other == row["positive"]:
                other = rng.choice(by_source[row["source"]])
        else:
            other = rng.choice(by_source[rng.choice([s for s in sources if s != row["source"]])])
        rows.append({"sentence1": row["anchor"], "sentence2": other, "label": label})
    rng.shuffle(rows)
    return rows


# ------------------------------------------------------------------------------------------------------------ training


def make_loss(variant: str, model: Any) -> Any:
    from sentence_transformers.sentence_transformer import losses as st_losses

    from matryoshka_st import MatryoshkaLoss

    inner = st_losses.MultipleNegativesRankingLoss(model)
    if variant == "plain":
        return inner
    if variant == "matryoshka":
        return MatryoshkaLoss(model, inner, list(TRAIN_DIMS))
    if variant == "reference":
        return st_losses.MatryoshkaLoss(model, inner, list(TRAIN_DIMS))
    if variant == "matryoshka-small":
        return MatryoshkaLoss(model, inner, list(TRAIN_DIMS), matryoshka_weights=small_dim_weights())
    if variant in RECIPES:
        return MatryoshkaLoss(model, inner, list(TRAIN_DIMS), **RECIPES[variant].loss_kwargs())
    raise ValueError(f"Unknown variant {variant!r}; choose from {VARIANTS}.")


def training_arguments(args: argparse.Namespace, output: Path, steps: int, batch_size: int, seed: int) -> Any:
    from sentence_transformers import SentenceTransformerTrainingArguments

    return SentenceTransformerTrainingArguments(
        output_dir=str(output / "checkpoints"),
        max_steps=steps if steps > 0 else -1,  # 0: one epoch
        num_train_epochs=1,
        per_device_train_batch_size=batch_size,
        learning_rate=args.learning_rate,
        warmup_steps=max(1, steps // 10),
        seed=seed,
        data_seed=seed,
        batch_sampler="no_duplicates",
        multi_dataset_batch_sampler="proportional",
        save_strategy="no",
        logging_steps=max(1, steps // 10),
        report_to="none",
        use_cpu=args.device == "cpu",
        bf16=args.bf16,
        dataloader_drop_last=True,
        disable_tqdm=not sys.stderr.isatty(),
    )


def cached_model(
    cache: Path, name: str, settings: dict[str, Any], train: Callable[[Path], dict[str, Any]]
) -> tuple[Path, dict[str, Any]]:
    """The model folder for ``settings``, trained by ``train(folder)`` unless a finished one is cached.

    ``train`` returns facts to keep (seconds, losses); they are stored beside the model, and a folder is only
    considered finished once that file exists (it is written last)."""
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]
    folder = cache / "models" / f"{name}-{key}"
    info_file = folder / "training.json"
    if info_file.is_file():
        logger.info("Using the cached %s model in %s", name, folder)
        return folder, json.loads(info_file.read_text())
    logger.info("Training %s into %s", name, folder)
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    facts = train(folder)
    facts.update(
        settings=settings,
        wall_seconds=round(time.perf_counter() - start_wall, 1),
        cpu_seconds=round(time.process_time() - start_cpu, 1),
    )
    info_file.write_text(json.dumps(facts, indent=2) + "\n")
    return folder, facts


def heads_loss(model: Any, mode: str) -> Any:
    """Our ``MatryoshkaLoss`` around a 3-way ``SoftmaxLoss``, with heads per dim in ``mode``."""
    from sentence_transformers.sentence_transformer import losses as st_losses

    from matryoshka_st import MatryoshkaLoss

    inner = st_losses.SoftmaxLoss(model, TRAIN_DIMS[0], num_labels=len(LABELS))
    return MatryoshkaLoss(model, inner, list(TRAIN_DIMS), head_mode=mode)


def fit(model: Any, loss: Any, dataset: Any, folder: Path, training_args: Any, max_seq_length: int) -> dict[str, Any]:
    """Train ``model`` at ``max_seq_length``, save it into ``folder`` at its own length, return the facts to keep."""
    from sentence_transformers import SentenceTransformerTrainer

    eval_max_seq_length = model.max_seq_length
    model.max_seq_length = max_seq_length
    trainer = SentenceTransformerTrainer(model=model, args=training_args, train_dataset=dataset, loss=loss)
    output = trainer.train()
    model.max_seq_length = eval_max_seq_length
    model.save(str(folder))
    return {"train_loss": output.training_loss, "steps": output.global_step, "log": trainer.state.log_history}


def train_retrieval(
    variant: str, base: str, retrieval: dict[str, list[dict[str, str]]], args: argparse.Namespace, seed: int
) -> Callable[[Path], dict[str, Any]]:
    def train(folder: Path) -> dict[str, Any]:
        from datasets import Dataset, DatasetDict
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(base, device=args.device)
        if variant in RECIPES and RECIPES[variant].init == "pca":
            from matryoshka_st.posthoc import add_pca_rotation

            add_pca_rotation(model, texts=sample_texts(retrieval, PCA_TEXTS, seed), batch_size=128)
        datasets = DatasetDict(
            {
                source: Dataset.from_list([{"anchor": r["anchor"], "positive": r["positive"]} for r in rows])
                for source, rows in retrieval.items()
            }
        )
        training_args = training_arguments(args, folder, args.steps, args.batch_size, seed)
        return fit(model, make_loss(variant, model), datasets, folder, training_args, args.max_seq_length)

    return train


def train_heads(
    mode: str, base: str, rows: list[dict[str, Any]], args: argparse.Namespace, seed: int
) -> Callable[[Path], dict[str, Any]]:
    def train(folder: Path) -> dict[str, Any]:
        from datasets import Dataset
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(base, device=args.device)
        loss = heads_loss(model, mode)
        training_args = training_arguments(args, folder, args.head_steps, args.head_batch_size, seed)
        facts = fit(model, loss, Dataset.from_list(rows), folder, training_args, args.head_max_seq_length)
        loss.save_heads(str(folder / "heads"))
        return facts

    return train


def head_accuracy(folder: Path, mode: str, rows: list[dict[str, Any]], device: str) -> dict[int, float]:
    """Test accuracy of the classifier at each training dim, reading ``[u, v, |u - v|]`` of the truncated,
    renormalised embeddings with that dim's head (exactly what the loss fed it in training)."""
    import torch
    from sentence_transformers import SentenceTransformer

    from matryoshka_st.dims import truncate

    model = SentenceTransformer(str(folder), device=device)
    loss = heads_loss(model, mode)
    loss.load_heads(str(folder / "heads"))
    encode = dict(batch_size=64, convert_to_tensor=True, normalize_embeddings=False)
    u = model.encode([r["sentence1"] for r in rows], **encode)
    v = model.encode([r["sentence2"] for r in rows], **encode)
    labels = torch.tensor([r["label"] for r in rows], device=u.device)
    accuracy = {}
    with torch.no_grad():
        for dim in TRAIN_DIMS:
            a, b = truncate(u, dim), truncate(v, dim)
            logits = loss.heads.head(dim)(torch.cat([a, b, (a - b).abs()], dim=1))
            accuracy[dim] = float((logits.argmax(dim=1) == labels).float().mean())
    return accuracy


# ------------------------------------------------------------------------------------------------------------- scoring


class RecordingModel:
    """Records every text the wrapped model encodes, so the harness's single pass also feeds the per-query scorer."""

    def __init__(self, model: Any) -> None:
        self.vectors: dict[str, np.ndarray] = {}
        self._encode = model.encode
        model.encode = self.encode

    def encode(self, *args: Any, **kwargs: Any) -> Any:
        output = self._encode(*args, **kwargs)
        sentences = args[0] if args else kwargs.get("inputs", kwargs.get("sentences"))
        texts = [sentences] if isinstance(sentences, str) else list(sentences)
        array = output.detach().float().cpu().numpy() if hasattr(output, "detach") else np.asarray(output)
        self.vectors.update(zip(texts, array.reshape(len(texts), -1), strict=True))
        return output


def per_query_scores(
    vectors: Callable[[list[str]], np.ndarray], tasks: dict[str, tuple]
) -> dict[str, dict[int, np.ndarray]]:
    """``{task: {dim: per-query nDCG@10}}`` from full-size vectors."""
    scores = {}
    for task, (query_ids, queries, doc_ids, docs, qrels) in tasks.items():
        q, d = vectors(queries), vectors(docs)
        scores[task] = {dim: ndcg_at_10_per_query(q, d, query_ids, doc_ids, qrels, dim) for dim in EVAL_DIMS}
    return scores


def bootstrap_interval(diff: np.ndarray, rng: np.random.Generator, n: int = 2000) -> tuple[float, float]:
    """95% paired-bootstrap interval of the mean of per-query differences."""
    means = diff[rng.integers(0, len(diff), size=(n, len(diff)))].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def score_with_harness(
    models: dict[str, str], data: Path, tasks: dict[str, tuple], output: Path, cache: Path, device: str
) -> dict[str, dict[str, dict[int, np.ndarray]]]:
    """Run the eval harness on every model (mteb results + report + plots into ``output``) and return per-query
    scores recomputed from the very embeddings the harness produced."""
    from sentence_transformers import SentenceTransformer

    from matryoshka_st.evaluation import evaluate, render

    per_query, harness = {}, {}
    for name, path in models.items():
        model = SentenceTransformer(path, device=device)
        recorder = RecordingModel(model)
        runs = evaluate(
            {name: model},
            [data / "dev" / task for task in TASKS],
            dims=list(EVAL_DIMS),
            output_folder=cache / "eval",
            show_progress_bar=False,
        )
        harness[name] = {(r.result.task_name, r.dim): r.score for r in runs}
        stored = cache / "per_query" / f"{name}-{hashlib.sha1(str(path).encode()).hexdigest()[:10]}.npz"
        if all(r.skipped for r in runs) and stored.is_file():  # scored before: nothing to encode
            with np.load(stored) as arrays:
                per_query[name] = {t: {d: arrays[f"{t}@{d}"] for d in EVAL_DIMS} for t in tasks}
            continue
        if any(r.skipped for r in runs):  # finished results were loaded, nothing was encoded: encode now
            model.encode(sorted({t for task in tasks.values() for t in task[1] + task[3]}), batch_size=64)
        # mteb strips corpus texts (not queries) before encoding; whitespace does not change the tokens
        per_query[name] = per_query_scores(
            lambda texts, r=recorder: np.stack(
                [r.vectors[t] if t in r.vectors else r.vectors[t.strip()] for t in texts]
            ),
            tasks,
        )
        stored.parent.mkdir(parents=True, exist_ok=True)
        np.savez(stored, **{f"{t}@{d}": v for t, by_dim in per_query[name].items() for d, v in by_dim.items()})
    for name, scores in per_query.items():
        for task, by_dim in scores.items():
            for dim, values in by_dim.items():
                mine, theirs = float(values.mean()), harness[name][(task, dim)]  # local tasks keep the folder name
                if abs(mine - theirs) > 1e-3:
                    raise RuntimeError(f"{name} {task} @{dim}: per-query mean {mine:.4f} != harness {theirs:.4f}")
    render([cache / "eval" / "results"], output / "harness")
    return per_query


_NUMPY_SCORES: dict[str, dict[str, dict[int, np.ndarray]]] = {}


def score_with_numpy(
    models: dict[str, str], tasks: dict[str, tuple], device: str, pca_texts: list[str] | None = None
) -> dict:
    """Per-query nDCG@10 without mteb; each model folder is encoded once per process (the base model serves every
    seed). With ``pca_texts``, every model is also scored with a PCA rotation fitted on its embeddings of those texts
    after training (``name + POSTHOC``)."""
    from sentence_transformers import SentenceTransformer

    from matryoshka_st.posthoc import fit_pca_rotation

    scores = {}
    for name, path in models.items():
        keys = [(name, path)] + ([(name + POSTHOC, path + POSTHOC)] if pca_texts else [])
        if any(key not in _NUMPY_SCORES for _, key in keys):
            model = SentenceTransformer(path, device=device)

            def encode(texts: list[str], m: Any = model) -> np.ndarray:
                return m.encode(texts, batch_size=128, convert_to_numpy=True).astype(np.float32)

            texts = sorted({t for task in tasks.values() for t in task[1] + task[3]})
            table = dict(zip(texts, encode(texts), strict=True))
            _NUMPY_SCORES[path] = per_query_scores(lambda ts, t=table: np.stack([t[x] for x in ts]), tasks)
            if pca_texts:
                rotation = fit_pca_rotation(encode(pca_texts)).astype(np.float32)  # rows: principal directions
                _NUMPY_SCORES[path + POSTHOC] = per_query_scores(
                    lambda ts, t=table, r=rotation: np.stack([t[x] for x in ts]) @ r.T, tasks
                )
        scores.update({label: _NUMPY_SCORES[key] for label, key in keys})
    return scores


def save_per_query(folder: Path, seed: int, per_query: dict[str, dict[str, dict[int, np.ndarray]]]) -> None:
    """One ``<name>@<seed>.npz`` per model (``<task>@<dim>`` arrays), which ``recipe_report.py`` combines."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, by_task in per_query.items():
        arrays = {f"{t}@{d}": v.astype(np.float32) for t, by_dim in by_task.items() for d, v in by_dim.items()}
        np.savez(folder / f"{name}@{seed}.npz", **arrays)


# -------------------------------------------------------------------------------------------------------------- report


def _table(means: dict[str, dict[str, dict[int, float]]], names: list[str], task: str) -> list[str]:
    header = "| dim | " + " | ".join(names) + " |"
    lines = [header, "|" + "---:|" * (len(names) + 1)]
    for dim in EVAL_DIMS:
        cells = []
        for name in names:
            value, full = means[name][task][dim], means[name][task][EVAL_DIMS[0]]
            cells.append(f"{value:.4f} ({100 * value / full:.1f}%)")
        lines.append(f"| {dim} | " + " | ".join(cells) + " |")
    return lines


def targets(
    per_query: dict[str, dict[str, dict[int, np.ndarray]]], rng: np.random.Generator
) -> tuple[list[str], list[dict[str, Any]]]:
    """The issue's targets per dev set, each with its measured value and a paired-bootstrap interval."""
    checks = []
    for task in TASKS:
        mrl, plain, ref = (per_query[n][task] for n in ("matryoshka", "plain", "reference"))
        full = mrl[EVAL_DIMS[0]].mean()
        for dim, need in ((64, 0.98), (32, 0.95)):
            keep = mrl[dim].mean() / full
            checks.append(
                dict(
                    task=task,
                    target=f"matryoshka keeps >= {need:.0%} of its 384-dim score at {dim}",
                    value=f"{keep:.1%}",
                    met=bool(keep >= need),
                )
            )
        for dim in (128, 64, 32, 16):
            diff = mrl[dim] - plain[dim]
            low, high = bootstrap_interval(diff, rng)
            checks.append(
                dict(
                    task=task,
                    target=f"matryoshka beats plain at {dim}",
                    value=f"{100 * diff.mean():+.2f} pt [{100 * low:+.2f}, {100 * high:+.2f}]"
                    + (" beyond noise" if low > 0 else " within noise" if high > 0 else " worse beyond noise"),
                    met=bool(diff.mean() > 0),
                )
            )
        diff = mrl[EVAL_DIMS[0]] - plain[EVAL_DIMS[0]]
        low, high = bootstrap_interval(diff, rng)
        checks.append(
            dict(
                task=task,
                target="matryoshka loses <= 0.5 pt to plain at 384",
                value=f"{100 * diff.mean():+.2f} pt [{100 * low:+.2f}, {100 * high:+.2f}]",
                met=bool(diff.mean() >= -0.005),
            )
        )
        worst = []
        for dim in EVAL_DIMS:
            diff = mrl[dim] - ref[dim]
            low, high = bootstrap_interval(diff, rng)
            worst.append((high, dim, diff.mean(), low))
        high, dim, mean, low = min(worst)
        checks.append(
            dict(
                task=task,
                target="matryoshka no worse than reference at any dim (interval not wholly below 0)",
                value=f"worst at {dim}: {100 * mean:+.2f} pt [{100 * low:+.2f}, {100 * high:+.2f}]",
                met=bool(high >= 0),
            )
        )
    lines = ["| dev set | target | measured (95% paired-bootstrap interval) | met |", "|---|---|---|---|"]
    lines += [f"| {c['task']} | {c['target']} | {c['value']} | {'yes' if c['met'] else 'no'} |" for c in checks]
    return lines, checks


def differences(
    per_query: dict[str, dict[str, dict[int, np.ndarray]]], rng: np.random.Generator, against: str = "matryoshka"
) -> list[str]:
    """Every other fine-tune minus ``against``, per dev set and dim: mean nDCG@10 points and the 95% interval."""
    others = [n for n in per_query if n not in ("base", against)]
    lines = ["| dev set | dim | " + " | ".join(f"{n} - {against}" for n in others) + " |"]
    lines.append("|---|---:|" + "---:|" * len(others))
    for task in TASKS:
        for dim in EVAL_DIMS:
            cells = []
            for name in others:
                diff = per_query[name][task][dim] - per_query[against][task][dim]
                low, high = bootstrap_interval(diff, rng)
                cells.append(f"{100 * diff.mean():+.2f} [{100 * low:+.2f}, {100 * high:+.2f}]")
            lines.append(f"| {task} | {dim} | " + " | ".join(cells) + " |")
    return lines


def plot(means: dict[str, dict[str, dict[int, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TASKS), figsize=(6 * len(TASKS), 4.2))
    for ax, task in zip(axes, TASKS, strict=True):
        for name, by_task in means.items():
            style = dict(linestyle="--", marker="x", markersize=9) if name == "reference" else dict(marker="o")
            ax.plot(EVAL_DIMS, [by_task[task][d] for d in EVAL_DIMS], label=name, **style)
        ax.set_xscale("log", base=2)
        ax.set_xticks(EVAL_DIMS, [str(d) for d in EVAL_DIMS])
        ax.set_xlabel("embedding dimension (prefix, renormalised)")
        ax.set_ylabel("nDCG@10")
        ax.set_title(task)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def machine(device: str) -> str:
    import sentence_transformers
    import torch

    where = torch.cuda.get_device_name() if device.startswith("cuda") else f"cpu, {torch.get_num_threads()} threads"
    return (
        f"{where}; python {platform.python_version()}, torch {torch.__version__}, "
        f"sentence-transformers {sentence_transformers.__version__}"
    )


# ---------------------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=HERE.parent.parent / "shared" / "data",
        help="folder holding train/pairs.jsonl.gz and dev/<task>/ (default: ../shared/data)",
    )
    parser.add_argument("--base", default=None, help="model to fine-tune (default: the bundled all-MiniLM-L6-v2)")
    parser.add_argument(
        "--pairs", type=int, default=9600, help="retrieval training pairs (default 9600); 0: every pair of the file"
    )
    parser.add_argument("--steps", type=int, default=150, help="training steps per variant (default 150); 0: 1 epoch")
    parser.add_argument("--bf16", action="store_true", help="train in bf16 mixed precision (GPU)")
    parser.add_argument(
        "--posthoc-pca", action="store_true", help="also score every model with a PCA rotation fitted after training"
    )
    parser.add_argument("--per-query-dir", type=Path, default=None, help="write <name>@<seed>.npz per-query scores")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--max-seq-length", type=int, default=128, help="in training; evaluation uses the model's")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--head-steps", type=int, default=200, help="0 skips the heads comparison")
    parser.add_argument("--head-max-seq-length", type=int, default=64, help="in the heads' training")
    parser.add_argument("--head-batch-size", type=int, default=32)
    parser.add_argument("--head-test", type=int, default=1500, help="classification test pairs")
    parser.add_argument("--sample-seed", type=int, default=0, help="picks the training sample")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42], help="training seeds; several give the spread")
    parser.add_argument(
        "--scorer",
        choices=("harness", "numpy"),
        default="harness",
        help="harness: matryoshka_st.evaluation (mteb); numpy: the same nDCG@10 without mteb",
    )
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--cache-dir", type=Path, default=HERE / ".cache" / "quality_vs_dim")
    parser.add_argument("--output", type=Path, default=HERE / "results" / "quality_vs_dim")
    args = parser.parse_args(argv)
    from matryoshka_st.recipes import DEFAULT_RECIPE

    args.variants = [DEFAULT_RECIPE if variant == "default" else variant for variant in args.variants]
    if args.scorer == "harness" and len(args.seeds) > 1:
        parser.error("--seeds with several seeds needs --scorer numpy")
    for name in ("batch_size", "head_batch_size", "head_max_seq_length", "head_test"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    for name in ("pairs", "steps"):
        if getattr(args, name) < 0:
            parser.error(f"--{name} must be >= 0")
    if args.head_steps < 0:
        parser.error("--head-steps must be >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    import torch

    from matryoshka_st._bundled import bundled_model_path

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    for task in TASKS:  # check every input before any training
        if not (args.data / "dev" / task / "qrels" / "test.tsv").is_file():
            raise FileNotFoundError(f"No dev set at {args.data / 'dev' / task} (BEIR layout expected).")
    n_classification = (args.head_steps * args.head_batch_size + args.head_test) if args.head_steps else 0
    retrieval, pool = split_sample(read_pairs(args.data, args.sample_seed), args.pairs, n_classification)
    tasks = {task: load_task(args.data / "dev" / task) for task in TASKS}
    base = args.base or bundled_model_path()
    args.output.mkdir(parents=True, exist_ok=True)

    common = dict(
        base=args.base or "all-MiniLM-L6-v2",  # the bundled model keeps its short name in the cache key
        pairs=args.pairs,
        sample_seed=args.sample_seed,
        mix=MIX,
        batch_size=args.batch_size,
        lr=args.learning_rate,
        max_seq_length=args.max_seq_length,
        device=args.device,
        **({"bf16": True} if args.bf16 else {}),
    )
    runs: dict[int, dict[str, Any]] = {}
    for seed in args.seeds:
        models, facts = {"base": base}, {}
        for variant in args.variants:
            settings = dict(common, variant=variant, steps=args.steps, seed=seed, dims=TRAIN_DIMS)
            if variant == "matryoshka-small":
                settings["weights"] = small_dim_weights()
            if variant in RECIPES:
                settings["recipe"] = recipe_settings(variant)
                if RECIPES[variant].init == "pca":
                    settings["pca_texts"] = PCA_TEXTS
            folder, facts[variant] = cached_model(
                args.cache_dir, variant, settings, train_retrieval(variant, base, retrieval, args, seed)
            )
            models[variant] = str(folder)
        if args.scorer == "harness":
            per_query = score_with_harness(models, args.data, tasks, args.output, args.cache_dir, args.device)
        else:
            pca_texts = sample_texts(retrieval, PCA_TEXTS, seed) if args.posthoc_pca else None
            per_query = score_with_numpy(models, tasks, args.device, pca_texts)
        if args.per_query_dir:
            save_per_query(args.per_query_dir, seed, per_query)
        heads = {}
        if args.head_steps:
            rows = classification_set(pool, args.sample_seed)
            test, train_rows = rows[: args.head_test], rows[args.head_test :]
            for mode in HEAD_MODES:
                settings = dict(
                    common,
                    variant=f"heads-{mode}",
                    steps=args.head_steps,
                    batch_size=args.head_batch_size,
                    max_seq_length=args.head_max_seq_length,
                    seed=seed,
                    dims=TRAIN_DIMS,
                    n=len(train_rows),
                )
                folder, facts[f"heads-{mode}"] = cached_model(
                    args.cache_dir, f"heads-{mode}", settings, train_heads(mode, base, train_rows, args, seed)
                )
                heads[mode] = head_accuracy(folder, mode, test, args.device)
        runs[seed] = dict(per_query=per_query, facts=facts, heads=heads)
        write_results(args, runs, final=seed == args.seeds[-1])  # after every seed: a cut-off run keeps its seeds
    return 0


def write_results(args: argparse.Namespace, runs: dict[int, dict[str, Any]], final: bool = True) -> None:
    seeds = list(runs)
    names = list(runs[seeds[0]]["per_query"])
    means = {
        seed: {
            n: {t: {d: float(v.mean()) for d, v in by_dim.items()} for t, by_dim in run["per_query"][n].items()}
            for n in names
        }
        for seed, run in runs.items()
    }
    settings = (
        f"{args.pairs} pairs (sample seed {args.sample_seed}; mix "
        + ", ".join(f"{s} {share:.0%}" for s, share in MIX.items())
        + f"), {args.steps} steps, batch {args.batch_size} (one source per batch, no duplicates), "
        f"lr {args.learning_rate}, warmup 10%, max_seq_length {args.max_seq_length} in training, "
        f"seeds {seeds}, device {machine(args.device)}"
        + (
            f"; heads: SoftmaxLoss, {args.head_steps} steps, batch {args.head_batch_size}, max_seq_length "
            f"{args.head_max_seq_length}, {args.head_steps * args.head_batch_size} training and {args.head_test} test "
            "pairs, labels cycling own positive / same source / other source"
            if args.head_steps
            else ""
        )
    )
    out = [
        "# Quality against dimension",
        "",
        f"Settings: {settings}.",
        "",
        f"Command: `python benchmarks/quality_vs_dim.py {' '.join(sys.argv[1:])}`".rstrip(),
        "",
    ]
    summary: dict[str, Any] = {"settings": settings, "seeds": {}}
    for seed in seeds:
        run = runs[seed]
        out += [f"## Seed {seed}: nDCG@10 (share of the model's own 384-dim score)", ""]
        for task in TASKS:
            out += [f"### {task}", ""] + _table(means[seed], names, task) + [""]
        summary["seeds"][seed] = {
            "ndcg_at_10": means[seed],
            "heads_accuracy": run["heads"],
            "training": {
                k: {f: v.get(f) for f in ("wall_seconds", "cpu_seconds", "train_loss")}
                for k, v in run["facts"].items()
            },
        }
        if {"matryoshka", "plain", "reference"} <= set(names):
            lines, checks = targets(run["per_query"], np.random.default_rng(seed))
            out += ["### Targets", ""] + lines + [""]
            summary["seeds"][seed]["targets"] = checks
        if "matryoshka" in names and len(names) > 2:
            out += ["### Differences to matryoshka, nDCG@10 points (95% paired-bootstrap interval over queries)", ""]
            out += differences(run["per_query"], np.random.default_rng(seed)) + [""]
        if run["heads"]:
            out += [
                "### Heads: 3-way pair classification, test accuracy by dim",
                "",
                "| dim | " + " | ".join(HEAD_MODES) + " |",
                "|" + "---:|" * (len(HEAD_MODES) + 1),
            ]
            out += [
                f"| {d} | " + " | ".join(f"{run['heads'][m][d]:.3f}" for m in HEAD_MODES) + " |" for d in TRAIN_DIMS
            ] + [""]
        out += ["### Training time", "", "| run | wall s | CPU s | mean train loss |", "|---|---:|---:|---:|"]
        out += [
            f"| {k} | {v['wall_seconds']} | {v['cpu_seconds']} | {v['train_loss']:.4f} |"
            for k, v in run["facts"].items()
        ] + [""]
    if len(seeds) > 1:
        out += ["## Spread over seeds: mean +- standard deviation of nDCG@10", ""]
        for task in TASKS:
            out += [f"### {task}", "", "| dim | " + " | ".join(names) + " |", "|" + "---:|" * (len(names) + 1)]
            for dim in EVAL_DIMS:
                cells = []
                for n in names:
                    values = np.array([means[s][n][task][dim] for s in seeds])
                    cells.append(f"{values.mean():.4f} +- {values.std(ddof=1):.4f}")
                out.append(f"| {dim} | " + " | ".join(cells) + " |")
            out.append("")
    stem = "quality_vs_dim" if args.scorer == "harness" else f"quality_vs_dim_{args.device.split(':')[0]}_seeds"
    (args.output / f"{stem}.md").write_text("\n".join(out), encoding="utf-8")
    (args.output / f"{stem}.json").write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    plot(means[seeds[0]], args.output / f"{stem}.png")
    if final:
        print("\n".join(out))


if __name__ == "__main__":
    sys.exit(main())
