"""Runs in real processes: two CPU processes (gloo) under torchrun, and SIGKILL mid-run followed by a resume."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from matryoshka_st.metadata import read_matryoshka_config
from matryoshka_st.training import parse_config, run
from tests.training._helpers import pair_rows, run_subprocess, scored_rows, write_jsonl

ARGS = {
    "per_device_train_batch_size": 8,
    "learning_rate": 1e-3,
    "seed": 3,
    "logging_steps": 1,
    "report_to": "none",
    "dataloader_pin_memory": False,
}


def _flags(values: dict) -> list[str]:
    flags = []
    for key, value in values.items():
        flags += [f"--{key}", *(map(str, value) if isinstance(value, list) else [str(value)])]
    return flags


@pytest.mark.slow
def test_two_cpu_processes_with_gloo(tiny_model_dir, tmp_path):
    write_jsonl(tmp_path / "pairs.jsonl", pair_rows(48))
    values = {
        **ARGS,
        "model_name_or_path": tiny_model_dir,
        "train_data": "pairs.jsonl",
        "output_dir": "out",
        "max_steps": 3,
        "save_steps": 2,
        "eval_size": 8,
        "per_device_train_batch_size": 4,
        "gather_across_devices": True,
    }
    torchrun = str(Path(sys.executable).parent / "torchrun")
    command = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "matryoshka_st", "train", *_flags(values)]
    process = run_subprocess(command, tmp_path)
    assert process.returncode == 0, process.stderr[-4000:]
    # both processes trained, only the main one evaluated, logged, printed and wrote the final model
    assert process.stdout.count("saved to") == 1
    assert process.stderr.count("Saving the final model") == 1
    assert process.stderr.count("Evaluating the base model") == 1
    assert process.stderr.count("Launched: world size 2 (distributed type MULTI_CPU") == 1
    state = json.loads((tmp_path / "out" / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    assert read_matryoshka_config(tmp_path / "out" / "final").matryoshka_dims == [64, 32]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["checkpoint-2", "checkpoint-3", "final"]
    # 40 training rows in batches of 4 per process: 5 steps per epoch with 2 processes (10 with one)
    assert state["epoch"] == pytest.approx(3 / 5)


KILLER = """
import json, os, signal, sys
from transformers import TrainerCallback
from matryoshka_st.training import parse_config, run

class KillAt(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 5:
            os.kill(os.getpid(), signal.SIGKILL)

run(parse_config(json.loads(sys.argv[1])), callbacks=[KillAt()])
"""


def _assert_same_json(actual, expected, where: str) -> None:
    """Parsed JSON equal, floats to rel 1e-4 (the weights agree to 1e-5, not bit for bit, so numbers fitted on
    them, such as int8 scales, may differ in their last digits)."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys(), where
        for key in expected:
            _assert_same_json(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected)):
            _assert_same_json(a, e, f"{where}[{i}]")
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected, rel=1e-4, abs=1e-7), where
    else:
        assert actual == expected, where


def _final_files(folder: Path) -> dict[str, Path]:
    return {str(path.relative_to(folder)): path for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["MultipleNegativesRankingLoss", "SoftmaxLoss"])
def test_sigkill_then_resume_matches_an_uninterrupted_run(tiny_model_dir, tmp_path, loss):
    """Killed at step 5 and resumed from checkpoint-4, the run saves what an uninterrupted run saves: every weight
    file under ``final/`` (the encoder, the default recipe's rotation in ``2_Dense/``, SoftmaxLoss's heads per dim)
    and ``matryoshka_config.json``.

    Breakage checks (each in a throwaway copy fails the SoftmaxLoss case): not loading the checkpoint's heads
    (``loss.load_heads(resume)`` in ``training/run.py``); not seeding before the loss is built (the in-process
    reference then starts from other heads than the killed subprocess).
    """
    rows = pair_rows(64) if loss == "MultipleNegativesRankingLoss" else scored_rows(64, integer=True)
    write_jsonl(tmp_path / "train.jsonl", rows)
    values = {
        **ARGS,
        "model_name_or_path": tiny_model_dir,
        "train_data": str(tmp_path / "train.jsonl"),
        "max_steps": 8,
        "save_steps": 2,
        "matryoshka_dims": [64, 32, 16],
    }
    reference = run(parse_config({**values, "output_dir": str(tmp_path / "reference")}))
    assert read_matryoshka_config(reference.model_path).loss == loss

    (tmp_path / "killer.py").write_text(KILLER)
    killed = run_subprocess([sys.executable, "killer.py", json.dumps({**values, "output_dir": "resumed"})], tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    left = sorted(p.name for p in (tmp_path / "resumed").iterdir())
    assert left == ["checkpoint-2", "checkpoint-4"]  # killed at step 5: no final model

    resumed = run_subprocess(
        [sys.executable, "-m", "matryoshka_st", "train", *_flags(values)]
        + ["--output_dir", "resumed", "--resume_from_checkpoint", "latest"],
        tmp_path,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from" in resumed.stderr

    expected_files = _final_files(Path(reference.model_path))
    actual_files = _final_files(tmp_path / "resumed" / "final")
    assert actual_files.keys() == expected_files.keys()
    weight_files = [name for name in expected_files if name.endswith(".safetensors")]
    wanted = {"model.safetensors", "2_Dense/model.safetensors"}
    if loss == "SoftmaxLoss":
        wanted.add("matryoshka_heads.safetensors")
    assert wanted <= set(weight_files), weight_files
    start = load_file(str(Path(tiny_model_dir) / "model.safetensors"))
    encoder = load_file(str(expected_files["model.safetensors"]))
    assert any(not torch.equal(start[k], encoder[k]) for k in encoder)  # training did change the weights
    for name in weight_files:
        expected, actual = load_file(str(expected_files[name])), load_file(str(actual_files[name]))
        assert expected.keys() == actual.keys(), name
        for key in expected:
            torch.testing.assert_close(actual[key], expected[key], atol=1e-5, rtol=1e-4, msg=f"{name}: {key}")
    for name in ["matryoshka_config.json"] + (["matryoshka_heads.json"] if loss == "SoftmaxLoss" else []):
        actual, expected = (json.loads(files[name].read_text()) for files in (actual_files, expected_files))
        _assert_same_json(actual, expected, name)
