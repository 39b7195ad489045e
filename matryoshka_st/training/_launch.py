"""What the launcher actually gave this run: world size, distributed type, device, precision.

``accelerate launch --cpu --num_processes 2`` starts ONE process (accelerate's simple launcher; several CPU processes
need mpirun), and a run on a multi-GPU machine started with plain ``python`` uses one GPU. Both train correctly but
alone, so the world size is logged at startup and the common traps get a warning.
"""

from __future__ import annotations

import logging
import os

import torch
from transformers import TrainingArguments

logger = logging.getLogger(__name__)

_TRUE = ("1", "true", "yes")


def log_launch(training: TrainingArguments) -> str:
    """Log (on the main process) the world size, distributed type, device and mixed precision of this run, and warn
    when a run that was probably meant to use several processes got one. Returns the logged line.

    Example:
        >>> from transformers import TrainingArguments
        >>> log_launch(TrainingArguments("out", use_cpu=True))  # doctest: +ELLIPSIS
        'Launched: world size 1 (distributed type NO, device cpu, mixed precision no...).'
    """
    world_size = training.world_size  # sets up the devices, and with them distributed_state
    distributed_type = training.distributed_state.distributed_type.name
    precision = "bf16" if training.bf16 else "fp16" if training.fp16 else "no"
    line = (
        f"Launched: world size {world_size} (distributed type {distributed_type}, "
        f"device {training.device}, mixed precision {precision}, process {training.process_index})."
    )
    if training.process_index != 0:
        return line
    logger.info(line)
    if training.fp16 and training.device.type == "cpu":
        logger.warning("--fp16 has no effect on CPU (accelerate autocasts float16 on GPUs only): use --bf16 there.")
    if world_size == 1:
        if os.environ.get("ACCELERATE_USE_CPU", "").lower() in _TRUE:
            logger.warning(
                "`accelerate launch --cpu` started a single process (--num_processes is ignored for CPU processes "
                "without mpirun). For several CPU processes use `torchrun --nproc_per_node N -m matryoshka_st train`."
            )
        elif torch.cuda.is_available() and torch.cuda.device_count() > 1 and not training.use_cpu:
            logger.warning(
                "%d GPUs are visible but this run uses one process. To use them all: `accelerate launch "
                "--multi_gpu --num_processes %d -m matryoshka_st train ...` or `torchrun --nproc_per_node %d ...`.",
                torch.cuda.device_count(),
                torch.cuda.device_count(),
                torch.cuda.device_count(),
            )
    return line
