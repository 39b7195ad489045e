"""A trained tiny Matryoshka model and eval results for it, built the way users build them (train, then eval)."""

from __future__ import annotations

from pathlib import Path

from tests.training._helpers import pair_rows, save_tiny_model, write_jsonl

QUERIES = ["a cat on a mat", "dogs in the park", "the market fell", "rain tomorrow", "piano music", "reading books"]
DOCS = [
    "the cat sat on the mat",
    "a dog ran in the park",
    "the stock market fell today",
    "rain is expected tomorrow",
    "she plays the piano",
    "he reads a book every night",
    "the train left the station",
    "bread is baked in an oven",
]
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
        }
    )
    return run(config).model_path


_SHARED: dict[str, str] = {}


def shared_trained_model(tmp_path_factory) -> str:
    """:func:`train_tiny_model` once per test session, for every test module that only reads the model."""
    if "path" not in _SHARED:
        _SHARED["path"] = train_tiny_model(tmp_path_factory.mktemp("trained"))
    return _SHARED["path"]


def write_beir(folder: Path) -> Path:
    """Six queries, eight documents, query i relevant to document i."""
    write_jsonl(folder / "corpus.jsonl", [{"_id": f"d{i}", "title": "", "text": t} for i, t in enumerate(DOCS)])
    write_jsonl(folder / "queries.jsonl", [{"_id": f"q{i}", "text": t} for i, t in enumerate(QUERIES)])
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    lines = ["query-id\tcorpus-id\tscore"] + [f"q{i}\td{i}\t1" for i in range(len(QUERIES))]
    (folder / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


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
