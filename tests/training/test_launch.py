from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
from transformers import TrainingArguments

from matryoshka_st.training._launch import log_launch
from tests.training._helpers import run_subprocess


def test_logs_world_size_one(tmp_path, caplog, monkeypatch):
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    with caplog.at_level(logging.INFO, logger="matryoshka_st.training._launch"):
        line = log_launch(TrainingArguments(str(tmp_path), use_cpu=True, bf16=True))
    assert line == "Launched: world size 1 (distributed type NO, device cpu, mixed precision bf16, process 0)."
    assert [record.getMessage() for record in caplog.records] == [line]


def test_warns_when_accelerate_launch_cpu_gave_one_process(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_CPU", "True")  # what `accelerate launch --cpu` sets
    with caplog.at_level(logging.INFO, logger="matryoshka_st.training._launch"):
        log_launch(TrainingArguments(str(tmp_path), use_cpu=True))
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and "torchrun --nproc_per_node N" in warnings[0]


@pytest.mark.slow
def test_accelerate_launch_cpu_runs_one_process_and_says_so(tiny_model_dir, pairs_file, tmp_path):
    """accelerate's simple launcher ignores --num_processes for --cpu: one process trains, and the log says so."""
    accelerate = str(Path(sys.executable).parent / "accelerate")
    command = [accelerate, "launch", "--cpu", "--num_processes", "2", "-m", "matryoshka_st", "train"]
    command += ["--model_name_or_path", tiny_model_dir, "--train_data", str(pairs_file), "--output_dir", "out"]
    command += [
        "--max_steps",
        "1",
        "--per_device_train_batch_size",
        "4",
        "--report_to",
        "none",
        "--save_strategy",
        "no",
    ]
    process = run_subprocess(command, tmp_path)
    assert process.returncode == 0, process.stderr[-4000:]
    assert process.stderr.count("Launched: world size 1 (distributed type NO") == 1
    assert "`accelerate launch --cpu` started a single process" in process.stderr


def test_warns_that_fp16_does_nothing_on_cpu(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="matryoshka_st.training._launch"):
        log_launch(TrainingArguments(str(tmp_path), use_cpu=True, fp16=True))
    assert "--fp16 has no effect on CPU" in caplog.text
