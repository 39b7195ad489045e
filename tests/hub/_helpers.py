"""A trained tiny Matryoshka model and eval results for it, built the way users build them (train, then eval)."""

from __future__ import annotations

from pathlib import Path

from tests._data import DOCS, QUERIES, write_beir, write_jsonl  # noqa: F401  (re-exported to the hub tests)
from tests.training._helpers import pair_rows, save_tiny_model

EVAL_DIMS = [64, 32, 16]


def train_tiny_model(folder: Path) -> str:
    """Two training steps of the tiny BERT with MatryoshkaLoss at dims [64, 32]: ``{folder}/out/final``."""
    from matryoshka_st.training import parse_config, run

    base = save_tiny_model(folder / "base")
    data = write_jsonl(folder / "pairs.jsonl", pair_rows(48))
    config = parse_config(
        {
            "model_name_or_path": base,
            "train_data": str(data),
            "output_dir": str(folder / "out"),
            "max_steps": 2,
            "per_device_train_batch_size": 8,
            "eval_size": 16,
            "report_to": "none",
            "seed": 1,
            "evaluate_before_training": False,
            # what the card's text states comes from model_card_data at training time
            "base_model": "sentence-transformers/all-MiniLM-L6-v2",
            "license": "apache-2.0",
            "language": ["en"],
        }
    )
    return run(config).model_path


_SHARED: dict[str, str] = {}


def shared_trained_model(tmp_path_factory) -> str:
    """:func:`train_tiny_model` once per test session, for every test module that only reads the model."""
    if "path" not in _SHARED:
        _SHARED["path"] = train_tiny_model(tmp_path_factory.mktemp("trained"))
    return _SHARED["path"]


def evaluate_models(models: dict[str, str], folder: Path, precisions=("float32", "int8", "binary")) -> Path:
    """``matryoshka-st eval`` results of ``models`` on a tiny retrieval task (named ``tiny_beir``) in ``folder``."""
    from matryoshka_st.evaluation import evaluate

    task = write_beir(folder / "tiny_beir")
    evaluate(
        models,
        [str(task)],
        dims=EVAL_DIMS,
        precisions=list(precisions),
        output_folder=folder / "eval",
        show_progress_bar=False,
    )
    return folder / "eval"
