"""A few training steps with ``--bf16`` on CPU (torch autocast in bfloat16): finite per-dim losses, bf16 really used."""

from __future__ import annotations

import json
import math

import torch
from transformers import TrainerCallback

from matryoshka_st.training import parse_config, run
from tests.training._helpers import console_script, run_subprocess, scored_rows, write_jsonl

FAST = {"per_device_train_batch_size": 8, "logging_steps": 1, "report_to": "none", "seed": 1, "use_cpu": True}


class _RecordAutocast(TrainerCallback):
    """Records the autocast dtype in force (``None`` when off) each time the encoder runs during training."""

    def __init__(self) -> None:
        self.dtypes: set[torch.dtype] = set()

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        model[0].register_forward_pre_hook(lambda module, inputs: self.dtypes.add(_autocast_dtype()))


def _autocast_dtype() -> torch.dtype | None:
    return torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None


def _logged_losses(output_dir) -> list[dict[str, float]]:
    state = json.loads(next(output_dir.glob("checkpoint-*/trainer_state.json")).read_text())
    return [entry for entry in state["log_history"] if "loss_dim_64" in entry]


def test_bf16_steps_with_softmax_heads(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "nli.jsonl", scored_rows(32, integer=True))
    recorder = _RecordAutocast()
    config = parse_config(
        {
            "model_name_or_path": tiny_model_dir,
            "train_data": str(data),
            "output_dir": str(tmp_path / "out"),
            "max_steps": 3,
            "save_steps": 3,
            "bf16": True,
            "matryoshka_dims": [64, 16],
            "head_mode": "shared",
            **FAST,
        }
    )
    result = run(config, callbacks=[recorder])
    assert recorder.dtypes == {torch.bfloat16}
    assert result.global_step == 3
    logged = _logged_losses(tmp_path / "out")
    assert len(logged) == 3
    assert all(math.isfinite(entry[key]) for entry in logged for key in ("loss", "loss_dim_64", "loss_dim_16"))


def test_console_script_bf16_with_cached_mnrl(tiny_model_dir, pairs_file, tmp_path):
    flags = {
        "model_name_or_path": tiny_model_dir,
        "train_data": str(pairs_file),
        "output_dir": "out",
        "loss": "CachedMultipleNegativesRankingLoss",
        "loss_kwargs": '{"mini_batch_size": 4}',
        "max_steps": 3,
        "save_steps": 3,
        **FAST,
    }
    command = [console_script(), "train", "--bf16", *[part for k, v in flags.items() for part in (f"--{k}", str(v))]]
    process = run_subprocess(command, tmp_path)
    assert process.returncode == 0, process.stderr[-4000:]
    logged = _logged_losses(tmp_path / "out")
    assert len(logged) == 3
    assert all(math.isfinite(entry[key]) for entry in logged for key in ("loss", "loss_dim_64", "loss_dim_32"))
    assert "saved to" in process.stdout
    # a normal run logs the world size it got
    assert "Launched: world size 1 (distributed type NO, device cpu, mixed precision bf16" in process.stderr
