"""The CUDA paths: the loss in bf16 and fp16 autocast, a few training steps, encode, evaluation and search on the device.

Marked ``gpu`` and skipped without CUDA: ``pytest -m gpu tests/gpu``. They need only torch, transformers, accelerate
and sentence-transformers; the training steps also need ``datasets``, evaluation ``mteb`` and search ``faiss``
(each skipped when missing). ``MATRYOSHKA_ST_TEST_DEVICE=cpu pytest -m gpu tests/gpu`` runs the same code on the CPU,
to check the tests themselves on a machine without a GPU.

The loss tolerances are those of the CPU bf16 tests (``tests/losses/test_mixed_precision.py``, where they are
explained); float16 keeps 3 more mantissa bits than bfloat16, so the same bounds hold with more margin.
"""

from __future__ import annotations

import copy
import json
import math
import os

import numpy as np
import pytest
import torch
from transformers import TrainerCallback

from matryoshka_st.dims import truncate
from tests._data import DOCS, QUERIES
from tests.losses._mixed_precision import (
    CASE_IDS,
    DIMS,
    assert_close_to_float32,
    per_dim_losses,
)
from tests.losses.test_mixed_precision import GRAD_RTOL, LOSS_RTOL

DEVICE = os.environ.get("MATRYOSHKA_ST_TEST_DEVICE", "cuda")
DEVICE_TYPE = DEVICE.split(":")[0]

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(DEVICE_TYPE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device"),
]

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
FP16_LOSS_SCALE = 2.0**10  # as a gradient scaler would: float16 gradients of a tiny model underflow otherwise


@pytest.fixture(scope="module")
def float32_reference(_tiny_model):
    return {case: per_dim_losses(_tiny_model, case, DEVICE, None) for case in CASE_IDS}


@pytest.mark.parametrize("precision", DTYPES)
@pytest.mark.parametrize("case", CASE_IDS)
def test_loss_under_autocast_matches_float32(_tiny_model, float32_reference, case, precision):
    dtype = DTYPES[precision]
    scale = FP16_LOSS_SCALE if dtype == torch.float16 else 1.0
    values, grads = per_dim_losses(_tiny_model, case, DEVICE, dtype, loss_scale=scale)
    reference, reference_grads = float32_reference[case]
    assert_close_to_float32(values, grads, reference, reference_grads, LOSS_RTOL, GRAD_RTOL)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_truncate_on_device_in_half_precision(dtype):
    x = torch.zeros(4, 64, device=DEVICE, dtype=dtype)
    x[0] = 60000.0  # near the float16 maximum: its square overflows float16 (not bfloat16, whose range is float32's)
    x[1, :8] = torch.arange(1, 9, dtype=dtype)
    out = truncate(x, 32)
    assert out.device.type == DEVICE_TYPE and out.dtype == dtype
    assert torch.isfinite(out).all()
    assert torch.equal(out[2:], torch.zeros(2, 32, device=DEVICE, dtype=dtype))  # zero rows stay zero
    norms = out[:2].float().norm(dim=-1)
    assert torch.allclose(norms, torch.ones(2, device=DEVICE), atol=1e-2)


@pytest.mark.parametrize("mode", ["separate", "shared"])
def test_heads_are_built_on_the_classifier_device(_tiny_model, mode):
    from sentence_transformers.sentence_transformer import losses as st_losses

    from matryoshka_st import MatryoshkaLoss

    model = copy.deepcopy(_tiny_model).to(DEVICE)
    loss = MatryoshkaLoss(model, st_losses.SoftmaxLoss(model, 64, num_labels=3), DIMS, head_mode=mode)
    for dim in DIMS:
        assert loss.heads.head(dim).weight.device.type == DEVICE_TYPE


# -- encode ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_encode_truncate_dim_on_device(_tiny_model, dtype):
    from matryoshka_st.usage import encode_truncated

    reference = copy.deepcopy(_tiny_model).encode(QUERIES, truncate_dim=32, convert_to_numpy=True)
    model = copy.deepcopy(_tiny_model).to(DEVICE, dtype=dtype)
    embeddings = model.encode(QUERIES, truncate_dim=32, convert_to_numpy=True)
    assert embeddings.shape == (len(QUERIES), 32) and np.isfinite(embeddings).all()
    atol = 1e-4 if dtype == torch.float32 else 3e-2
    np.testing.assert_allclose(embeddings.astype(np.float32), reference, atol=atol)
    unit = encode_truncated(model, QUERIES, 32)
    np.testing.assert_allclose(np.linalg.norm(unit.astype(np.float32), axis=1), 1.0, atol=1e-2)


def test_encode_truncate_dim_64_with_the_bundled_model(bundled_model_path):
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(bundled_model_path, device="cpu").encode(QUERIES, truncate_dim=64)
    for dtype in (torch.float32, torch.float16):
        model = SentenceTransformer(bundled_model_path, device=DEVICE).to(dtype=dtype)
        embeddings = model.encode(QUERIES, truncate_dim=64, convert_to_numpy=True).astype(np.float32)
        assert embeddings.shape == (len(QUERIES), 64)
        cosine = (
            (embeddings * reference).sum(1) / np.linalg.norm(embeddings, axis=1) / np.linalg.norm(reference, axis=1)
        )
        assert cosine.min() > 0.999, dtype


