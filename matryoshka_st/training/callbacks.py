"""Trainer callbacks of a Matryoshka run: stop on a non-finite loss; add the Matryoshka files to each checkpoint."""

from __future__ import annotations

import os

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from matryoshka_st.losses import MatryoshkaLoss
from matryoshka_st.metadata import matryoshka_config_from_loss, write_matryoshka_config


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the message names the step and the last good checkpoint."""


class StopOnNonFiniteLoss(TrainerCallback):
    """Stop before the optimizer applies a NaN/inf gradient, naming the step and the last good checkpoint.

    The check runs on the gradients, which every process holds identically after the all-reduce, so all
    processes stop at the same step instead of some waiting forever for the others.
    """

    def __init__(self, loss: MatryoshkaLoss) -> None:
        self.loss = loss

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        grads = [p.grad for p in self.loss.parameters() if p.grad is not None]
        if not grads or torch.isfinite(torch.nn.utils.get_total_norm(grads)):
            return
        step = state.global_step + 1
        components = ", ".join(f"loss_dim_{dim}={value:.4g}" for dim, value in self.loss.last_dim_losses.items())
        last = get_last_checkpoint(args.output_dir) if os.path.isdir(args.output_dir) else None
        keep = (
            f"The last good checkpoint is {last}: resume from it with --resume_from_checkpoint {last}"
            if last
            else "No checkpoint was saved before it (set --save_steps lower to keep one)"
        )
        raise NonFiniteLossError(
            f"The training loss became NaN or infinite at step {step} ({components}); training stopped before the "
            f"optimizer step. {keep}, after lowering --learning_rate or setting --max_grad_norm."
        )


class SaveMatryoshkaExtras(TrainerCallback):
    """Add ``matryoshka_config.json`` and the loss's classifier heads to every checkpoint (main process only)."""

    def __init__(self, loss: MatryoshkaLoss) -> None:
        self.loss = loss

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if os.path.isdir(folder):
            write_matryoshka_config(folder, matryoshka_config_from_loss(self.loss))
            if self.loss.heads is not None:
                self.loss.save_heads(folder)
