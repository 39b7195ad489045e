"""Named training recipes: validation, overrides, and what `matryoshka-st train` does with them."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Dense, Normalize
from transformers import TrainerCallback

from matryoshka_st.metadata import read_matryoshka_config
from matryoshka_st.posthoc.pca import encode_full, fit_pca_rotation
from matryoshka_st.recipes import DEFAULT_RECIPE, RECIPES, Recipe, get_recipe
from matryoshka_st.training import parse_config, run
from matryoshka_st.training.arguments import ConfigError
from tests.training._helpers import pair_rows

FAST = {"per_device_train_batch_size": 8, "logging_steps": 1, "report_to": "none", "seed": 1, "max_steps": 3}


def test_reference_recipe_sets_nothing_and_the_default_is_registered():
    assert get_recipe("reference").loss_kwargs() == {}
    assert get_recipe("reference").init == "none" and not get_recipe("reference").pca_after
    assert DEFAULT_RECIPE in RECIPES
    default = get_recipe(DEFAULT_RECIPE)
    assert default.loss_kwargs() == {"distill_weight": 1.0, "distill_temperature": 1.0, "full_dim_share": 0.4}
    assert default.init == "pca" and default.pca_after


def test_overrides_rename_and_ignore_none():
    default = get_recipe(DEFAULT_RECIPE)
    assert default.with_overrides(distill_weight=None, init="pca") is default  # nothing changes
    changed = default.with_overrides(distill_weight=0.0, pca_after=False)
    assert changed.name == f"{DEFAULT_RECIPE}+distill_weight=0.0,pca_after=False"
    assert changed.loss_kwargs() == {"full_dim_share": 0.4}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"init": "svd"}, "init must be 'none' or 'pca'"),
        ({"distill_weight": -1.0}, "distill_weight must be >= 0"),
        ({"distill_temperature": 0.0}, "distill_temperature must be > 0"),
        ({"full_dim_share": 1.5}, r"full_dim_share must be in \(0, 1\)"),
    ],
)
def test_recipe_checks_its_fields(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Recipe("bad", **kwargs)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"recipe": "fast"}, "Unknown recipe 'fast'"),
        ({"distill_weight": -0.5}, "--distill_weight must be >= 0"),
        ({"full_dim_share": 0}, r"--full_dim_share must be in \(0, 1\)"),
    ],
)
def test_bad_recipe_flags_fail_when_parsed(tmp_path, values, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({"train_data": "pairs.jsonl", "output_dir": str(tmp_path / "out"), **values})


def _dense_count(model_path: str) -> int:
    from sentence_transformers import SentenceTransformer

    return sum(isinstance(module, Dense) for module in SentenceTransformer(model_path, device="cpu"))


def test_reference_recipe_trains_exactly_the_reference(tiny_model_dir, pairs_file, tmp_path):
    values = {"model_name_or_path": tiny_model_dir, "train_data": str(pairs_file), **FAST}
    result = run(parse_config({**values, "output_dir": str(tmp_path / "ref"), "recipe": "reference"}))
    metadata = read_matryoshka_config(result.model_path)
    assert metadata.recipe["name"] == "reference"
    assert metadata.matryoshka_weights == [1.0] * len(metadata.matryoshka_dims)
    assert _dense_count(result.model_path) == 0  # no rotation before or after training


def test_default_recipe_rotates_before_and_after_and_records_itself(tiny_model_dir, pairs_file, tmp_path):
    values = {"model_name_or_path": tiny_model_dir, "train_data": str(pairs_file), **FAST}
    result = run(parse_config({**values, "output_dir": str(tmp_path / "default")}))
    metadata = read_matryoshka_config(result.model_path)
    assert metadata.recipe == get_recipe(DEFAULT_RECIPE).to_dict()
    assert _dense_count(result.model_path) == 1  # the PCA start, with the rotation after training composed into it
    # an override is recorded under its own name; without the PCA start the rotation after training is its own module
    result = run(parse_config({**values, "output_dir": str(tmp_path / "override"), "init": "none"}))
    assert read_matryoshka_config(result.model_path).recipe["name"] == f"{DEFAULT_RECIPE}+init=none"
    assert _dense_count(result.model_path) == 1


class _Snapshots(TrainerCallback):
    """Copies of the model as training starts (after the PCA start) and as it ends (before the PCA after it)."""

    def __init__(self) -> None:
        self.models: dict[str, SentenceTransformer] = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.models["start"] = copy.deepcopy(model).eval()

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.models["trained"] = copy.deepcopy(model).eval()


def _rotation(model: SentenceTransformer) -> np.ndarray:
    assert isinstance(model[-1], Normalize) and isinstance(model[-2], Dense), [type(m).__name__ for m in model]
    return model[-2].linear.weight.detach().numpy().astype(np.float64)


def _assert_ordered_by_variance(embeddings: np.ndarray) -> None:
    variance = embeddings.astype(np.float64).var(axis=0)  # (D,)
    assert np.all(np.diff(variance) <= 1e-9), np.diff(variance).max()


@pytest.mark.parametrize("recipe", ["pca", "pca-share-kl"])
def test_pca_recipes_rotate_by_pca_on_the_training_texts_before_and_after_training(
    tiny_model_dir, pairs_file, tmp_path, recipe
):
    """The PCA start is the model rotated by ``fit_pca_rotation`` of its own embeddings of the training texts, and
    the rotation after training is ``fit_pca_rotation`` of the trained model's, composed into the same module.

    Breakage check (each applied in a throwaway copy makes this test fail): in ``training/run.py`` replacing
    ``_rotate_by_pca(model, pca_texts, "a PCA start")`` with ``_add_identity_rotation(model)`` fails the start's
    rotation check; deleting the rotation after training (or folding in ``np.eye``, which changes nothing) or adding
    an identity module instead fails the final rotation check. The recipes are named, not ``DEFAULT_RECIPE``: a
    recipe with rotations inside each Matryoshka shell need not order every coordinate by variance.
    """
    rows = pair_rows()  # what pairs_file holds; no eval split, so every row trains and feeds the PCA texts
    texts = list(dict.fromkeys([row["anchor"] for row in rows] + [row["positive"] for row in rows]))
    snapshots = _Snapshots()
    values = {"model_name_or_path": tiny_model_dir, "train_data": str(pairs_file), **FAST}
    result = run(
        parse_config({**values, "output_dir": str(tmp_path / "out"), "recipe": recipe, "learning_rate": 1e-3}),
        callbacks=[snapshots],
    )
    base = SentenceTransformer(tiny_model_dir, device="cpu")
    start, trained = snapshots.models["start"], snapshots.models["trained"]
    final = SentenceTransformer(result.model_path, device="cpu")
    # the run encodes the texts in batches of 64: so does the test, so that the floats are the same
    base_embeddings, start_embeddings, trained_embeddings, final_embeddings = (
        encode_full(model, texts, batch_size=64) for model in (base, start, trained, final)
    )

    # the PCA start: the base model's PCA axes, prefixes by decreasing variance, full-dim cosines unchanged
    np.testing.assert_allclose(_rotation(start), fit_pca_rotation(base_embeddings), atol=1e-6)
    _assert_ordered_by_variance(start_embeddings)
    np.testing.assert_allclose(start_embeddings @ start_embeddings.T, base_embeddings @ base_embeddings.T, atol=1e-5)

    # training moved the axes (else the checks below could not tell a PCA after training from none)
    assert np.abs(fit_pca_rotation(trained_embeddings) - np.eye(64)).max() > 0.1
    # after training: the trained model's PCA axes composed into the start's module, cosines unchanged again
    expected = fit_pca_rotation(trained_embeddings).astype(np.float64) @ _rotation(trained)
    np.testing.assert_allclose(_rotation(final), expected, atol=1e-5)
    _assert_ordered_by_variance(final_embeddings)
    np.testing.assert_allclose(
        final_embeddings @ final_embeddings.T, trained_embeddings @ trained_embeddings.T, atol=1e-5
    )
    assert sum(isinstance(module, Dense) for module in final) == 1
