from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
from huggingface_hub import HfApi

from matryoshka_st.cli import main
from tests.hub._helpers import evaluate_models, shared_trained_model

TOKEN = "hf_cliTOKENthatMustNeverBeWritten0123"


@pytest.fixture(scope="module")
def trained_model_dir(tmp_path_factory) -> str:
    return shared_trained_model(tmp_path_factory)


@pytest.fixture()
def no_network(monkeypatch):
    """Any attempt to reach the Hub fails the test."""
    calls = []

    def refuse(name):
        def method(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} must not be called")

        return method

    for name in ("create_repo", "create_branch", "create_commit", "upload_folder"):
        monkeypatch.setattr(HfApi, name, refuse(name))
    return calls


def test_push_dry_run_lists_the_folder(trained_model_dir, tmp_path, capsys, no_network):
    results = evaluate_models({"tuned": trained_model_dir}, tmp_path, precisions=["float32"])
    out = tmp_path / "preview"
    code = main(
        [
            "push",
            trained_model_dir,
            "--repo-id",
            "you/tiny-matryoshka",
            "--dry-run",
            str(out),
            "--results",
            str(results),
            "--base-model",
            "sentence-transformers/all-MiniLM-L6-v2",
            "--license",
            "apache-2.0",
            "--dataset",
            "sentence-transformers/all-nli",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert f"Dry run: nothing uploaded. 14 files for you/tiny-matryoshka written to {out}:" in printed
    listed = [line.split("  (")[0].strip() for line in printed.splitlines()[1:]]
    assert listed == sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert "README.md" in listed and "matryoshka_quality_vs_dim.png" in listed
    readme = (out / "README.md").read_text()
    assert (
        "base_model: sentence-transformers/all-MiniLM-L6-v2" in readme and "- sentence-transformers/all-nli" in readme
    )
    assert no_network == []


def test_push_bad_input_messages(trained_model_dir, tmp_path, capsys, monkeypatch, no_network):
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_TOKEN_PATH", str(tmp_path / "no_token"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no_tokens"))

    assert main(["push", trained_model_dir, "--repo-id", "you/tiny"]) == 2
    assert "error: No Hugging Face token found" in capsys.readouterr().err

    assert main(["push", str(tmp_path), "--repo-id", "you/tiny"]) == 2
    assert "no modules.json" in capsys.readouterr().err

    assert main(["push", trained_model_dir, "--repo-id", "you/bad name", "--dry-run", str(tmp_path / "x")]) == 2
    assert "Invalid repository id 'you/bad name'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and no_network == []


def test_push_console_script_dry_run(trained_model_dir, tmp_path):
    script = shutil.which("matryoshka-st", path=str(Path(sys.executable).parent))
    command = [script] if script else [sys.executable, "-m", "matryoshka_st"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_TOKEN": TOKEN}
    out = tmp_path / "preview"
    args = [*command, "push", trained_model_dir, "--repo-id", "you/tiny", "--dry-run", str(out)]
    result = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Dry run: nothing uploaded. 13 files for you/tiny" in result.stdout
    assert (out / "README.md").is_file() and (out / "model.safetensors").is_file()
    assert TOKEN not in result.stdout + result.stderr
    assert not any(TOKEN.encode() in p.read_bytes() for p in out.rglob("*") if p.is_file())
