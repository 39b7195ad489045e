from __future__ import annotations

import json
import shutil

import pytest
from huggingface_hub import ModelCard

from matryoshka_st.hub import CardError, build_card, load_eval_results
from matryoshka_st.hub.card import PLOT_NAME, SECTION_END, SECTION_START
from tests.hub._helpers import EVAL_DIMS, evaluate_models
from tests.hub.card_pattern import CARD_PATTERN

CARD_ARGS = {
    "repo_id": "you/tiny-matryoshka",
    "base_model": "sentence-transformers/all-MiniLM-L6-v2",
    "license": "apache-2.0",
    "language": "en",
    "datasets": ["sentence-transformers/all-nli"],
}


@pytest.fixture(scope="module")
def summary(eval_dir, tmp_path_factory):
    return load_eval_results([eval_dir], tmp_path_factory.mktemp("report"))


def test_whole_card_matches_pattern(trained_model_dir, summary):
    card = build_card(trained_model_dir, results=summary, **CARD_ARGS)
    match = CARD_PATTERN.fullmatch(str(card))
    assert match is not None, str(card)
    assert int(match["recommended"]) == summary.recommended_dim
    # the snippet serves the recommended dim, or the largest trained dim below the full size when that is it
    assert int(match["serve"]) == (summary.recommended_dim if summary.recommended_dim < 64 else 32)
    # the snippet's smaller dim is a trained dim below the served one; when none is left (32 is the smallest), the same
    assert int(match["small"]) < int(match["serve"]) or match["small"] == match["serve"] == "32"


def test_eval_summary_values(summary):
    assert summary.label == "tuned"
    assert summary.tasks == {"tiny_beir": "ndcg_at_10"}
    assert summary.full_dim == 64
    assert set(summary.scores) == {"float32", "int8", "binary"}
    assert sorted(summary.scores["float32"], reverse=True) == EVAL_DIMS
    assert summary.share("tiny_beir", 64) == pytest.approx(1.0)
    assert summary.recommended_dim in EVAL_DIMS
    assert summary.plot is not None and summary.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_model_index_has_every_dim_and_precision(trained_model_dir, summary, tmp_path):
    path = tmp_path / "README.md"
    build_card(trained_model_dir, results=summary, **CARD_ARGS).save(path)
    data = ModelCard.load(path).data
    ours = [r for r in data.eval_results if r.dataset_name == "tiny_beir"]
    found = {(r.metric_args["truncate_dim"], r.metric_args.get("precision", "float32")): r for r in ours}
    assert set(found) == {(d, p) for d in EVAL_DIMS for p in ("float32", "int8", "binary")}
    for (dim, precision), result in found.items():
        assert result.metric_type == "ndcg_at_10"
        assert result.task_type == "text-retrieval"
        assert result.metric_value == pytest.approx(summary.scores[precision][dim]["tiny_beir"], abs=1e-6)
    # sentence-transformers' own per-dim training evaluations are kept
    assert {r.dataset_name for r in data.eval_results} >= {"heldout dim 64", "heldout dim 32"}
    assert data.model_name == "tiny-matryoshka"
    assert data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert data.license == "apache-2.0" and data.language == "en"
    assert data.datasets == ["sentence-transformers/all-nli"]
    assert {"matryoshka", "sentence-transformers", "loss:MatryoshkaLoss"} <= set(data.tags)
    assert data.library_name == "sentence-transformers"


def test_card_extends_the_sentence_transformers_card(trained_model_dir, summary, tmp_path):
    original = ModelCard.load(f"{trained_model_dir}/README.md")
    card = build_card(trained_model_dir, results=summary, **CARD_ARGS)
    headings = [line for line in original.text.splitlines() if line.startswith("#") and not line.startswith("# ")]
    text = card.text
    position = 0
    for heading in headings:  # sentence-transformers' sections are all kept, in order
        position = text.index(heading, position) + len(heading)
    assert text.index(SECTION_START) < text.index("## Model Details")
    assert "sentence_transformers_model_id" not in text

    # building from a card that already has the section replaces it
    model = tmp_path / "model"
    shutil.copytree(trained_model_dir, model)
    card.save(model / "README.md")
    again = build_card(model, results=summary, **CARD_ARGS)
    assert again.text.count(SECTION_START) == again.text.count(SECTION_END) == 1
    assert str(again) == str(card)


