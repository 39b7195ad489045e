from __future__ import annotations

import pytest

from tests.hub._helpers import evaluate_models, shared_trained_model


@pytest.fixture(scope="session")
def trained_model_dir(tmp_path_factory) -> str:
    """A tiny model saved by the training library: README.md by sentence-transformers, matryoshka_config.json."""
    return shared_trained_model(tmp_path_factory)


@pytest.fixture(scope="session")
def eval_dir(trained_model_dir, tmp_path_factory):
    """Eval results of the trained model alone, at dims 64, 32, 16 in float32, int8 and binary."""
    return evaluate_models({"tuned": trained_model_dir}, tmp_path_factory.mktemp("eval_one"))


@pytest.fixture(autouse=True)
def _one_torch_thread(one_torch_thread):
    """Every test here runs the tiny model with one intra-op thread (see ``tests/conftest.py``)."""
    yield


@pytest.fixture()
def no_token(monkeypatch, tmp_path):
    """No token anywhere: not in the environment, not in an empty HF_HOME."""
    import huggingface_hub.constants

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "hf_home"
    home.mkdir()
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
