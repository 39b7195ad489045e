"""After training: the recipe's rotation inside the Matryoshka shells and the int8 scales saved with the model."""

from __future__ import annotations

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from matryoshka_st.dims import truncate_numpy
from matryoshka_st.metadata import read_matryoshka_config
from matryoshka_st.posthoc.pca import encode_full
from matryoshka_st.quantization import BinaryCalibration, Int8Calibration, binary_codes
from matryoshka_st.training import parse_config, run
from tests.training._helpers import pair_rows

FAST = {"per_device_train_batch_size": 8, "logging_steps": 1, "report_to": "none", "seed": 1, "max_steps": 2}
DIMS = [64, 32, 16]


def _train(tiny_model_dir, pairs_file, output_dir, **overrides):
    values = {"model_name_or_path": tiny_model_dir, "train_data": str(pairs_file), "output_dir": str(output_dir)}
    return run(parse_config({**values, **FAST, "matryoshka_dims": DIMS, "eval_size": 0, **overrides}))


def test_shell_rotation_keeps_every_trained_dim_and_changes_the_bits(tiny_model_dir, pairs_file, tmp_path):
    """Two runs, same seed, with and without ``--shell_rotation itq``: the float scores at each trained dim agree
    to 1e-5 and the sign codes do not (a broken rotation, e.g. one mixing shells, fails the first check; skipping
    it fails the second)."""
    plain = _train(tiny_model_dir, pairs_file, tmp_path / "plain", recipe="pca")
    rotated = _train(tiny_model_dir, pairs_file, tmp_path / "itq", recipe="pca", shell_rotation="itq")
    texts = [row["anchor"] for row in pair_rows()] + [row["positive"] for row in pair_rows()]
    a = encode_full(SentenceTransformer(plain.model_path, device="cpu"), texts)
    b = encode_full(SentenceTransformer(rotated.model_path, device="cpu"), texts)
    for dim in DIMS:
        ta, tb = truncate_numpy(a, dim), truncate_numpy(b, dim)
        np.testing.assert_allclose(tb @ tb.T, ta @ ta.T, atol=1e-5)
    assert (binary_codes(a) != binary_codes(b)).mean() > 0.1
    assert read_matryoshka_config(rotated.model_path).recipe["shell_rotation"] == "itq"
    assert len(SentenceTransformer(rotated.model_path, device="cpu")) == 4  # one rotation module, composed


def test_int8_scales_are_fitted_on_the_training_texts_and_saved(tiny_model_dir, pairs_file, tmp_path):
    result = _train(tiny_model_dir, pairs_file, tmp_path / "out", recipe="reference", init_texts=40)
    saved = read_matryoshka_config(result.model_path).int8_calibration
    calibration = Int8Calibration.from_dict(saved)
    assert calibration.dims == DIMS and sorted(calibration.scales) == [16, 32, 64]
    assert [len(calibration.scales[d]) for d in DIMS] == [3, 2, 1]  # one scale per shell of each prefix
    # the same fit on the first 40 training texts (anchors first, as the PCA rotations take them)
    rows = pair_rows()
    texts = list(dict.fromkeys([row["anchor"] for row in rows][:40]))
    embeddings = encode_full(SentenceTransformer(result.model_path, device="cpu"), texts)
    expected = Int8Calibration.fit(embeddings, DIMS)
    for dim in DIMS:
        assert calibration.scales[dim] == pytest.approx(expected.scales[dim], rel=1e-5)
    # the binary codes' choice per dim, made on the same embeddings, and its rotations saved next to the model
    binary = read_matryoshka_config(result.model_path).binary_calibration
    model = SentenceTransformer(result.model_path, device="cpu")
    pairs = tuple(encode_full(model, [row[column] for row in rows]) for column in ("anchor", "positive"))
    refit = BinaryCalibration.fit(embeddings, DIMS, seed=1, pairs=pairs)  # chosen on anchor -> positive retrieval
    assert binary["recall_at_10"] == {str(d): r for d, r in refit.recall.items()}
    assert binary["rotated_dims"] == sorted(refit.rotations, reverse=True)
    loaded = BinaryCalibration.load(result.model_path, binary)
    for dim, rotation in refit.rotations.items():
        np.testing.assert_array_equal(loaded.rotations[dim], rotation)


def test_quantization_aware_flags_reach_the_loss(tmp_path):
    from matryoshka_st.training.arguments import ConfigError

    values = {"train_data": "pairs.jsonl", "output_dir": str(tmp_path / "o")}
    config = parse_config({**values, "quant_weight": 0.5, "quant_dims": [64, 32], "quant_warmup": 10})
    kwargs = config.matryoshka.resolved_recipe().loss_kwargs()
    assert kwargs["quant_weight"] == 0.5 and kwargs["quant_dims"] == (64, 32) and kwargs["quant_warmup"] == 10
    assert kwargs["quant_precision"] == "binary"
    assert "quant_weight" not in parse_config(values).matryoshka.resolved_recipe().loss_kwargs()
    with pytest.raises(ConfigError):
        parse_config({**values, "quant_weight": -1.0})
