"""Matryoshka fine-tuning on top of ``SentenceTransformerTrainer``: configuration, data and the run itself."""

from __future__ import annotations

from matryoshka_st.training.arguments import (
    ConfigError,
    DataArguments,
    MatryoshkaArguments,
    ModelArguments,
    TrainConfig,
    TrainingArguments,
    parse_config,
)
from matryoshka_st.training.callbacks import NonFiniteLossError
from matryoshka_st.training.data import DataError
from matryoshka_st.training.run import TrainResult, run, train

__all__ = [
    "ConfigError",
    "DataArguments",
    "DataError",
    "MatryoshkaArguments",
    "ModelArguments",
    "NonFiniteLossError",
    "TrainConfig",
    "TrainResult",
    "TrainingArguments",
    "parse_config",
    "run",
    "train",
]
