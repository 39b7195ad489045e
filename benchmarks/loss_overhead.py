"""How much does the Matryoshka adapter add to a training step?

Median step time (forward + backward) of plain MultipleNegativesRankingLoss, sentence-transformers' own
MatryoshkaLoss around it (the reference), ours, and a naive adapter that re-encodes the batch once per dimension;
then the same for CachedMultipleNegativesRankingLoss. Variants are interleaved (one step of each, in a rotating order,
per round) on the same batches, so machine noise hits them alike. Ratios are to the plain loss.

    python benchmarks/loss_overhead.py                    # bundled all-MiniLM-L6-v2, batch 32, CPU
    python benchmarks/loss_overhead.py --device cuda --bf16 --rounds 50

Targets: ours/plain <= 1.03 and <= reference/plain + 0.01; ours(Cached)/Cached <= 1.05.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import platform
import statistics
import time

import sentence_transformers
import torch
import transformers
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer import losses as st_losses
from sentence_transformers.util import batch_to_device
from torch import nn

import matryoshka_st
from matryoshka_st import MatryoshkaLoss
from matryoshka_st._bundled import SAMPLE_PAIRS, bundled_model_path
from matryoshka_st.dims import truncate

DIMS = [384, 256, 128, 64, 32]


class NaiveMatryoshkaLoss(nn.Module):
    """What one writes without caching: encode the batch again for every dimension."""

    def __init__(self, model: SentenceTransformer, loss: nn.Module, dims: list[int]) -> None:
        super().__init__()
        self.model, self.loss, self.dims = model, loss, dims

    def forward(self, sentence_features, labels):
        total = 0.0
        for dim in self.dims:
            embeddings = [truncate(self.model(dict(f))["sentence_embedding"], dim) for f in sentence_features]
            total = total + self.loss.compute_loss_from_embeddings(embeddings, labels)
        return total


def load_batches(model: SentenceTransformer, batch_size: int, count: int, device: str) -> list[list[dict]]:
    with gzip.open(SAMPLE_PAIRS, "rt", encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    batches = []
    for i in range(count):
        chunk = rows[i * batch_size : (i + 1) * batch_size]
        columns = [[row["anchor"] for row in chunk], [row["positive"] for row in chunk]]
        batches.append([batch_to_device(model.preprocess(c), device) for c in columns])
    return batches


# the loss-side settings of the recipe (issue 14): what it adds to a step; a PCA start adds one 384x384 Dense layer
RECIPE = dict(distill_weight=1.0, distill_temperature=1.0, full_dim_share=0.4)


def make_variants(model: SentenceTransformer, mini_batch_size: int) -> dict[str, nn.Module]:
    mnrl = st_losses.MultipleNegativesRankingLoss
    cached = st_losses.CachedMultipleNegativesRankingLoss
    return {
        "MNRL (plain)": mnrl(model),
        "reference MatryoshkaLoss(MNRL)": st_losses.MatryoshkaLoss(model, mnrl(model), DIMS),
        "ours MatryoshkaLoss(MNRL)": MatryoshkaLoss(model, mnrl(model), DIMS),
        "ours + self-distillation (MNRL)": MatryoshkaLoss(model, mnrl(model), DIMS, **RECIPE),
        "naive re-encode per dim (MNRL)": NaiveMatryoshkaLoss(model, mnrl(model), DIMS),
        "CachedMNRL (plain)": cached(model, mini_batch_size=mini_batch_size),
        "reference MatryoshkaLoss(CachedMNRL)": st_losses.MatryoshkaLoss(
            model, cached(model, mini_batch_size=mini_batch_size), DIMS
        ),
        "ours MatryoshkaLoss(CachedMNRL)": MatryoshkaLoss(model, cached(model, mini_batch_size=mini_batch_size), DIMS),
        "ours + self-distillation (CachedMNRL)": MatryoshkaLoss(
            model, cached(model, mini_batch_size=mini_batch_size), DIMS, **RECIPE
        ),
    }


def step(loss: nn.Module, batch: list[dict], device: str, bf16: bool) -> float:
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with autocast:
        value = loss([dict(f) for f in batch], None)
        if isinstance(value, dict):
            value = torch.stack(list(value.values())).sum()
    value.backward()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def adapter_cost(model: SentenceTransformer, batch_size: int, device: str, repeats: int = 50) -> float:
    """Seconds per step of what the adapter adds on top of one encoder pass, measured without the encoder, so it is
    not drowned in the encoder's step-to-step noise."""
    inner = st_losses.MultipleNegativesRankingLoss(model)
    dim = DIMS[0]
    anchors = torch.randn(batch_size, dim, device=device, requires_grad=True)
    positives = torch.randn(batch_size, dim, device=device, requires_grad=True)

    def run(dims: list[int]) -> float:
        start = time.perf_counter()
        for _ in range(repeats):
            total = sum(
                inner.compute_loss_from_embeddings([truncate(anchors, d), truncate(positives, d)], None) for d in dims
            )
            total.backward()
        if device == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / repeats

    run(DIMS)  # warm-up
    return max(run(DIMS) - run(DIMS[:1]), 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model path or id (default: the bundled all-MiniLM-L6-v2)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--mini-batch-size", type=int, default=8, help="for the Cached losses")
    parser.add_argument("--rounds", type=int, default=12, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument(
        "--no-naive", action="store_true", help="skip the naive variant (5x slower) to fit more rounds"
    )
    args = parser.parse_args()

    model = SentenceTransformer(args.model or bundled_model_path(), device=args.device)
    model.max_seq_length = args.max_seq_length
    model.train()
    batches = load_batches(model, args.batch_size, args.rounds + args.warmup, args.device)
    variants = make_variants(model, args.mini_batch_size)
    if args.no_naive:
        variants.pop("naive re-encode per dim (MNRL)")
    names = list(variants)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_index, batch in enumerate(batches):
        shift = round_index % len(names)  # rotate the order so no variant always runs first
        for name in names[shift:] + names[:shift]:
            torch.manual_seed(round_index)
            elapsed = step(variants[name], batch, args.device, args.bf16)
            model.zero_grad(set_to_none=True)
            if round_index >= args.warmup:
                times[name].append(elapsed)

    medians = {name: statistics.median(values) for name, values in times.items()}
    plain, cached_plain = medians["MNRL (plain)"], medians["CachedMNRL (plain)"]
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu"
    print(
        f"# loss_overhead: {device_name}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
        f"max_seq_length {args.max_seq_length}, dims {DIMS}, {'bf16' if args.bf16 else 'fp32'}, "
        f"{args.rounds} interleaved rounds"
    )
    print(
        f"# python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"sentence-transformers {sentence_transformers.__version__}, matryoshka_st {matryoshka_st.__version__}"
    )
    print(f"| {'variant':<38} | median step (s) | ratio to plain | ratio of per-round times, median |")
    print(f"|{'-' * 40}|-----------------|----------------|----------------------------------|")
    for name in names:
        base_name = "CachedMNRL (plain)" if "Cached" in name else "MNRL (plain)"
        base = cached_plain if "Cached" in name else plain
        # the same batch in the same round: pairing cancels most of the machine's drift between rounds
        paired = statistics.median(t / b for t, b in zip(times[name], times[base_name]))
        print(f"| {name:<38} | {medians[name]:>15.3f} | {medians[name] / base:>14.3f} | {paired:>32.3f} |")
    ours, reference = medians["ours MatryoshkaLoss(MNRL)"] / plain, medians["reference MatryoshkaLoss(MNRL)"] / plain
    ours_cached = medians["ours MatryoshkaLoss(CachedMNRL)"] / cached_plain
    adapter = adapter_cost(model, args.batch_size, args.device)
    print()
    print(
        f"adapter's own work per step (truncate + renormalise + inner loss at {len(DIMS)} dims on fixed embeddings, "
        f"forward + backward): {adapter * 1000:.1f} ms = {adapter / plain:.2%} of a plain step"
    )
    print()
    print(f"ours/plain = {ours:.3f} (target <= 1.03): {'met' if ours <= 1.03 else 'MISSED'}")
    print(
        f"ours/plain <= reference/plain + 0.01 = {reference + 0.01:.3f}: "
        f"{'met' if ours <= reference + 0.01 else 'MISSED'}"
    )
    print(f"ours(Cached)/Cached = {ours_cached:.3f} (target <= 1.05): {'met' if ours_cached <= 1.05 else 'MISSED'}")
    for loss, reference_name in (
        ("MNRL", "reference MatryoshkaLoss(MNRL)"),
        ("CachedMNRL", "reference MatryoshkaLoss(CachedMNRL)"),
    ):
        recipe = medians[f"ours + self-distillation ({loss})"] / medians[reference_name]
        print(f"recipe/reference ({loss}) = {recipe:.3f} (target <= 1.10): {'met' if recipe <= 1.10 else 'MISSED'}")


if __name__ == "__main__":
    main()
