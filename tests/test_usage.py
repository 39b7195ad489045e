from __future__ import annotations

import json

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from matryoshka_st.dims import truncate_numpy
from matryoshka_st.evaluation.quality import recommend_dim
from matryoshka_st.usage import encode_truncated, matryoshka_info
from tests.hub._helpers import shared_trained_model

TEXTS = ["a cat on a mat", "the stock market fell today", "rain is expected tomorrow"]


@pytest.fixture(scope="module")
def trained_model_dir(tmp_path_factory) -> str:
    return shared_trained_model(tmp_path_factory)


@pytest.fixture(scope="module")
def model(trained_model_dir) -> SentenceTransformer:
    return SentenceTransformer(trained_model_dir, device="cpu")  # plain sentence-transformers, no matryoshka_st


def test_trained_model_loads_and_truncates_with_plain_sentence_transformers(trained_model_dir, model):
    full = model.encode(TEXTS)
    assert full.shape == (3, 64)
    cut = model.encode(TEXTS, truncate_dim=32)
    assert cut.shape == (3, 32)
    np.testing.assert_allclose(cut, full[:, :32], atol=1e-6)

    at_32 = SentenceTransformer(trained_model_dir, device="cpu", truncate_dim=32)
    assert at_32.get_embedding_dimension() == 32
    np.testing.assert_allclose(at_32.encode(TEXTS), cut, atol=1e-6)


def test_encode_truncated_is_unit_length_while_plain_truncation_is_not(model):
    plain = model.encode(TEXTS, truncate_dim=16)
    assert np.all(np.linalg.norm(plain, axis=1) < 0.999)  # Normalize ran before the cut

    vectors = encode_truncated(model, TEXTS, 16)
    assert vectors.shape == (3, 16)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors, truncate_numpy(model.encode(TEXTS), 16), atol=1e-5)
    # the unit vectors' dot products are the cosine similarities of the truncated embeddings
    np.testing.assert_allclose(vectors @ vectors.T, model.similarity(plain, plain).numpy(), atol=1e-5)
    assert encode_truncated(model, TEXTS[0], 8).shape == (8,)
    assert model.truncate_dim is None


@pytest.mark.parametrize("dim", [0, -3, 65, 2.5, True])
def test_encode_truncated_rejects_bad_dims(model, dim):
    with pytest.raises(ValueError, match="dim"):
        encode_truncated(model, TEXTS, dim)


def test_encode_truncated_rejects_conflicting_kwargs(model):
    with pytest.raises(ValueError, match="sets normalize_embeddings itself"):
        encode_truncated(model, TEXTS, 16, normalize_embeddings=False)


def test_matryoshka_info(trained_model_dir):
    metadata = json.loads(open(f"{trained_model_dir}/matryoshka_config.json").read())
    info = matryoshka_info(trained_model_dir)
    assert info["matryoshka"] is True
    assert info["dims"] == [64, 32]
    assert info["weights"] == pytest.approx([0.8, 1.2])  # the default recipe
    assert info["recipe"]["name"] == "pca-share-kl"
    assert info["full_dim"] == 64
    assert info["recommended_truncate_dim"] == metadata["recommended_truncate_dim"] in (64, 32)
    # the smallest dim keeping the threshold's share of the full dim's held-out score, as recorded
    recorded = metadata["recommendation"]
    scores = {int(dim): score for dim, score in recorded["scores"].items()}
    assert set(scores) == {64, 32} and info["recommendation"] == recorded
    assert info["recommended_truncate_dim"] == recommend_dim(scores, recorded["threshold"], full_dim=64)
    assert info["recommendation"]["metric"] == "heldout_dim_{dim}_cosine_ndcg@10"
    assert info["loss"] == "MultipleNegativesRankingLoss"
    assert info["default_truncate_dim"] is None
    assert info["ends_with_normalize"] is True


def test_matryoshka_info_of_a_plain_model(tiny_model, tmp_path):
    tiny_model.save(str(tmp_path / "plain"))
    info = matryoshka_info(tmp_path / "plain")
    assert info["matryoshka"] is False and info["dims"] is None and info["full_dim"] == 64


def test_matryoshka_info_bad_input(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a sentence-transformers model folder: it has no modules.json"):
        matryoshka_info(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        matryoshka_info(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="could not be fetched from the Hugging Face Hub"):
        matryoshka_info("nobody-xyz/not-a-cached-model")  # HF_HUB_OFFLINE=1 in tests


def test_encode_codes_serves_the_saved_int8_scales_and_binary_rotations(trained_model_dir, model, tmp_path):
    from matryoshka_st.metadata import read_matryoshka_config
    from matryoshka_st.quantization import BinaryCalibration, Int8Calibration, prefix_rotation
    from matryoshka_st.usage import encode_codes

    config = read_matryoshka_config(trained_model_dir)
    prefixes = encode_truncated(model, TEXTS, 32)
    int8 = encode_codes(model, trained_model_dir, TEXTS, 32, "int8")
    scales = Int8Calibration.from_dict(config.int8_calibration)
    np.testing.assert_array_equal(int8, scales.quantize(prefixes, 32))
    assert int8.dtype == np.int8
    binary = encode_codes(model, trained_model_dir, TEXTS, 32, "binary")
    expected = BinaryCalibration.load(trained_model_dir, config.binary_calibration).rotate(prefixes, 32)
    np.testing.assert_array_equal(binary, np.packbits(expected > 0, axis=-1))
    assert binary.shape == (3, 4) and binary.dtype == np.uint8
    # a folder that rotates dim 32 takes the signs after its rotation
    rotated = tmp_path / "rotated"
    import shutil

    shutil.copytree(trained_model_dir, rotated)
    saved = BinaryCalibration({32: prefix_rotation(32, seed=5)}, {}).save(rotated)
    data = json.loads((rotated / "matryoshka_config.json").read_text())
    (rotated / "matryoshka_config.json").write_text(json.dumps({**data, "binary_calibration": saved}))
    codes = encode_codes(model, rotated, TEXTS, 32, "binary")
    np.testing.assert_array_equal(codes, np.packbits(prefixes @ prefix_rotation(32, seed=5).T > 0, axis=-1))
    assert not np.array_equal(codes, np.packbits(prefixes > 0, axis=-1))
    with pytest.raises(ValueError, match="no int8 scales for dim 24"):
        encode_codes(model, trained_model_dir, TEXTS, 24, "int8")
    with pytest.raises(ValueError, match="precision must be 'int8' or 'binary'"):
        encode_codes(model, trained_model_dir, TEXTS, 32, "float16")
