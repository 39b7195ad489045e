"""How many device operations does a training step launch, per inner loss and variant?

On a GPU a Matryoshka step at batch 64 is bound by the launches of small kernels more than by arithmetic (issue 23:
about 9 ms of per-dim work against a 45 ms bf16 step on an H200, for a few megaflops). The operations a step
dispatches are the same on every device, so they can be counted on the CPU: every aten operation that reaches a
backend, forward and backward, seen by a ``TorchDispatchMode``. Views and ``empty`` allocations (no kernel) are left
out; one counted operation is about one kernel launch on a GPU (some launch two, fused ones none).

The variants are ``loss_overhead.py``'s (plain inner loss, sentence-transformers' MatryoshkaLoss, ours, ours as before
the shells, ours with the default recipe's terms), on one batch of the bundled pairs, in float32 (autocast adds casts
on top of every variant alike).

    python benchmarks/loss_launches.py --gist --shells-off              # bundled all-MiniLM-L6-v2, batch 16
"""

from __future__ import annotations

import argparse
import collections

import torch
from loss_overhead import DIMS, KINDS, load_batches, load_model, make_variants
from torch.utils._python_dispatch import TorchDispatchMode

_NO_KERNEL = {"aten.empty.memory_format", "aten.empty_strided.default", "aten.empty_like.default"}


class CountOperations(TorchDispatchMode):
    """Counts the operations dispatched in its block, by name, views and allocations left out."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if not func.is_view and name not in _NO_KERNEL:
            self.counts[name] += 1
        return func(*args, **(kwargs or {}))


def count_step(loss: torch.nn.Module, batch: list[dict], labels) -> collections.Counter[str]:
    """The operations of one forward and backward of ``loss`` on ``batch``."""
    with CountOperations() as counter:
        value = loss([dict(f) for f in batch], labels)
        if isinstance(value, dict):
            value = torch.stack(list(value.values())).sum()
        value.backward()
    return counter.counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model path or id (default: the bundled all-MiniLM-L6-v2)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-seq-length", type=int, default=64)
    parser.add_argument("--mini-batch-size", type=int, default=8, help="for the Cached losses")
    parser.add_argument("--gist", action="store_true", help="add GISTEmbedLoss (guide: a frozen copy of the model)")
    parser.add_argument("--shells-off", action="store_true", help="add ours as before the shells")
    parser.add_argument("--top", type=int, default=0, help="also print the N operations ours adds most of, per loss")
    args = parser.parse_args()
    args.encoder, args.naive, args.only = "transformer", False, None

    torch.manual_seed(0)
    model = load_model(args, "cpu")
    model.eval()  # no dropout: the count is the same in train mode, apart from the dropout operations themselves
    batch = load_batches(model, args.batch_size, 1, "cpu")[0]
    scores = torch.rand(args.batch_size, generator=torch.Generator().manual_seed(0))
    counts = {}
    for (inner, kind), loss in make_variants(model, args).items():
        counts[inner, kind] = count_step(loss, batch, scores if inner == "CoSENT" else None)
        model.zero_grad(set_to_none=True)

    print(
        f"# loss_launches: operations dispatched per training step (forward + backward, views and allocations left "
        f"out), batch {args.batch_size}, max_seq_length {args.max_seq_length}, dims {DIMS}, mini-batch "
        f"{args.mini_batch_size} for the Cached losses, torch {torch.__version__}"
    )
    print("| inner loss | variant | operations | beyond plain | beyond plain, per extra dim |")
    print("| --- | --- | ---: | ---: | ---: |")
    inners = list(dict.fromkeys(inner for inner, _ in counts))
    for inner in inners:
        plain = sum(counts[inner, "plain"].values())
        for kind in KINDS:
            if (inner, kind) not in counts:
                continue
            total = sum(counts[inner, kind].values())
            extra = total - plain
            per_dim = f"{extra / (len(DIMS) - 1):.0f}" if kind != "plain" else ""
            print(f"| {inner} | {kind} | {total} | {extra if kind != 'plain' else ''} | {per_dim} |")
    if args.top:
        for inner in inners:
            added = counts[inner, "ours"] - counts[inner, "plain"]
            listed = ", ".join(f"{name} +{n}" for name, n in added.most_common(args.top))
            print(f"\n{inner}: what ours adds most of: {listed}")


if __name__ == "__main__":
    main()
