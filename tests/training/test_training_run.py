from __future__ import annotations

import json
import math
import os

import pytest
import torch
from safetensors.torch import load_file
from sentence_transformers import SentenceTransformer
from transformers import TrainerCallback

from matryoshka_st.evaluation.quality import recommend_dim
from matryoshka_st.metadata import MATRYOSHKA_CONFIG_NAME, read_matryoshka_config
from matryoshka_st.training import NonFiniteLossError, parse_config, run
from matryoshka_st.training.checkpoints import save_atomically
from matryoshka_st.training.evaluators import EncodeOnceEvaluator, RetrievalSet, _retrieval_evaluators, eval_plan
from matryoshka_st.training.run import _load_datasets
from tests.training._helpers import scored_rows, write_jsonl

FAST = {"per_device_train_batch_size": 8, "logging_steps": 1, "report_to": "none", "seed": 1}


def _config(tiny_model_dir, train_data, output_dir, **overrides):
    values = {"model_name_or_path": tiny_model_dir, "train_data": str(train_data), "output_dir": str(output_dir)}
    return parse_config({**values, **FAST, **overrides})


def test_pairs_end_to_end(tiny_model_dir, pairs_file, tmp_path):
    output_dir = tmp_path / "out"
    config = _config(
        tiny_model_dir,
        pairs_file,
        output_dir,
        max_steps=4,
        save_steps=2,
        eval_size=16,
        eval_strategy="steps",
        eval_steps=2,
        best_model_dim=32,
        learning_rate=1e-3,
    )
    sampler_before = config.training.batch_sampler
    result = run(config)
    # the run decides the best-model metric and the batch sampler on its own copy of the arguments
    assert config.training.metric_for_best_model is None and not config.training.load_best_model_at_end
    assert config.training.batch_sampler == sampler_before

    assert result.dims == [64, 32]
    assert result.model_path == str(output_dir / "final")
    assert set(result.scores_before) == set(result.scores_after) == {64, 32}
    assert all(0 <= score <= 1 for score in result.scores_after.values())
    assert "dim" in result.table() and "fine-tuned" in result.table()

    metadata = read_matryoshka_config(result.model_path)
    assert metadata.matryoshka_dims == [64, 32]
    # the default recipe: the full dim carries 0.4 of the total weight, PCA rotations before and after training
    assert metadata.matryoshka_weights == pytest.approx([0.8, 1.2])
    assert metadata.recipe["name"] == "pca-share-kl" and metadata.recipe["pca_after"] is True
    assert metadata.loss == "MultipleNegativesRankingLoss"
    assert metadata.recommended_truncate_dim == result.recommended_truncate_dim in (64, 32)
    assert metadata.recommendation["metric"] == "heldout_dim_{dim}_cosine_ndcg@10"
    # the scores after training are the saved model's on the held-out rows, and the recommendation follows from them
    data = _load_datasets(config)
    plan = eval_plan(config, [64, 32], data.spec, data.eval)
    saved_scores = plan.scores(plan.evaluator(SentenceTransformer(result.model_path, device="cpu")), [64, 32])
    assert saved_scores == pytest.approx(result.scores_after, abs=1e-6)
    assert metadata.recommendation["scores"] == {str(dim): score for dim, score in result.scores_after.items()}
    assert metadata.recommendation["threshold"] == 0.98
    assert result.recommended_truncate_dim == recommend_dim(result.scores_after, 0.98, full_dim=64)
    assert read_matryoshka_config(output_dir / "checkpoint-2").matryoshka_dims == [64, 32]

    model = SentenceTransformer(result.model_path, device="cpu")  # tolerates matryoshka_config.json
    assert model.encode(["a short text"], truncate_dim=32).shape == (1, 32)

    # per-dim loss components and per-dim evaluation are logged; the best checkpoint is chosen by the dim-32 metric
    history = json.load(open(output_dir / "checkpoint-4" / "trainer_state.json"))
    logged = set().union(*(entry.keys() for entry in history["log_history"]))
    assert {"loss_dim_64", "loss_dim_32", "distill_dim_32", "eval_loss_dim_32"} <= logged
    assert "eval_heldout_dim_32_cosine_ndcg@10" in logged
    assert history["best_model_checkpoint"] is not None
    assert not [name for name in os.listdir(output_dir) if name.startswith(".")]  # no temporary folders left


def test_pairs_with_integer_labels_train_heads(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "nli.jsonl", scored_rows(32, integer=True))
    result = run(_config(tiny_model_dir, data, tmp_path / "out", max_steps=2, save_steps=1, matryoshka_dims=[64, 16]))
    metadata = read_matryoshka_config(result.model_path)
    assert metadata.loss == "SoftmaxLoss" and metadata.head_mode == "separate"
    for folder in (result.model_path, tmp_path / "out" / "checkpoint-2"):
        heads = load_file(os.path.join(folder, "matryoshka_heads.safetensors"))
        assert heads["separate.16.weight"].shape == (3, 3 * 16)  # 3 classes, [u, v, |u-v|] at 16 dims


