"""How much does the Matryoshka adapter add to a training step, per inner loss and device?

Median step time (forward + backward) of each inner loss on its own (plain), inside sentence-transformers' own
MatryoshkaLoss (the reference), inside ours, and inside ours with the default recipe's loss terms (self-distillation,
the full dim's share); for MNRL also a naive adapter that re-encodes the batch once per dim. Inner losses: MNRL,
CachedMNRL and CoSENT (random scores as labels), and with ``--gist`` GISTEmbedLoss and CachedGISTEmbedLoss guided by
a frozen copy of the model (the guide's forward pass is in every GIST variant alike). Variants are interleaved (one step of each, in a rotating order, per
round) on the same batches, so machine noise hits them alike; ratios are to the plain inner loss, per round and
paired. Every device runs in the same invocation and the table puts them side by side: the CPU in float32 and, where
one is available, the GPU under bf16 autocast.

    python benchmarks/loss_overhead.py                    # bundled all-MiniLM-L6-v2, batch 32: CPU (+ GPU bf16)
    python benchmarks/loss_overhead.py --device cuda --bf16 --batch-size 64 --rounds 50
    python benchmarks/loss_overhead.py --gist            # GISTEmbedLoss rows too
    python benchmarks/loss_overhead.py --only MNRL --rounds 40   # the CPU target alone, more rounds
    python benchmarks/loss_overhead.py --encoder embeddings --gist --shells-off --batch-size 64 --rounds 40

``--encoder embeddings`` removes the transformer's layers and freezes its word embeddings (the rest of its embeddings
and the pooling stay: the same width and tokenizer, and every inner loss still works), so a step is almost all loss work: what the adapter does per dim, and
what the shell similarities save (``--shells-off`` adds ours as before them: the inner loss's similarities computed at
every dim on their own, GradCache losses dim by dim), shows instead of drowning in the encoder's time.

Targets (issue 23): on a GPU in bf16, ours/plain <= 1.03, the default recipe <= 1.05, with CachedMNRL <= 1.10; on
the CPU the default recipe <= 1.02.
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
from matryoshka_st.recipes import DEFAULT_RECIPE, get_recipe

DIMS = [384, 256, 128, 64, 32]


class WithoutShellsMatryoshkaLoss(MatryoshkaLoss):
    """Ours as before the shells: the inner loss's similarities computed at every dim on their own, and GradCache
    losses run dim by dim through their own chunked backward (the distillation term keeps its shell computation)."""

    one_graph_max_bytes = 0

    @contextlib.contextmanager
    def _shells(self, active):
        yield None


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


# the default recipe's loss-side settings: what it adds to a step (its PCA start adds one 384x384 Dense layer)
RECIPE = get_recipe(DEFAULT_RECIPE).loss_kwargs()
INNER = {
    "MNRL": lambda model, args: st_losses.MultipleNegativesRankingLoss(model),
    "CachedMNRL": lambda model, args: st_losses.CachedMultipleNegativesRankingLoss(
        model, mini_batch_size=args.mini_batch_size
    ),
    "CoSENT": lambda model, args: st_losses.CoSENTLoss(model),
}
KINDS = (
    "plain",
    "reference",
    "ours",
    "ours before shells (per-dim similarities, GradCache dim by dim)",
    "ours + default recipe terms",
    "naive re-encode per dim",
)


def make_variants(model: SentenceTransformer, args: argparse.Namespace) -> dict[tuple[str, str], nn.Module]:
    factories = dict(INNER)
    if args.gist:
        guide = load_model(args, model.device).eval().requires_grad_(False)
        factories["GIST"] = lambda model, args: st_losses.GISTEmbedLoss(model, guide)
        factories["CachedGIST"] = lambda model, args: st_losses.CachedGISTEmbedLoss(
            model, guide, mini_batch_size=args.mini_batch_size
        )
    if args.only:
        factories = {name: factory for name, factory in factories.items() if name in args.only}
    variants = {}
    for name, factory in factories.items():
        variants[name, "plain"] = factory(model, args)
        variants[name, "reference"] = st_losses.MatryoshkaLoss(model, factory(model, args), DIMS)
        variants[name, "ours"] = MatryoshkaLoss(model, factory(model, args), DIMS)
        if args.shells_off:
            variants[name, "ours before shells (per-dim similarities, GradCache dim by dim)"] = (
                WithoutShellsMatryoshkaLoss(model, factory(model, args), DIMS)
            )
        variants[name, "ours + default recipe terms"] = MatryoshkaLoss(model, factory(model, args), DIMS, **RECIPE)
    if args.naive:
        variants["MNRL", "naive re-encode per dim"] = NaiveMatryoshkaLoss(model, INNER["MNRL"](model, args), DIMS)
    return variants


def step(loss: nn.Module, batch: list[dict], labels, device: str, bf16: bool) -> float:
    autocast = torch.autocast(device_type=device, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with autocast:
        value = loss([dict(f) for f in batch], labels)
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


def load_model(args: argparse.Namespace, device: str) -> SentenceTransformer:
    """The model; with ``--encoder embeddings`` its transformer has no layers left (token embeddings, pooling) and the
    word embeddings are frozen (their dense gradient, vocabulary x width, would be most of such a step)."""
    model = SentenceTransformer(args.model or bundled_model_path(), device=device)
    model.max_seq_length = args.max_seq_length
    if args.encoder == "embeddings":
        transformer = model[0].auto_model
        transformer.encoder.layer = nn.ModuleList()
        transformer.get_input_embeddings().requires_grad_(False)
    return model


def measure(args: argparse.Namespace, device: str, bf16: bool) -> dict:
    """Per-round times of every variant on one device: ``{"medians", "paired", "adapter_ms", "label"}``."""
    model = load_model(args, device)
    model.train()
    batches = load_batches(model, args.batch_size, args.rounds + args.warmup, device)
    variants = make_variants(model, args)
    names = list(variants)
    times: dict[tuple[str, str], list[float]] = {name: [] for name in names}
    for round_index, batch in enumerate(batches):
        scores = torch.rand(args.batch_size, generator=torch.Generator().manual_seed(round_index)).to(device)
        shift = round_index % len(names)  # rotate the order so no variant always runs first
        for name in names[shift:] + names[:shift]:
            torch.manual_seed(round_index)
            labels = scores if name[0] == "CoSENT" else None
            elapsed = step(variants[name], batch, labels, device, bf16)
            model.zero_grad(set_to_none=True)
            if round_index >= args.warmup:
                times[name].append(elapsed)
    medians = {name: statistics.median(values) for name, values in times.items()}
    # the same batch in the same round: pairing cancels most of the machine's drift between rounds
    paired = {name: statistics.median(t / b for t, b in zip(times[name], times[name[0], "plain"])) for name in names}
    label = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu"
    adapter = adapter_cost(model, args.batch_size, device)
    return {
        "medians": medians,
        "paired": paired,
        "adapter": adapter / medians["MNRL", "plain"],
        "label": f"{device} {'bf16' if bf16 else 'fp32'}",
        "machine": label,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model path or id (default: the bundled all-MiniLM-L6-v2)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--mini-batch-size", type=int, default=8, help="for the Cached losses")
    parser.add_argument("--rounds", type=int, default=12, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--device",
        action="append",
        default=None,
        help="a device to measure (repeatable); default: the CPU, and the GPU if there is one",
    )
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast on the CPU too (the GPU always uses it)")
    parser.add_argument("--naive", action="store_true", help="add the naive re-encode-per-dim variant (5x slower)")
    parser.add_argument("--gist", action="store_true", help="add GISTEmbedLoss (guide: a frozen copy of the model)")
    parser.add_argument(
        "--encoder",
        choices=("transformer", "embeddings"),
        default="transformer",
        help="embeddings: the transformer without its layers (token embeddings + pooling), so a step is loss work",
    )
    parser.add_argument(
        "--shells-off",
        action="store_true",
        help="add ours as before the shells (every dim's similarities on their own)",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=("MNRL", "CachedMNRL", "CoSENT", "GIST", "CachedGIST"),
        help="measure only this inner loss (repeatable; MNRL is always measured: the adapter's cost is relative to it)",
    )
    parser.add_argument("--no-naive", action="store_true", help=argparse.SUPPRESS)  # the default now; kept for scripts
    args = parser.parse_args()
    if args.only and "MNRL" not in args.only:
        args.only.append("MNRL")
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    runs = [measure(args, device, device == "cuda" or args.bf16) for device in devices]

    print(
        f"# loss_overhead: {', '.join(run['label'] + ' = ' + run['machine'] for run in runs)}; "
        f"{torch.get_num_threads()} CPU threads, batch {args.batch_size}, max_seq_length {args.max_seq_length}, "
        f"dims {DIMS}, {args.rounds} interleaved rounds, default recipe {DEFAULT_RECIPE!r} terms {RECIPE}, "
        f"encoder {args.encoder}"
    )
    print(
        f"# python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"sentence-transformers {sentence_transformers.__version__}, matryoshka_st {matryoshka_st.__version__}"
    )
    columns = [f"{run['label']}: median s, ratio, paired" for run in runs]
    print("| inner loss | variant | " + " | ".join(columns) + " |")
    print("| --- | --- | " + " | ".join("---:" for _ in runs) + " |")
    inners = list(dict.fromkeys(inner for inner, _ in runs[0]["medians"]))
    for inner in inners:
        for kind in KINDS:
            if (inner, kind) not in runs[0]["medians"]:
                continue
            cells = []
            for run in runs:
                median, base = run["medians"][inner, kind], run["medians"][inner, "plain"]
                cells.append(f"{median:.3f}, {median / base:.3f}, {run['paired'][inner, kind]:.3f}")
            print(f"| {inner} | {kind} | " + " | ".join(cells) + " |")
    print()
    for run in runs:
        print(
            f"{run['label']}: adapter's own work per step (truncate + renormalise + MNRL at {len(DIMS)} dims on fixed "
            f"embeddings, forward + backward) = {run['adapter']:.2%} of a plain MNRL step"
        )
    print()
    for run in runs:
        ratio = {key: run["medians"][key] / run["medians"][key[0], "plain"] for key in run["medians"]}
        gpu = run["label"].startswith("cuda")
        if args.encoder == "embeddings":
            print(f"{run['label']}: no transformer layers: the ratios are loss work, not the issue's step targets")
            for inner in inners:
                kinds = [kind for kind in KINDS[1:] if (inner, kind) in ratio]
                print(f"{run['label']}: {inner}: " + ", ".join(f"{kind} {ratio[inner, kind]:.3f}" for kind in kinds))
            continue
        checks = (
            [
                ("ours/plain (MNRL)", ("MNRL", "ours"), 1.03),
                ("default recipe/plain (MNRL)", ("MNRL", "ours + default recipe terms"), 1.05),
                ("ours/plain (CachedMNRL)", ("CachedMNRL", "ours"), 1.10),
            ]
            if gpu
            else [("default recipe/plain (MNRL)", ("MNRL", "ours + default recipe terms"), 1.02)]
        )
        for name, key, target in checks:
            if key not in ratio:  # left out with --only
                continue
            value = ratio[key]
            verdict = "met" if value <= target else "MISSED"
            # the paired statistic (each round's ratio on the same batch) beside it: it cancels the machine's drift
            print(
                f"{run['label']}: {name} = {value:.3f} (target <= {target}): {verdict}; "
                f"paired {run['paired'][key]:.3f}"
            )
        for inner in inners:
            print(
                f"{run['label']}: {inner}: ours/plain {ratio[inner, 'ours']:.3f}, reference/plain "
                f"{ratio[inner, 'reference']:.3f}, default recipe/plain {ratio[inner, 'ours + default recipe terms']:.3f}"
            )


if __name__ == "__main__":
    main()
