"""Named training recipes: validation, overrides, and what `matryoshka-st train` does with them."""

from __future__ import annotations

import pytest
from sentence_transformers.base.modules import Dense

from matryoshka_st.metadata import read_matryoshka_config
from matryoshka_st.recipes import DEFAULT_RECIPE, RECIPES, Recipe, get_recipe
from matryoshka_st.training import parse_config, run
from matryoshka_st.training.arguments import ConfigError

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
