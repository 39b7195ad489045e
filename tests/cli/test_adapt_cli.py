"""``matryoshka-st adapt``: the texts reader, errors before the model loads, and one real console run."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from matryoshka_st.cli import main
from matryoshka_st.cli.adapt import read_texts
from tests.posthoc.conftest import make_texts


def write_jsonl(path, rows):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    return path


def test_read_texts(tmp_path):
    lines = tmp_path / "texts.txt"
    lines.write_text("first text\n\nsecond text\nfirst text\n", encoding="utf-8")
    assert read_texts(lines) == ["first text", "second text"]
    pairs = write_jsonl(tmp_path / "pairs.jsonl.gz", [{"anchor": "a", "positive": "b", "source": "x"}, {"text": "c"}])
    assert read_texts(pairs) == ["a", "b", "c"]
    assert read_texts(write_jsonl(tmp_path / "t.jsonl", [{"body": "x"}]), text_field="body") == ["x"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("t.csv", "a,b\n", "neither .txt"),
        ("t.jsonl", '{"body": "x"}\n', "none of the fields.*found \\['body'\\].*--text-field"),
        ("t.jsonl", '{"text": "x"}\nnot json\n', "line 2 is not valid JSON"),
        ("t.jsonl", '{"text": 3}\n', "expected text, got int"),
        ("t.txt", "\n  \n", "holds no text"),
    ],
)
def test_read_texts_errors(tmp_path, name, content, message):
    (tmp_path / name).write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        read_texts(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="No such texts file"):
        read_texts(tmp_path / "missing.txt")


def test_bad_arguments_fail_before_the_model_loads(tmp_path, capsys):
    texts = tmp_path / "texts.txt"
    texts.write_text("one\ntwo\n", encoding="utf-8")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("x")
    base = ["adapt", str(tmp_path / "no-such-model"), "--output", str(tmp_path / "out")]
    assert main([*base, "--texts", str(tmp_path / "missing.txt")]) == 2
    assert "No such texts file" in capsys.readouterr().err
    assert main([*base, "--texts", str(texts), "--dims", "64", "0"]) == 2
    assert "must be positive" in capsys.readouterr().err
    assert main(["adapt", "m", "--texts", str(texts), "--output", str(tmp_path / "taken")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_console_subprocess(tiny_model, tmp_path):
    tiny_model.save(str(tmp_path / "model"))
    texts = make_texts(120)
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    output = tmp_path / "adapted"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "matryoshka_st", "adapt", str(tmp_path / "model"), "--texts"]
    command += [str(tmp_path / "texts.txt"), "--method", "pca", "--output", str(output), "--max-texts", "100"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "Wrote" in result.stderr
    adapted = SentenceTransformer(str(output), device="cpu")
    before, after = tiny_model.encode(texts[:10]), adapted.encode(texts[:10])
    np.testing.assert_allclose(after @ after.T, before @ before.T, atol=1e-5)
    assert np.abs(after - before).max() > 0.1
