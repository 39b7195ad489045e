"""Two CPU processes (gloo) with ``gather_across_devices=True`` equal one process on the concatenated batch.

``MatryoshkaLoss`` around ``MultipleNegativesRankingLoss`` (embeddings path, shell similarities shared with the
distillation) and ``CachedMultipleNegativesRankingLoss`` (GradCache path, both ways: every dim in one graph, and dim
by dim through the inner loss's chunked backward) with the default recipe's loss terms
(self-distillation, the full dim's share): the processes' losses averaged, and their gradients averaged as DDP does,
equal the single process's loss and gradients to 1e-5.
"""

from __future__ import annotations

import pytest
import torch
import torch.multiprocessing as mp
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer import losses as st_losses

from matryoshka_st import MatryoshkaLoss
from matryoshka_st.recipes import DEFAULT_RECIPE, get_recipe
from tests.losses._batches import ANCHORS, NEGATIVES, POSITIVES
from tests.losses._mixed_precision import relative_gradient_error

WORLD = 2
CASES = {
    "MNRL": lambda m: st_losses.MultipleNegativesRankingLoss(m, gather_across_devices=True),
    "CMNRL": lambda m: st_losses.CachedMultipleNegativesRankingLoss(m, mini_batch_size=2, gather_across_devices=True),
    "CMNRL dim by dim": lambda m: st_losses.CachedMultipleNegativesRankingLoss(
        m, mini_batch_size=2, gather_across_devices=True
    ),
}


def _step(model_dir: str, case: str, rows: slice) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One forward and backward on ``rows`` of the batch: the loss components and every parameter's gradient."""
    torch.manual_seed(0)
    model = SentenceTransformer(model_dir, device="cpu")
    model.eval()  # no dropout: every process runs the same network
    loss = MatryoshkaLoss(model, CASES[case](model), [64, 32, 16], **get_recipe(DEFAULT_RECIPE).loss_kwargs())
    if case == "CMNRL dim by dim":
        loss.one_graph_max_bytes = 0
    batch = [model.preprocess(column[rows]) for column in (ANCHORS, POSITIVES, NEGATIVES)]
    out = loss(batch, None)
    if case.startswith("CMNRL"):
        assert loss.last_gradient_cache_path == ("per_dim" if case == "CMNRL dim by dim" else "one_graph")
    sum(out.values()).backward()
    values = {key: value.detach().clone() for key, value in out.items()}
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    return values, grads


def _worker(rank: int, init_file: str, model_dir: str, out_file: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        share = len(ANCHORS) // WORLD
        results = {}
        for case in CASES:
            values, grads = _step(model_dir, case, slice(rank * share, (rank + 1) * share))
            # what DDP and the trainer's logging do: gradients averaged over the processes, and so the losses
            for tensor in [*values.values(), *grads.values()]:
                dist.all_reduce(tensor)
                tensor /= WORLD
            results[case] = (values, grads)
        if rank == 0:
            torch.save(results, out_file)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_equal_one_process_on_the_concatenated_batch(tiny_model_dir, tmp_path):
    out_file = str(tmp_path / "two_processes.pt")
    mp.spawn(_worker, args=(str(tmp_path / "init"), tiny_model_dir, out_file), nprocs=WORLD, join=True)
    results = torch.load(out_file)
    for case in CASES:
        values, grads = results[case]
        ref_values, ref_grads = _step(tiny_model_dir, case, slice(None))
        assert any(key.startswith("distill_dim_") for key in values)  # the recipe's terms are in
        assert values.keys() == ref_values.keys()
        for key in values:
            torch.testing.assert_close(values[key], ref_values[key], rtol=1e-5, atol=1e-6, msg=f"{case} {key}")
        assert grads.keys() == ref_grads.keys()
        # to 1e-5 of each parameter's largest gradient (elementwise, near-zero entries carry the float noise of
        # padding the halves to other lengths than the whole batch), and of all gradients together
        for name in grads:
            error, size = (grads[name] - ref_grads[name]).abs().max(), ref_grads[name].abs().max()
            assert error <= 1e-5 * size + 1e-7, (case, name, float(error), float(size))
        assert relative_gradient_error(grads, ref_grads) < 1e-5
