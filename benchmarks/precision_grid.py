"""Quality at every (dimension, precision), with post-hoc output-space variants, over training seeds (issue 21).

Each model encodes the two dev sets and the fit texts once, at full size (cached under ``benchmarks/.cache/emb``).
Variants are applied to those vectors, exactly as the model module would apply them:

- ``+pca``: a PCA rotation (:func:`matryoshka_st.posthoc.pca.fit_pca_rotation`, as ``matryoshka-st adapt`` and
  the default recipe's rotation after training);
- ``+itq`` / ``+hadamard``: :func:`matryoshka_st.posthoc.shell_rotation.fit_shell_rotation` inside the shells of
  the trained dims, fitted on the fit texts (the first ``--fit-texts`` anchors of the training file, as
  ``matryoshka-st train`` fits its PCA rotations).

Precisions, scored per query by pytrec_eval's nDCG@10 (as mteb):

- ``float32``; ``int8`` (sentence-transformers' per-axis ranges, calibrated on the task's queries and documents:
  what ``matryoshka-st eval`` does for a model without saved scales); ``int8-shell``
  (:class:`matryoshka_st.quantization.Int8Calibration` fitted on the fit texts, one scale per shell, dequantised
  dot products); ``binary`` (Hamming); ``binary+rescore`` (Hamming shortlist of 40, rescored with the float query,
  :func:`matryoshka_st.quantization.rescore_binary`); ``binary-median`` (+``rescore``): the bits taken against each
  axis' median on the fit texts instead of 0 (every bit set for half the texts), a probe for "centring before the
  sign" (the rescore then uses the centred float query); ``binary-weighted``: Hamming distance per shell, each
  shell weighted by its mean ``|x|^2`` on the fit texts (a popcount per shell), a probe for "bits on low-variance
  tail axes count as much as the leading ones"; ``binary-rot`` (+``rescore``): the signs of the prefix after a random
  rotation of the *whole* prefix (one per dim; float scores at that dim unchanged), the codes of a random-hyperplane
  hash; ``binary-itq`` (+``rescore``): the same with an ITQ rotation of the whole prefix learned on the fit texts
  (Gong & Lazebnik, 2011) instead of a random one; ``binary-auto`` (+``rescore``): :class:`matryoshka_st.quantization.BinaryCalibration` fitted on the fit
  texts, which picks per dim between the axes' own signs and the rotated ones (what ``train`` saves);
  ``binary-auto+int8-rescore``: its Hamming shortlist of 40 rescored with the float query against the documents'
  ``int8-shell`` codes instead of their sign bits, by their cosine (``rescore_binary(rescore_with=...)``, as the
  harness's ``binary+int8-rescore``; a binary index in RAM, int8 codes read for the shortlist only).

Differences are paired bootstraps over queries (2,000 resamples) of the per-query scores averaged over seeds.

    python benchmarks/precision_grid.py --data ../shared/data --train-file benchmarks/.cache/cli_pairs_9600.jsonl \\
        --seeds 42 43 --model base=bundled \\
        --model reference=benchmarks/.cache/models/cli-reference-s{seed}/final \\
        --model default=benchmarks/.cache/models/cli-pca-share-kl-s{seed}/final \\
        --variants default+itq default+hadamard reference+itq base+itq --out benchmarks/results/precision_grid
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from _common import load_task, ndcg_at_10_from_scores  # noqa: E402  (the script's own folder is on sys.path)

from matryoshka_st._bundled import bundled_model_path  # noqa: E402
from matryoshka_st.dims import truncate_numpy  # noqa: E402
from matryoshka_st.posthoc.pca import fit_pca_rotation  # noqa: E402
from matryoshka_st.posthoc.shell_rotation import fit_shell_rotation  # noqa: E402
from matryoshka_st.quantization import (  # noqa: E402
    RESCORE_K,
    BinaryCalibration,
    Int8Calibration,
    binary_codes,
    int8_per_axis,
    prefix_rotation,
    rescore_binary,
    shells,
)
from matryoshka_st.readers import iter_jsonl  # noqa: E402

logger = logging.getLogger("precision_grid")
TASKS = ("debian_descriptions", "wordnet_examples")
DIMS = (384, 256, 128, 64, 32)
PRECISIONS = (
    "float32",
    "int8",
    "int8-shell",
    "binary",
    "binary+rescore",
    "binary-median",
    "binary-median+rescore",
    "binary-weighted",
    "binary-rot",
    "binary-rot+rescore",
    "binary-itq",
    "binary-itq+rescore",
    "binary-auto",
    "binary-auto+rescore",
    "binary-auto+int8-rescore",
)
CACHE = Path(__file__).resolve().parent / ".cache" / "emb"


def encode_cached(path: str, key: str, texts: list[str]) -> np.ndarray:
    """Full-size unit embeddings of ``texts`` by the model at ``path``, cached by model weights and texts."""
    weights = Path(path) / "model.safetensors"
    stamp = f"{Path(path).resolve()}:{weights.stat().st_mtime_ns if weights.exists() else 0}:{len(texts)}"
    stamp += hashlib.sha1("\n".join(texts).encode()).hexdigest()
    file = CACHE / f"{key}-{hashlib.sha1(stamp.encode()).hexdigest()[:16]}.npy"
    if file.is_file():
        return np.load(file)
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(path, device="cpu")
    embeddings = model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(file, embeddings.astype(np.float32))
    return embeddings.astype(np.float32)


def pair_rows(train_file: Path, n: int) -> tuple[list[str], list[str]]:
    """The first ``n`` (anchor, positive) pairs of the training file, as ``train`` takes them for the binary codes."""
    rows = [row for _, row in iter_jsonl(train_file)][:n]
    return [row["anchor"] for row in rows], [row["positive"] for row in rows]


def fit_texts(train_file: Path, n: int) -> list[str]:
    texts = [row["anchor"] for _, row in iter_jsonl(train_file)]
    return list(dict.fromkeys(texts[:n]))


_BINARY: dict[int, BinaryCalibration] = {}


PAIRS: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # the current model's (anchors, positives) embeddings


def binary_calibration(fit: np.ndarray) -> BinaryCalibration:
    """:class:`BinaryCalibration` fitted on ``fit`` and the training pairs, as ``train`` fits it (once per fit set)."""
    key = id(fit)
    if key not in _BINARY:
        _BINARY.clear()
        _BINARY[key] = BinaryCalibration.fit(fit, DIMS, pairs=PAIRS.get("current"))
        logger.info("binary codes rotated at %s; recall %s", sorted(_BINARY[key].rotations), _BINARY[key].recall)
    return _BINARY[key]


_ITQ: dict[tuple, np.ndarray] = {}


def whole_prefix_itq(fit: np.ndarray, dim: int) -> np.ndarray:
    """ITQ (one block: the whole ``dim``-prefix, so float scores at ``dim`` are unchanged) fitted on the renormalised
    prefixes of the fit texts, once per fit set and dim."""
    key = (hashlib.sha1(np.ascontiguousarray(fit[:64]).tobytes()).hexdigest(), fit.shape, dim)  # not id(): reused
    if key not in _ITQ:
        _ITQ[key] = fit_shell_rotation(truncate_numpy(fit, dim), [dim], method="itq", seed=0).astype(np.float32)
    return _ITQ[key]


def scores_at(
    precision: str, queries: np.ndarray, docs: np.ndarray, dim: int, calibration: Int8Calibration, fit: np.ndarray
) -> np.ndarray:
    """``(Q, D)`` scores at one dim and precision of full-size query and document embeddings
    (``binary-auto+rescore@K``: the saved codes rescored on a Hamming shortlist of ``K`` instead of 40)."""
    q, d = truncate_numpy(queries, dim), truncate_numpy(docs, dim)
    precision, _, shortlist = precision.partition("@")
    if precision.startswith("binary-auto"):  # what `train` saves: BinaryCalibration fitted on the fit texts
        calibration_b = binary_calibration(fit)
        codes_d = calibration_b.codes(d, dim)
        if precision.endswith("+int8-rescore"):  # the Hamming shortlist of 40, rescored against int8-shell codes
            int8_d = calibration.dequantize(calibration.quantize(d, dim), dim)
            return rescore_binary(calibration_b.rotate(q, dim), codes_d, rescore_with=(q, int8_d))
        if precision.endswith("+rescore"):
            return rescore_binary(calibration_b.rotate(q, dim), codes_d, k=int(shortlist or RESCORE_K))
        return calibration_b.codes(q, dim) @ codes_d.T
    if precision.startswith("binary-itq"):  # an ITQ rotation of the whole dim-prefix, learned on the fit texts
        rotation = whole_prefix_itq(fit, dim)
        codes_d = binary_codes(d @ rotation.T)
        if precision.endswith("+rescore"):
            return rescore_binary(q @ rotation.T, codes_d)
        return binary_codes(q @ rotation.T) @ codes_d.T
    if precision.startswith("binary-rot"):  # a random rotation of the whole dim-prefix before the signs
        rotation = prefix_rotation(dim)
        codes_d = binary_codes(d @ rotation.T)
        if precision.endswith("+rescore"):
            return rescore_binary(q @ rotation.T, codes_d)
        return binary_codes(q @ rotation.T) @ codes_d.T
    if precision.startswith("binary-weighted"):  # Hamming per shell, weighted by the shell's mean |x|^2
        prefix_fit = np.abs(truncate_numpy(fit, dim))
        weights = np.empty(dim, dtype=np.float32)
        for start, end in shells(DIMS, dim):
            weights[start:end] = prefix_fit[:, start:end].mean()
        codes_d = binary_codes(d) * weights
        if precision.endswith("+rescore"):
            return rescore_binary(q, binary_codes(d))
        return binary_codes(q) * weights @ codes_d.T
    if precision.startswith("binary-median"):  # sign bits against each axis' median on the fit texts: balanced
        median = np.median(truncate_numpy(fit, dim), axis=0)
        codes_q, codes_d = binary_codes(q - median), binary_codes(d - median)
        if precision.endswith("+rescore"):
            return rescore_binary(q - median, codes_d)  # the centred float query against the stored codes
        return codes_q @ codes_d.T
    if precision == "float32":
        return q @ d.T
    if precision == "int8":
        both = np.concatenate([q, d])
        cq, cd = int8_per_axis(q, both), int8_per_axis(d, both)
        return (cq / np.linalg.norm(cq, axis=1, keepdims=True)) @ (cd / np.linalg.norm(cd, axis=1, keepdims=True)).T
    if precision == "int8-shell":
        return (
            calibration.dequantize(calibration.quantize(q, dim), dim)
            @ calibration.dequantize(calibration.quantize(d, dim), dim).T
        )
    if precision == "binary":
        return binary_codes(q) @ binary_codes(d).T
    if precision == "binary+rescore":
        return rescore_binary(q, binary_codes(d))
    raise ValueError(precision)


def bootstrap(diff: np.ndarray, rng: np.random.Generator, n: int = 2000) -> tuple[float, float]:
    means = diff[rng.integers(0, len(diff), size=(n, len(diff)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--train-file", type=Path, default=Path("benchmarks/.cache/cli_pairs_9600.jsonl"))
    parser.add_argument("--fit-texts", type=int, default=5000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43])
    parser.add_argument("--model", action="append", required=True, help="LABEL=PATH ({seed} is replaced); bundled")
    parser.add_argument(
        "--variants", nargs="*", default=[], help="LABEL+STEP[+STEP...], steps pca, itq, hadamard (e.g. base+pca+itq)"
    )
    parser.add_argument("--dims", type=int, nargs="+", default=list(DIMS))
    parser.add_argument(
        "--rescore-k",
        type=int,
        nargs="*",
        default=[],
        help="more shortlist lengths for the saved codes' rescoring: adds precisions binary-auto+rescore@K",
    )
    parser.add_argument("--compare", nargs="*", default=[], help="more paired differences, A:B (model or variant)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/precision_grid"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    precisions = PRECISIONS + tuple(f"binary-auto+rescore@{k}" for k in args.rescore_k)
    models = dict(spec.split("=", 1) for spec in args.model)
    tasks = {name: load_task(args.data / "dev" / name) for name in TASKS}
    texts = fit_texts(args.train_file, args.fit_texts)
    names = list(models) + list(args.variants)
    dims = sorted(args.dims, reverse=True)
    # per_query[name][task][precision][dim] = (seeds, Q)
    per_query: dict[str, dict[str, dict[str, dict[int, list[np.ndarray]]]]] = {}
    for seed in args.seeds:
        for label, template in models.items():
            path = bundled_model_path() if template == "bundled" else template.format(seed=seed)
            fit = encode_cached(path, f"{label}-s{seed}-fit", texts)
            anchors, positives = pair_rows(args.train_file, 1000)
            PAIRS["current"] = (
                encode_cached(path, f"{label}-s{seed}-pair-a", anchors),
                encode_cached(path, f"{label}-s{seed}-pair-p", positives),
            )
            encoded = {
                task: (
                    encode_cached(path, f"{label}-s{seed}-{task}-q", t[1]),
                    encode_cached(path, f"{label}-s{seed}-{task}-d", t[3]),
                )
                for task, t in tasks.items()
            }
            for name in [label] + [v for v in args.variants if v.split("+")[0] == label]:
                rotation = np.eye(fit.shape[1], dtype=np.float32)
                for step in name.split("+")[1:]:  # each fitted on the fit texts as the steps before left them
                    if step == "pca":
                        rotation = fit_pca_rotation(fit @ rotation.T) @ rotation
                    else:
                        rotation = fit_shell_rotation(fit @ rotation.T, dims, method=step, seed=seed) @ rotation
                rotate = lambda x, r=rotation: x @ r.T  # noqa: E731
                fitted = rotate(fit)
                calibration = Int8Calibration.fit(fitted, dims)
                for task, (query_ids, _, doc_ids, _, qrels) in tasks.items():
                    q, d = (rotate(x) for x in encoded[task])
                    for precision in precisions:
                        for dim in dims:
                            values = ndcg_at_10_from_scores(
                                scores_at(precision, q, d, dim, calibration, fitted), query_ids, doc_ids, qrels
                            )
                            per_query.setdefault(name, {}).setdefault(task, {}).setdefault(precision, {}).setdefault(
                                dim, []
                            ).append(values)
                logger.info("seed %d %s done", seed, name)

    mean_q = {
        n: {
            t: {p: {d: np.mean(v, axis=0) for d, v in by_d.items()} for p, by_d in by_p.items()}
            for t, by_p in by_t.items()
        }
        for n, by_t in per_query.items()
    }
    rng = np.random.default_rng(0)
    lines = [
        "# Quality at every (dimension, precision)",
        "",
        f"nDCG@10, mean over seeds {args.seeds}; share = of the same model's float32 at that dim. "
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores.",
    ]
    summary: dict[str, object] = {"seeds": args.seeds, "models": models, "variants": args.variants, "scores": {}}
    for task in TASKS:
        lines += [
            "",
            f"## {task}",
            "",
            "| model | precision | " + " | ".join(str(d) for d in dims) + " |",
            "| --- | --- |" + " ---: |" * len(dims),
        ]
        for name in names:
            for precision in precisions:
                cells = []
                for dim in dims:
                    score = float(mean_q[name][task][precision][dim].mean())
                    share = score / float(mean_q[name][task]["float32"][dim].mean())
                    cells.append(f"{score:.3f}" + ("" if precision == "float32" else f" ({share:.0%})"))
                    summary["scores"].setdefault(name, {}).setdefault(task, {}).setdefault(precision, {})[dim] = score
                lines.append(f"| {name} | {precision} | " + " | ".join(cells) + " |")
    lines += ["", "## Paired differences (points of nDCG@10, 95% bootstrap interval over queries)", ""]
    parent = {v: v.rsplit("+", 1)[0] if v.rsplit("+", 1)[0] in names else v.split("+")[0] for v in args.variants}
    pairs = (
        [(v, parent[v]) for v in args.variants]
        + [(a, b) for a, b in (("default", "reference"), ("default+itq", "reference")) if a in names and b in names]
        + [tuple(pair.split(":", 1)) for pair in args.compare]
    )

    def difference_table(title: str, rows: list[tuple[str, dict[int, np.ndarray], dict[int, np.ndarray]]]) -> None:
        """A table of paired differences ``x - y`` per dim with their bootstrap intervals, one row per (label, x, y)."""
        lines.extend(
            ["", title, "", "| | " + " | ".join(str(d) for d in dims) + " |", "| --- |" + " ---: |" * len(dims)]
        )
        for label, x, y in rows:
            cells = []
            for dim in dims:
                diff = x[dim] - y[dim]
                low, high = bootstrap(diff, rng)
                cells.append(f"{100 * diff.mean():+.2f} [{100 * low:+.2f}, {100 * high:+.2f}]")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")

    for a, b in pairs:
        for task in TASKS:
            difference_table(
                f"### {a} - {b}, {task}",
                [(p, mean_q[a][task][p], mean_q[b][task][p]) for p in precisions],
            )
    lines += ["", "## Same model, other codes (points of nDCG@10, 95% bootstrap interval over queries)", ""]
    codes = (("int8-shell", "int8"), ("binary-auto", "binary"), ("binary-auto+rescore", "binary+rescore"))
    for name in names:
        for task in TASKS:
            by_p = mean_q[name][task]
            difference_table(f"### {name}, {task}", [(f"{a} - {b}", by_p[a], by_p[b]) for a, b in codes])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
