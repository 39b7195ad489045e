from __future__ import annotations

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from matryoshka_st.posthoc import adapt


@pytest.fixture()
def model_dir(tiny_model, tmp_path):
    tiny_model.save(str(tmp_path / "model"))
    return tmp_path / "model"


@pytest.mark.parametrize("method", ["pca", "adaptor"])
def test_adapt_writes_a_truncatable_model(model_dir, texts, tmp_path, method):
    output = tmp_path / "out"
    settings = {"steps": 10} if method == "adaptor" else {}
    model = adapt(str(model_dir), texts, method=method, output_dir=output, dims=[64, 16], max_texts=100, **settings)
    expected = model.encode(texts[:8])
    reloaded = SentenceTransformer(str(output), device="cpu", truncate_dim=16)
    np.testing.assert_allclose(reloaded.encode(texts[:8]), expected[:, :16], atol=1e-6)
    assert len(reloaded) == (4 if method == "pca" else 7)


def test_adapt_checks_arguments_before_loading_the_model(tmp_path, texts):
    missing = str(tmp_path / "no-such-model")  # loading it would fail: every error below comes first
    with pytest.raises(ValueError, match="Unknown method 'svd'"):
        adapt(missing, texts, method="svd")
    with pytest.raises(ValueError, match="no non-empty text"):
        adapt(missing, ["", "  "])
    with pytest.raises(ValueError, match="max_texts must be >= 2"):
        adapt(missing, texts, max_texts=1)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "file").write_text("x")
    with pytest.raises(ValueError, match="exists and is not empty"):
        adapt(missing, texts, output_dir=tmp_path / "full")
    with pytest.raises(ValueError, match="Unknown adaptor setting.*'stepz'"):
        adapt(missing, texts, method="adaptor", stepz=3)
    with pytest.raises(ValueError, match="Unknown PCA setting"):
        adapt(missing, texts, method="pca", steps=3)