def test_seed_fixes_the_heads_whatever_the_process_drew_before(tiny_model_dir, tmp_path):
    """SoftmaxLoss draws its classifier from torch's global RNG when it is built, before the trainer seeds: the run
    seeds first, so one ``seed`` gives one set of heads (without it, a run in a process that had used the RNG, such
    as the in-process reference of the resume test in ``test_training_processes.py``, started from other heads).

    Breakage check (in a throwaway copy, it fails this test): deleting ``set_seed(config.training.seed)`` before
    ``_build_loss`` in ``training/run.py``.
    """
    data = write_jsonl(tmp_path / "nli.jsonl", scored_rows(16, integer=True))
    heads = []
    for attempt in range(2):
        torch.manual_seed(100 + attempt)  # the process drew differently before each run
        result = run(_config(tiny_model_dir, data, tmp_path / f"out{attempt}", max_steps=1, save_strategy="no"))
        heads.append(load_file(os.path.join(result.model_path, "matryoshka_heads.safetensors")))
    assert heads[0].keys() == heads[1].keys() and heads[0]
    for key in heads[0]:
        assert torch.equal(heads[0][key], heads[1][key]), key


def test_scores_use_cosent_and_sts_evaluation(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "sts.jsonl", scored_rows(40))
    result = run(_config(tiny_model_dir, data, tmp_path / "out", max_steps=2, eval_size=0.25, save_strategy="no"))
    assert read_matryoshka_config(result.model_path).loss == "CoSENTLoss"
    assert result.metric == "heldout_dim_{dim}_spearman_cosine"
    assert set(result.scores_after) == {64, 32}


def test_text_label_trains_with_batch_triplets(tiny_model_dir, tmp_path):
    rows = [{"text": row["sentence1"], "label": ["a", "b"][i % 2]} for i, row in enumerate(scored_rows(32))]
    data = write_jsonl(tmp_path / "cls.jsonl", rows)
    result = run(_config(tiny_model_dir, data, tmp_path / "out", max_steps=2, save_strategy="no"))
    assert read_matryoshka_config(result.model_path).loss == "BatchAllTripletLoss"


class _PoisonAt(TrainerCallback):
    """Turns the weights into NaN at the start of one step, as a diverging run would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step + 1 == self.step:
            with torch.no_grad():
                model[0].auto_model.embeddings.word_embeddings.weight.fill_(float("nan"))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_model_dir, pairs_file, tmp_path):
    output_dir = tmp_path / "out"
    config = _config(tiny_model_dir, pairs_file, output_dir, max_steps=6, save_steps=2)
    with pytest.raises(NonFiniteLossError, match=r"at step 3 .*checkpoint-2"):
        run(config, callbacks=[_PoisonAt(3)])
    assert sorted(os.listdir(output_dir)) == ["checkpoint-2"]  # no final model, no later checkpoint
    weights = load_file(str(output_dir / "checkpoint-2" / "model.safetensors"))
    assert all(torch.isfinite(tensor).all() for tensor in weights.values())


def test_overwrite_replaces_the_model_and_old_checkpoints(tiny_model_dir, pairs_file, tmp_path):
    output_dir = tmp_path / "out"
    (output_dir / "checkpoint-99").mkdir(parents=True)
    (output_dir / "final").mkdir()
    (output_dir / "final" / "modules.json").write_text("[]")
    run(_config(tiny_model_dir, pairs_file, output_dir, max_steps=1, overwrite_output_dir=True, save_strategy="no"))
    assert sorted(os.listdir(output_dir)) == ["final"]
    assert (output_dir / "final" / MATRYOSHKA_CONFIG_NAME).is_file()


def test_save_atomically_never_leaves_a_half_written_model(tiny_model, tmp_path):
    target = tmp_path / "final"
    save_atomically(tiny_model, target, lambda folder: None)
    before = sorted(os.listdir(target))

    def fail(folder):
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_atomically(tiny_model, target, fail)
    assert sorted(os.listdir(tmp_path)) == ["final"]  # the old model is intact, no temporary folder is left
    assert sorted(os.listdir(target)) == before
    save_atomically(tiny_model, target, lambda folder: open(os.path.join(folder, "marker"), "w").close())
    assert (target / "marker").is_file() and sorted(os.listdir(tmp_path)) == ["final"]


def test_encode_once_evaluator_matches_plain_evaluators(tiny_model):
    data = RetrievalSet(
        "toy",
        {f"q{i}": f"query number {i} about cats" for i in range(6)},
        {f"d{i}": f"document {i} on cats and dogs" for i in range(10)},
        {f"q{i}": {f"d{i}"} for i in range(6)},
    )
    evaluators = _retrieval_evaluators(data, [64, 16], batch_size=4)
    batches = []
    hook = tiny_model[0].register_forward_hook(lambda module, inputs, output: batches.append(1))
    cached = EncodeOnceEvaluator(evaluators)(tiny_model)
    cached_batches, batches[:] = len(batches), []
    plain = {}
    for evaluator in evaluators:
        plain.update(evaluator(tiny_model))
    hook.remove()
    assert "encode" not in vars(tiny_model)  # the patch is undone
    assert cached_batches * 2 == len(batches)  # 2 dims encoded once instead of twice
    for key, value in plain.items():
        assert math.isclose(cached[key], value, abs_tol=1e-6), key
