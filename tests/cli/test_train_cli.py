"""``matryoshka-st train``: every bad input exits non-zero with a clear message and writes nothing; one real run of
the console script."""

from __future__ import annotations

import logging
import os
import sys

import pytest

from matryoshka_st.cli import main
from matryoshka_st.metadata import read_matryoshka_config
from tests.training._helpers import console_script, pair_rows, run_subprocess, save_tiny_model, write_jsonl

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return save_tiny_model(tmp_path_factory.mktemp("cli_tiny"))


@pytest.fixture()
def workdir(tmp_path):
    write_jsonl(tmp_path / "pairs.jsonl", pair_rows(32))
    write_jsonl(tmp_path / "labels.jsonl", [{"text": "a b", "label": 0.5}, {"text": "c d", "label": 1.5}])
    write_jsonl(
        tmp_path / "grouped.jsonl", pair_rows(31) + [{"anchor": "x y", "positive": "x y z", "source": "lonely"}]
    )
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "broken.jsonl").write_text('{"anchor": "a", "positive"\n')
    (tmp_path / "bad.yaml").write_text("learning_rate: [1e-5\n")
    (tmp_path / "unknown.yaml").write_text("train_data: pairs.jsonl\nlearnin_rate: 0.1\n")
    return tmp_path


def _listing(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--train_data", "pairs.jsonl", "--loss", "FancyLoss"], "Unknown loss 'FancyLoss'"),
        (["--train_data", "pairs.jsonl", "--loss", "CoSENTLoss"], "do not fit CoSENTLoss"),
        (["--train_data", "labels.jsonl"], "Cannot choose a loss from the columns ['text', 'label']"),
        (["--train_data", "empty.jsonl"], "is empty"),
        (["--train_data", "missing.jsonl"], "'missing.jsonl' does not exist"),
        (["--train_data", "broken.jsonl"], "broken.jsonl:1: line 1 is not valid JSON"),
        (["--train_data", "pairs.jsonl", "--matryoshka_dims", "64", "0"], "must be positive, got [0]"),
        (
            ["--train_data", "pairs.jsonl", "--matryoshka_dims", "128", "32"],
            "exceed the model's embedding dimension 64",
        ),
        (["--train_data", "pairs.jsonl", "--matryoshka_dims", "64", "32", "--matryoshka_weights", "1"], "one weight"),
        (["bad.yaml"], "is not valid YAML"),
        (["--config", "unknown.yaml"], "unknown keys ['learnin_rate']"),
        (["--train_data", "pairs.jsonl", "--eval_strategy", "steps"], "needs evaluation data"),
        (["--train_data", "pairs.jsonl", "--loss_kwargs", '{"scael": 2}'], "does not accept the keyword"),
        (["--train_data", "pairs.jsonl", "--group_by", "origin"], "group_by 'origin' is not a column"),
        (["--train_data", "grouped.jsonl", "--group_by", "source"], "the groups ['lonely'] have one row each"),
    ],
)
def test_bad_input_exits_non_zero_and_writes_nothing(model_dir, workdir, monkeypatch, capsys, args, message):
    monkeypatch.chdir(workdir)
    before = _listing(workdir)
    code = main(["train", "--model_name_or_path", model_dir, "--output_dir", "out", *args])
    assert code == 2
    assert message in capsys.readouterr().err
    assert _listing(workdir) == before and not (workdir / "out").exists()


def test_existing_model_needs_overwrite(model_dir, workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    (workdir / "out" / "final").mkdir(parents=True)
    (workdir / "out" / "final" / "modules.json").write_text("[]")
    before = _listing(workdir)
    code = main(["train", "--model_name_or_path", model_dir, "--train_data", "pairs.jsonl", "--output_dir", "out"])
    assert code == 2
    err = capsys.readouterr().err
    assert "already holds a model in final/" in err and "--overwrite_output_dir" in err
    assert _listing(workdir) == before


def test_missing_model_folder(workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    assert main(["train", "--model_name_or_path", "./no-model", "--train_data", "pairs.jsonl"]) == 2
    assert "Model folder './no-model' does not exist" in capsys.readouterr().err
    assert not (workdir / "output").exists()


def test_help_lists_every_argument_group(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--train_data", "--matryoshka_dims", "--learning_rate", "--overwrite_output_dir", "--bf16"):
        assert flag in out
    assert "(default: separate)" in out


@pytest.mark.slow
def test_console_script_runs_end_to_end(model_dir, workdir):
    (workdir / "run.yaml").write_text(
        f"model_name_or_path: {model_dir}\ntrain_data: pairs.jsonl\neval_size: 8\nmax_steps: 2\n"
        "per_device_train_batch_size: 8\nlearning_rate: 1.0e-3\n"
    )
    process = run_subprocess(
        [console_script(), "train", "run.yaml", "--output_dir", "out", "--matryoshka_dims", "64", "16"], workdir
    )
    assert process.returncode == 0, process.stderr[-3000:]
    assert "fine-tuned ndcg@10" in process.stdout
    assert "saved to" in process.stdout
    assert read_matryoshka_config(workdir / "out" / "final").matryoshka_dims == [64, 16]


@pytest.mark.slow
def test_console_script_exits_1_on_a_nan_loss_and_names_the_last_good_checkpoint(model_dir, workdir):
    """A learning rate of 1e30 (Adam steps each weight by about that much) overflows the second step's forward."""
    process = run_subprocess(
        [console_script(), "train", "--model_name_or_path", model_dir, "--train_data", "pairs.jsonl"]
        + ["--output_dir", "out", "--max_steps", "6", "--save_steps", "1", "--learning_rate", "1e30"]
        + ["--per_device_train_batch_size", "8"],
        workdir,
    )
    assert process.returncode == 1, process.stderr[-3000:]
    (line,) = [line for line in process.stderr.splitlines() if line.startswith("error:")]
    assert "became NaN or infinite at step 2" in line and "--resume_from_checkpoint out/checkpoint-1" in line, line
    assert "Traceback" not in process.stderr and "saved to" not in process.stdout
    assert sorted(os.listdir(workdir / "out")) == ["checkpoint-1"]  # no final model, no later checkpoint


def test_default_job_report_is_skipped_without_mteb(monkeypatch, caplog):
    """On a machine without mteb (a bare GPU image) the default job still trains and saves; only the report goes."""
    from matryoshka_st.cli.train import _default_job_report

    monkeypatch.setitem(sys.modules, "mteb", None)  # import mteb -> ImportError
    monkeypatch.setitem(sys.modules, "matryoshka_st.evaluation", None)
    with caplog.at_level(logging.WARNING, logger="matryoshka_st.cli.train"):
        _default_job_report(config=None, result=None)  # returns before touching either
    assert "Skipping the MTEB report of the default job" in caplog.text
