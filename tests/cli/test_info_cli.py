from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from matryoshka_st.cli import main
from tests.hub._helpers import shared_trained_model


@pytest.fixture(scope="module")
def trained_model_dir(tmp_path_factory) -> str:
    return shared_trained_model(tmp_path_factory)


def test_info_prints_dims_weights_and_recommendation(trained_model_dir, capsys):
    metadata = json.loads(Path(trained_model_dir, "matryoshka_config.json").read_text())
    recommended, threshold = metadata["recommended_truncate_dim"], metadata["recommendation"]["threshold"]
    assert main(["info", trained_model_dir]) == 0
    out = capsys.readouterr().out
    assert "full dim:                 64" in out
    assert "dims:                     64 32" in out
    assert "weights:                  0.8 1.2" in out  # the default recipe: the full dim holds 0.4 of the weight
    assert (
        "recipe:                   pca-share-kl (init pca, distill_weight 1.0, distill_temperature 1.0, "
        "full_dim_share 0.4, pca_after True, shell_rotation none)" in out
    )
    # the int8 scales fitted at the end of training, and what each (dim, precision) stores
    assert "int8 scales:              one per shell, saved for dims 64 32" in out
    rotated = " ".join(map(str, metadata["binary_calibration"]["rotated_dims"])) or "none"
    assert f"binary codes rotated at:  {rotated} (binary_rotations.safetensors" in out
    assert "bytes per vector:         64 dims: float32 256, int8 64, binary 8\n" in out
    assert "\n                          32 dims: float32 128, int8 32, binary 4\n" in out
    assert f"recommended truncate_dim: {recommended}" in out
    assert f"chosen from:              heldout_cosine_ndcg@10 (keep >= {threshold:.0%} of full): 64: " in out
    assert "loss:                     MatryoshkaLoss(MultipleNegativesRankingLoss)" in out
    assert "normalize_embeddings=True" in out

    assert main(["info", trained_model_dir, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["dims"] == [64, 32] and info["recommended_truncate_dim"] == recommended
    assert info["int8_scales_dims"] == [64, 32]
    assert info["binary_rotated_dims"] == metadata["binary_calibration"]["rotated_dims"]


def test_info_of_a_model_without_metadata(tiny_model, tmp_path, capsys):
    tiny_model.save(str(tmp_path / "plain"))
    assert main(["info", str(tmp_path / "plain")]) == 0
    assert "no matryoshka_config.json: not trained with matryoshka-st" in capsys.readouterr().out


def test_info_bad_input(tmp_path, capsys):
    assert main(["info", str(tmp_path)]) == 2
    assert "is not a sentence-transformers model folder: it has no modules.json" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_info_console_script(trained_model_dir):
    script = shutil.which("matryoshka-st", path=str(Path(sys.executable).parent))
    command = [script] if script else [sys.executable, "-m", "matryoshka_st"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [*command, "info", trained_model_dir], capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode == 0, result.stderr
    assert "dims:                     64 32" in result.stdout
