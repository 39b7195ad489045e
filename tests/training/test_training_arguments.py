from __future__ import annotations

from pathlib import Path

import pytest

from matryoshka_st._bundled import SAMPLE_PAIRS
from matryoshka_st.training import ConfigError, parse_config
from matryoshka_st.training.arguments import DEFAULT_JOB_OUTPUT_DIR
from matryoshka_st.training.config_file import load_config_file


def test_flags_override_the_config_file(tmp_path):
    config_file = tmp_path / "run.yaml"
    config_file.write_text(
        "train_data: a.jsonl\nlearning_rate: 1.0e-3\nmatryoshka_dims: [64, 32]\noutput_dir: out\nmax_steps: 7\n"
    )
    config = parse_config({"learning_rate": 5e-5}, config_file)
    assert config.training.learning_rate == 5e-5  # flag wins
    assert config.training.max_steps == 7  # file wins over defaults
    assert config.matryoshka.matryoshka_dims == [64, 32]
    assert config.data.train_data == "a.jsonl"
    assert not config.default_job
    assert {"learning_rate", "max_steps", "train_data"} <= config.explicit


def test_json_config_file(tmp_path):
    config_file = tmp_path / "run.json"
    config_file.write_text('{"train_data": "a.jsonl", "per_device_train_batch_size": 4, "output_dir": "o"}')
    assert parse_config(config_file=config_file).training.per_device_train_batch_size == 4


def test_no_data_is_the_default_job():
    config = parse_config()
    assert config.default_job
    assert config.data.train_data == str(SAMPLE_PAIRS)
    assert config.training.output_dir == DEFAULT_JOB_OUTPUT_DIR
    assert config.training.overwrite_output_dir
    # explicit values still win over the default job's
    assert parse_config({"learning_rate": 3e-5}).training.learning_rate == 3e-5


def test_output_dir_defaults_to_the_model_name():
    config = parse_config({"train_data": "a.jsonl", "model_name_or_path": "/models/my-bert/"})
    assert config.training.output_dir.endswith("my-bert-matryoshka")
    assert not config.training.overwrite_output_dir


@pytest.mark.parametrize(
    "text, message",
    [
        ("train_data: [unclosed\n", "not valid YAML"),
        ("- just\n- a list\n", "must hold a mapping"),
        ("train_data: a.jsonl\nlearning_rat: 0.1\n", "unknown keys ['learning_rat']"),
    ],
)
def test_malformed_config_files(tmp_path, text, message):
    config_file = tmp_path / "bad.yaml"
    config_file.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config_file(config_file)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        parse_config(config_file=tmp_path / "nope.yaml")


def test_bad_value_types_are_config_errors():
    with pytest.raises(ConfigError, match="Unknown arguments"):
        parse_config({"not_a_flag": 1})
    with pytest.raises(ConfigError, match="Invalid training arguments"):
        parse_config({"train_data": "a.jsonl", "output_dir": "o", "eval_strategy": "sometimes"})


@pytest.mark.parametrize("preset", sorted(Path(__file__).resolve().parents[2].glob("examples/configs/*.yaml")))
def test_presets_parse(preset):
    config = parse_config({"bf16": False}, preset)  # bf16 needs a GPU; everything else must parse anywhere
    assert config.training.output_dir.startswith("output/")
    assert not config.default_job


def test_default_job_preset_matches_the_embedded_default_job():
    """examples/configs/minilm_default.yaml writes out default_job_settings(): they must not drift apart."""
    from matryoshka_st.training.arguments import default_job_settings

    preset = load_config_file(Path(__file__).resolve().parents[2] / "examples/configs/minilm_default.yaml")
    embedded = default_job_settings()
    # where each writes, and whether it may replace an earlier run, differ on purpose; paths are relative in the file
    differ = {"output_dir", "overwrite_output_dir", "dataloader_pin_memory", "train_data", "eval_retrieval"}
    shared = {key: value for key, value in embedded.items() if key not in differ}
    assert {key: preset.get(key) for key in shared} == shared
    assert set(preset) - set(embedded) == {"matryoshka_dims"}
    assert Path(embedded["train_data"]).name == Path(preset["train_data"]).name
    assert Path(embedded["eval_retrieval"]).name == Path(preset["eval_retrieval"]).name


@pytest.mark.parametrize(
    "line, message",
    [
        ("max_steps: two", "max_steps: 'two' is not a valid int"),
        ("max_steps: 2.5", "max_steps: 2.5 is not a whole number"),
        ("eval_strategy: stepz", "eval_strategy: 'stepz' is not a valid value .one of no, steps, epoch."),
        ("overwrite_output_dir: maybe", "'maybe' is not a valid true/false"),
        ("matryoshka_dims: [64, x]", "matryoshka_dims: 'x' is not a valid int"),
    ],
)
def test_config_file_values_of_the_wrong_type_name_the_key(tmp_path, line, message):
    path = tmp_path / "c.yaml"
    path.write_text(f"train_data: pairs.jsonl\n{line}\n")
    with pytest.raises(ConfigError, match=message):
        parse_config({}, path)


def test_config_file_strings_convert_like_flags(tmp_path):
    path = tmp_path / "c.yaml"
    # YAML reads 1e-5 as a string; mappings and library types are left to HfArgumentParser
    path.write_text('train_data: pairs.jsonl\nmax_steps: "3"\nlearning_rate: 1e-5\nliger_kernel_config: {a: true}\n')
    config = parse_config({}, path)
    assert (config.training.max_steps, config.training.learning_rate) == (3, 1e-5)
    assert config.training.liger_kernel_config == {"a": True}


def test_negative_learning_rate_is_refused_before_anything_loads():
    with pytest.raises(ConfigError, match="--learning_rate must be >= 0, got -1"):
        parse_config({"train_data": "pairs.jsonl", "learning_rate": -1})