# -- training ----------------------------------------------------------------------------------------------------
class _RecordAutocast(TrainerCallback):
    def __init__(self) -> None:
        self.dtypes: set[torch.dtype | None] = set()

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        def record(module, inputs):
            enabled = torch.is_autocast_enabled(DEVICE_TYPE)
            self.dtypes.add(torch.get_autocast_dtype(DEVICE_TYPE) if enabled else None)

        model[0].register_forward_pre_hook(record)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> str:
    from tests.training._helpers import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("gpu_tiny"))


@pytest.mark.parametrize("precision", DTYPES)
@pytest.mark.parametrize(
    "loss, rows, mode",
    [
        ("CachedMultipleNegativesRankingLoss", "pairs", None),
        ("SoftmaxLoss", "labels", "separate"),
        ("SoftmaxLoss", "labels", "shared"),
    ],
)
def test_training_steps_on_device(tiny_model_dir, tmp_path, precision, loss, rows, mode):
    pytest.importorskip("datasets")
    if DEVICE_TYPE == "cpu" and precision == "fp16":
        pytest.skip("accelerate autocasts float16 on GPUs only (on CPU, --fp16 trains in float32)")
    from matryoshka_st.training import parse_config, run
    from tests.training._helpers import pair_rows, scored_rows, write_jsonl

    data = write_jsonl(tmp_path / "train.jsonl", pair_rows(48) if rows == "pairs" else scored_rows(48, integer=True))
    values = {
        "model_name_or_path": tiny_model_dir,
        "train_data": str(data),
        "output_dir": str(tmp_path / "out"),
        "loss": loss,
        "max_steps": 4,
        "save_steps": 4,
        "per_device_train_batch_size": 8,
        "logging_steps": 1,
        "report_to": "none",
        "seed": 1,
        "matryoshka_dims": [64, 32, 16],
        precision: True,
    }
    if loss.startswith("Cached"):
        values["loss_kwargs"] = '{"mini_batch_size": 4}'
    if mode:
        values["head_mode"] = mode
    if DEVICE_TYPE == "cpu":
        values["use_cpu"] = True
    recorder = _RecordAutocast()
    result = run(parse_config(values), callbacks=[recorder])
    assert recorder.dtypes == {DTYPES[precision]}
    assert result.global_step == 4
    state = json.loads((tmp_path / "out" / "checkpoint-4" / "trainer_state.json").read_text())
    logged = [entry for entry in state["log_history"] if "loss_dim_64" in entry]
    assert len(logged) == 4
    assert all(math.isfinite(entry[f"loss_dim_{dim}"]) for entry in logged for dim in (64, 32, 16))


# -- evaluation and search -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_evaluate_on_device(_tiny_model, tmp_path, dtype):
    pytest.importorskip("mteb")
    from mteb.mocks.mock_tasks import MockRetrievalTask

    from matryoshka_st.evaluation import evaluate

    scores = {}
    for name, device, model_dtype in (("cpu", "cpu", torch.float32), ("device", DEVICE, dtype)):
        model = copy.deepcopy(_tiny_model).to(device, dtype=model_dtype)
        runs = evaluate(
            {name: model}, [MockRetrievalTask()], dims=[32], output_folder=tmp_path / name, show_progress_bar=False
        )
        scores[name] = {run.dim: run.score for run in runs}
    assert set(scores["device"]) == {64, 32}
    assert all(0 <= score <= 1 for score in scores["device"].values())
    # float32 on the device ranks as on the CPU (cuBLAS float32 matmuls do not use TF32 unless asked to); float16
    # rounds embeddings to 11 bits, which can swap near ties
    tolerance = 1e-4 if dtype == torch.float32 else 0.1
    for dim, score in scores["cpu"].items():
        assert scores["device"][dim] == pytest.approx(score, abs=tolerance), dim


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_search_on_device(_tiny_model, dtype):
    pytest.importorskip("faiss")
    from matryoshka_st.search import FunnelIndex

    results = {}
    for name, device, model_dtype in (("cpu", "cpu", torch.float32), ("device", DEVICE, dtype)):
        model = copy.deepcopy(_tiny_model).to(device, dtype=model_dtype)
        index = FunnelIndex.from_model(model, DOCS, stages=[(16, 6), (32, 4)], show_progress_bar=False)
        assert index.embeddings.dtype == np.float32  # FAISS takes float32 only
        scores, ids = index.search(QUERIES, k=3)
        assert np.isfinite(scores).all()
        results[name] = (scores, ids)
    (device_scores, device_ids), (cpu_scores, cpu_ids) = results["device"], results["cpu"]
    if dtype == torch.float32:
        np.testing.assert_allclose(device_scores, cpu_scores, atol=1e-4)
        np.testing.assert_array_equal(device_ids, cpu_ids)  # every rank of every query
    else:  # float16 embeddings: close scores, the top hit but for near ties
        np.testing.assert_allclose(device_scores, cpu_scores, atol=3e-2)
        assert (device_ids[:, 0] == cpu_ids[:, 0]).mean() >= 0.8
