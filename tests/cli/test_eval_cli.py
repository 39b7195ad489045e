from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from matryoshka_st.cli import main
from matryoshka_st.cli.eval import parse_models

STS = Path(__file__).resolve().parent.parent / "fixtures" / "sts_sample.jsonl"


def console(*args: str) -> subprocess.CompletedProcess:
    script = shutil.which("matryoshka-st", path=str(Path(sys.executable).parent))
    command = [script] if script else [sys.executable, "-m", "matryoshka_st"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture()
def model_dir(tiny_model, tmp_path):
    tiny_model.save(str(tmp_path / "tiny"))
    return tmp_path / "tiny"


def test_parse_models():
    assert parse_models(["a", "b"]) == ["a", "b"]
    assert parse_models(["base=a", "tuned=b"]) == {"base": "a", "tuned": "b"}
    with pytest.raises(argparse.ArgumentTypeError, match="Label all models or none"):
        parse_models(["base=a", "b"])


def test_eval_and_report_console_scripts(model_dir, tmp_path):
    out = tmp_path / "eval"
    result = console("eval", f"tiny={model_dir}", "--tasks", str(STS), "--dims", "32", "16", "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert "## tiny: float32" in result.stdout and "| sts_sample (cosine_spearman) |" in result.stdout
    experiments = sorted(p.name for p in out.glob("results/local__tiny/*/experiments/*"))
    assert experiments == ["embed_dim_16", "embed_dim_32", "embed_dim_64"]
    summary = json.loads((out / "report" / "summary.json").read_text())
    assert summary["models"]["tiny"]["full_dim"] == 64

    result = console("report", str(out / "results"), "--output", str(tmp_path / "again"), "--keep", "0.5")
    assert result.returncode == 0, result.stderr
    assert "keeps >= 50%" in result.stdout
    assert {p.name for p in (tmp_path / "again").iterdir()} == {
        "report.md",
        "scores.csv",
        "summary.json",
        "score_vs_dim.png",
        "score_vs_bytes.png",
    }


def test_eval_rerun_in_process_skips(model_dir, tmp_path, capsys):
    args = ["eval", str(model_dir), "--tasks", str(STS), "--dims", "16", "--output", str(tmp_path), "--no-report"]
    assert main(args) == 0
    assert main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4 and lines[:2] == lines[2:]  # dims 64 and 16, the same scores when loaded again


def test_errors_are_one_line(tmp_path, capsys):
    assert main(["eval", "missing-model", "--tasks", "NoSuchTask", "--output", str(tmp_path)]) == 2
    assert "neither an existing file or folder nor an mteb task name" in capsys.readouterr().err
    assert main(["report", str(tmp_path), "--output", str(tmp_path / "r")]) == 2
    assert "No mteb results found" in capsys.readouterr().err