def test_card_without_results_uses_the_training_recommendation(trained_model_dir):
    metadata = json.loads(open(f"{trained_model_dir}/matryoshka_config.json").read())
    card = build_card(trained_model_dir, repo_id="you/tiny")
    text = card.text
    assert f"**Recommended dimension: {metadata['recommended_truncate_dim']}**" in text
    assert "### Quality by dimension" not in text and PLOT_NAME not in text
    assert "| float32 | 256 | 128 |" in text  # bytes per vector at the trained dims 64 and 32
    assert f'SentenceTransformer("you/tiny", truncate_dim={metadata["recommended_truncate_dim"]})' in text
    assert "normalize_embeddings=True" in text
    assert not [r for r in card.data.eval_results or [] if r.metric_args]
    assert "matryoshka" in card.data.tags


def test_results_with_several_models(trained_model_dir, tmp_path):
    from tests.training._helpers import save_tiny_model

    base = save_tiny_model(tmp_path / "untrained")
    results = evaluate_models({"base": base, "tuned": trained_model_dir}, tmp_path, precisions=["float32"])

    picked = load_eval_results([results], tmp_path / "r1", model_dir=trained_model_dir)  # by parameter hash
    assert picked.label == "tuned" and set(picked.others) == {"base"}
    assert load_eval_results([results], tmp_path / "r2", model="base").label == "base"
    section = build_card(trained_model_dir, results=picked, repo_id="you/t").text
    assert "| dim | tiny_beir nDCG@10 | base |" in section

    with pytest.raises(CardError, match=r"several models \['base', 'tuned'\].*--results-model"):
        load_eval_results([results], tmp_path / "r3")
    with pytest.raises(CardError, match="No results for model 'other'"):
        load_eval_results([results], tmp_path / "r4", model="other")
    with pytest.raises(CardError, match="does not exist"):
        load_eval_results([tmp_path / "missing"], tmp_path / "r5")


def test_full_size_recommended_still_shows_truncation(trained_model_dir):
    from matryoshka_st.hub import EvalSummary
    from matryoshka_st.hub.card import render_section

    scores = {"float32": {64: {"t": 0.50, "mean": 0.50}, 32: {"t": 0.45, "mean": 0.45}}}
    results = EvalSummary("tuned", {"t": "ndcg_at_10"}, scores, keep=0.98)
    section = render_section(trained_model_dir, model_id="you/t", results=results)
    assert "**Recommended dimension: 64** (the full size: no smaller dimension keeps 98% of its score" in section
    assert "32 keeps 90.0%" in section
    assert 'SentenceTransformer("you/t", truncate_dim=32)' in section
    assert "| **64** | 0.5000 (100.0%) |\n| 32 | 0.4500 (90.0%) |" in section
    assert "![" not in section  # no plot file without a rendered report


def test_card_text_is_sentence_transformers_own_and_metadata_can_be_added(trained_model_dir, caplog):
    # the text was filled from model_card_data at training time (train --base_model --license --language) ...
    card = build_card(trained_model_dir, repo_id="you/tiny")
    assert "- **License:** apache-2.0" in card.text and "- **Language:** en" in card.text
    assert "finetuned from [sentence-transformers/all-MiniLM-L6-v2]" in card.text
    # ... and is not rewritten at push time: other metadata goes to the front matter only, with a warning
    with caplog.at_level("WARNING"):
        other = build_card(trained_model_dir, repo_id="you/tiny", license="mit")
    assert other.data.license == "mit" and "- **License:** apache-2.0" in other.text
    assert "set at training time" in caplog.text and "--license" in caplog.text
