from __future__ import annotations

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from matryoshka_st.training import parse_config, run

from ._helpers import pair_rows, save_tiny_model, write_jsonl


def test_init_pca_rotates_before_training(tmp_path):
    config = parse_config(
        {
            "model_name_or_path": save_tiny_model(tmp_path / "tiny"),
            "train_data": str(write_jsonl(tmp_path / "pairs.jsonl", pair_rows(24))),
            "output_dir": str(tmp_path / "out"),
            "init": "pca",
            "max_steps": 1,
            "per_device_train_batch_size": 4,
            "save_strategy": "no",
            "report_to": "none",
        }
    )
    result = run(config)
    trained = SentenceTransformer(result.model_path)
    names = [type(module).__name__ for module in trained]
    assert names[-2:] == ["Dense", "Normalize"], names
    # one training step moves the rotation a little; it stays close to orthogonal
    weight = trained[-2].linear.weight.detach().numpy()
    np.testing.assert_allclose(weight @ weight.T, np.eye(weight.shape[0]), atol=5e-2)


def test_init_bad_value(tmp_path):
    with pytest.raises(ValueError, match="init"):
        run(
            parse_config(
                {
                    "train_data": str(write_jsonl(tmp_path / "pairs.jsonl", pair_rows(8))),
                    "output_dir": str(tmp_path / "o"),
                    "init": "svd",
                }
            )
        )
    assert not (tmp_path / "o").exists()
