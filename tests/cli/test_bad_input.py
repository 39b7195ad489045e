"""Bad input and interrupted work, as a new user meets them: one row per case, each a real run of the CLI in a
subprocess. A refusal exits 2 with one line on stderr that names the file or value (no traceback), and every file
written earlier (a model, checkpoints, eval results, an index) is byte-identical afterwards.

The world each row runs in (a tiny model, small data files, an earlier run's outputs) is built once, in process,
and copied per row so that rows that damage a file do not affect the others.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from matryoshka_st.metadata import MATRYOSHKA_CONFIG_NAME, MatryoshkaConfig, write_matryoshka_config
from tests._data import write_beir
from tests.training._helpers import cli_env, pair_rows, save_tiny_model, write_jsonl

pytest.importorskip("faiss")

RESULTS = "eval_out/results"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """The files every row starts from; ``checkpoints``, ``eval_out``, ``index`` and ``final`` are earlier outputs."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Dense

    from matryoshka_st.evaluation import evaluate
    from matryoshka_st.posthoc.pca import insert_before_normalize
    from matryoshka_st.search import FunnelIndex

    root = tmp_path_factory.mktemp("world")
    model = save_tiny_model(tmp_path_factory.mktemp("tiny"))
    shutil.copytree(model, root / "model")
    shutil.copytree(model, root / "final")
    write_matryoshka_config(root / "final", MatryoshkaConfig([64, 32], [1.0, 1.0], 64, 32, loss="CoSENTLoss"))
    write_jsonl(root / "pairs.jsonl", pair_rows(16))
    write_jsonl(root / "one.jsonl", pair_rows(1))
    (root / "latin1.jsonl").write_bytes(b'{"anchor": "caf\xe9 au lait", "positive": "coffee"}\n')
    (root / "broken.jsonl").write_text('{"anchor": "a", "positive": "b"}\n{"anchor": "a", "positive"\n')
    write_jsonl(root / "words.jsonl", [{"sentence1": "a b", "sentence2": "c d", "score": s} for s in ("high", "low")])
    (root / "two.yaml").write_text("train_data: pairs.jsonl\nmax_steps: two\n")
    (root / "unknown.yaml").write_text("train_data: pairs.jsonl\nlearnin_rate: 0.1\n")
    write_beir(root / "beir")
    for step in (1, 2):  # an earlier run's checkpoints; only their names and bytes matter here
        (root / "out" / f"checkpoint-{step}").mkdir(parents=True)
        (root / "out" / f"checkpoint-{step}" / "model.safetensors").write_bytes(os.urandom(64))
    (root / "noweights").mkdir()
    for name in ("modules.json", "config.json", "config_sentence_transformers.json"):
        shutil.copy(root / "model" / name, root / "noweights" / name)
    rotated = SentenceTransformer(str(root / "model"), device="cpu")  # with a weighted module, as the recipes save
    insert_before_normalize(rotated, [Dense(64, 64)])
    rotated.save_pretrained(str(root / "rotated"))

    tiny = SentenceTransformer(str(root / "model"), device="cpu")
    evaluate({"tiny": tiny}, [root / "beir"], dims=[64, 32], output_folder=root / "eval_out", show_progress_bar=False)
    texts = [json.loads(line)["text"] for line in (root / "beir" / "corpus.jsonl").read_text().splitlines()]
    FunnelIndex.from_model(tiny, texts, stages=[(32, 4)], model_name_or_path=str(root / "model")).save(root / "index")
    return root


def fingerprint(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def result_json(root: Path, dim: int) -> Path:
    return next((root / RESULTS).glob(f"*/*/experiments/embed_dim_{dim}/beir.json"))


def truncate(path: Path, keep: int = 40) -> None:
    path.write_bytes(path.read_bytes()[:keep])


@dataclass
class Case:
    id: str
    argv: list[str]
    code: int = 2
    says: tuple[str, ...] = ()  # in the one error line (or, with code 0, anywhere on stderr)
    damage: object = None  # a function of the row's folder, run before the command
    changes: tuple[str, ...] = ()  # files the command may rewrite (all others stay byte-identical)
    env: dict[str, str] = field(default_factory=dict)

    def param(self):
        return pytest.param(self, id=self.id)


TRAIN = ["train", "--model_name_or_path", "model", "--eval_strategy", "no", "--evaluate_before_training", "false"]
CASES = [
    # train: every check runs before the model loads and before old checkpoints are touched
    Case(
        "train-not-utf8-keeps-checkpoints",
        [*TRAIN, "--train_data", "latin1.jsonl", "--output_dir", "out", "--overwrite_output_dir"],
        says=("latin1.jsonl:1:", "not UTF-8"),
    ),
    Case(
        "train-negative-learning-rate-keeps-checkpoints",
        [
            *TRAIN,
            "--train_data",
            "pairs.jsonl",
            "--learning_rate",
            "-1",
            "--output_dir",
            "out",
            "--overwrite_output_dir",
        ],
        says=("--learning_rate", "-1"),
    ),
    Case("train-yaml-wrong-type", [*TRAIN, "two.yaml", "--output_dir", "o"], says=("two.yaml", "max_steps", "'two'")),
    Case("train-malformed-jsonl-line", [*TRAIN, "--train_data", "broken.jsonl"], says=("broken.jsonl:2:",)),
    Case("train-score-strings", [*TRAIN, "--train_data", "words.jsonl"], says=("'score'", "'high'", "CoSENT")),
    Case("train-one-row", [*TRAIN, "--train_data", "one.jsonl"], says=("one.jsonl", "1 training row")),
    Case(
        "train-existing-output",
        [*TRAIN, "--train_data", "pairs.jsonl", "--output_dir", "out"],
        says=("'out'", "--overwrite_output_dir"),
    ),
    Case("train-missing-file", [*TRAIN, "--train_data", "missing.jsonl"], says=("'missing.jsonl'",)),
    Case("train-unknown-key", [*TRAIN, "--config", "unknown.yaml"], says=("learnin_rate",)),
    # eval: refused input leaves no output folder
    Case("eval-score-strings", ["eval", "model", "--tasks", "words.jsonl", "--output", "e"], says=("words.jsonl",)),
    Case("eval-not-utf8", ["eval", "model", "--tasks", "latin1.jsonl", "--output", "e"], says=("latin1.jsonl:1:",)),
    Case("eval-missing-model", ["eval", "nomodel", "--tasks", "beir", "--output", "e"], says=("'nomodel'",)),
    Case(
        "eval-redoes-half-written-result",
        ["eval", "tiny=model", "--tasks", "beir", "--dims", "64", "32", "--output", "eval_out", "--no-report"],
        code=0,
        says=("beir.json is not a complete result",),
        damage=lambda root: truncate(result_json(root, 32)),
        changes=("embed_dim_32/beir.json", "embed_dim_32/run_settings.jsonl", "embed_dim_32/model_meta.json"),
    ),
    # report
    Case(
        "report-skips-half-written-result",
        ["report", "eval_out", "--output", "rep"],
        code=0,
        says=("beir.json: not a complete result", "Rerun"),
        damage=lambda root: truncate(result_json(root, 32)),
        changes=("rep/",),
    ),
    Case(
        "report-corrupt-model-meta",
        ["report", "eval_out", "--output", "rep"],
        says=("model_meta.json", "--overwrite"),
        damage=lambda root: truncate(result_json(root, 32).with_name("model_meta.json")),
    ),
    Case("report-no-results", ["report", "beir", "--output", "rep"], says=("No mteb results",)),
    # search
    Case(
        "search-build-existing-index",
        ["search", "build", "--model", "model", "--corpus", "beir/corpus.jsonl", "--output", "index"],
        says=("'index'", "--overwrite"),
    ),
    Case(
        "search-build-ivf-nlist-kmeans-cannot-train",
        [
            *("search", "build", "--model", "model", "--corpus", "beir/corpus.jsonl", "--output", "new_index"),
            *("--stages", "16:4", "--first-stage", "ivf", "--nlist", "100000"),
        ],
        says=("nlist 100000 needs at least 3,900,000 vectors", "the corpus has 8", "nlist <= 1"),
    ),
    Case(
        "search-build-says-a-shortlist-is-capped",
        [
            *("search", "build", "--model", "model", "--corpus", "beir/corpus.jsonl", "--output", "new_index"),
            *("--stages", "16:1000,32:4"),
        ],
        code=0,
        says=("Shortlist(s) 1000 at dim 16 are longer than the corpus (8 vectors)",),
        changes=("new_index/",),
    ),
    Case(
        "search-truncated-first-stage",
        ["search", "query", "--index", "index", "--query", "a cat"],
        says=("first_stage.faiss", "rebuild"),
        damage=lambda root: truncate(root / "index" / "first_stage.faiss"),
    ),
    Case(
        "search-corrupt-config",
        ["search", "query", "--index", "index", "--query", "a cat"],
        says=("funnel_index.json", "rebuild"),
        damage=lambda root: truncate(root / "index" / "funnel_index.json"),
    ),
    Case(
        "search-corrupt-prefix-norms",
        ["search", "query", "--index", "index", "--query", "a cat"],
        says=("prefix_norms.npy", "rebuild"),
        damage=lambda root: truncate(root / "index" / "prefix_norms.npy"),
    ),
    # info and push read matryoshka_config.json
    Case(
        "info-corrupt-matryoshka-config",
        ["info", "final"],
        says=("matryoshka_config.json", "matryoshka-st train"),
        damage=lambda root: truncate(root / "final" / MATRYOSHKA_CONFIG_NAME, 10),
    ),
    Case(
        "push-dry-run-without-weights",
        ["push", "noweights", "--repo-id", "me/x", "--dry-run", "up"],
        says=("weights",),
    ),
    # a model folder that cannot load is refused before any work, naming the missing file (issue 20)
    Case(
        "push-without-the-encoder-weights",
        ["push", "rotated", "--repo-id", "me/x", "--dry-run", "up"],
        says=("rotated/model.safetensors is missing", "Transformer module at the folder's root"),
        damage=lambda root: (root / "rotated" / "model.safetensors").unlink(),
    ),
    Case(
        "push-without-the-dense-weights",
        ["push", "rotated", "--repo-id", "me/x", "--dry-run", "up"],
        says=("2_Dense/model.safetensors is missing", "Dense module"),
        damage=lambda root: (root / "rotated" / "2_Dense" / "model.safetensors").unlink(),
    ),
    Case(
        "info-without-the-encoder-weights",
        ["info", "rotated"],
        says=("rotated/model.safetensors is missing",),
        damage=lambda root: (root / "rotated" / "model.safetensors").unlink(),
    ),
    Case(
        "eval-without-the-encoder-weights",
        ["eval", "rotated", "--tasks", "beir", "--output", "e"],
        says=("rotated/model.safetensors is missing",),
        damage=lambda root: (root / "rotated" / "model.safetensors").unlink(),
    ),
    Case(
        "search-build-without-the-encoder-weights",
        ["search", "build", "--model", "rotated", "--corpus", "beir/corpus.jsonl", "--output", "new_index"],
        says=("rotated/model.safetensors is missing",),
        damage=lambda root: (root / "rotated" / "model.safetensors").unlink(),
    ),
    Case(
        "adapt-without-a-module-folder",
        ["adapt", "rotated", "--texts", "beir/corpus.jsonl", "--output", "adapted"],
        says=("rotated/1_Pooling is missing", "Pooling module"),
        damage=lambda root: shutil.rmtree(root / "rotated" / "1_Pooling"),
    ),
    Case(
        "train-without-the-encoder-weights",
        ["train", "--model_name_or_path", "rotated", "--train_data", "pairs.jsonl", "--output_dir", "o"],
        says=("--model_name_or_path", "rotated/model.safetensors is missing"),
        damage=lambda root: (root / "rotated" / "model.safetensors").unlink(),
    ),
    Case(
        "push-offline",
        ["push", "final", "--repo-id", "me/x"],
        says=("no network", "--dry-run"),
        env={"HF_HUB_OFFLINE": "1", "HF_TOKEN": "hf_not_a_real_token"},
    ),
]


def run_cli(args: list[str], cwd: Path, env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "matryoshka_st", *args],
        cwd=cwd,
        env={**cli_env(), **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
        **kwargs,
    )


# Importing matryoshka_st (torch, sentence-transformers, mteb) takes most of a CLI call's time on a small machine:
# one driver process imports it once, then forks a fresh process per row that runs ``main(argv)`` with its own
# working folder, stdout/stderr files and exit status, as ``python -m matryoshka_st ARGS`` would.
DRIVER = """
import json, os, sys, traceback
import faiss, mteb, sentence_transformers
import matryoshka_st.evaluation, matryoshka_st.search, matryoshka_st.training
from matryoshka_st.cli import build_parser, main
build_parser()
codes = []
for row in json.load(sys.stdin):
    pid = os.fork()
    if pid == 0:
        os.chdir(row["cwd"])
        os.environ.update(row["env"])
        for fd, name in ((1, "stdout.txt"), (2, "stderr.txt")):
            os.dup2(os.open(os.path.join(row["logs"], name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
        try:
            code = main(row["argv"])
        except SystemExit as error:
            code = error.code if isinstance(error.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    codes.append(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
json.dump(codes, open(sys.argv[1], "w"))
"""


@dataclass
class Outcome:
    returncode: int
    stderr: str
    before: dict[str, str]
    after: dict[str, str]
    root: Path


@pytest.fixture(scope="module")
def outcomes(world, tmp_path_factory) -> dict[str, Outcome]:
    base = tmp_path_factory.mktemp("rows")
    rows, befores = [], {}
    for case in CASES:
        root, logs = base / case.id / "w", base / case.id / "logs"
        shutil.copytree(world, root)
        logs.mkdir()
        if case.damage is not None:
            case.damage(root)
        befores[case.id] = fingerprint(root)
        rows.append({"cwd": str(root), "logs": str(logs), "env": case.env, "argv": case.argv})
    codes_file = base / "codes.json"
    subprocess.run(
        [sys.executable, "-c", DRIVER, str(codes_file)], input=json.dumps(rows), text=True, env=cli_env(), check=True
    )
    codes = json.loads(codes_file.read_text())
    return {
        case.id: Outcome(
            code,
            (base / case.id / "logs" / "stderr.txt").read_text(encoding="utf-8", errors="replace"),
            befores[case.id],
            fingerprint(base / case.id / "w"),
            base / case.id / "w",
        )
        for case, code in zip(CASES, codes)
    }


@pytest.mark.parametrize("case", [case.param() for case in CASES])
def test_cli_case(world, outcomes, case: Case):
    done = outcomes[case.id]
    before, after, stderr = done.before, done.after, done.stderr

    assert done.returncode == case.code, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    if case.code:
        errors = [line for line in stderr.splitlines() if "error:" in line]
        assert len(errors) == 1, stderr[-3000:]
        for text in case.says:
            assert text in errors[0], errors[0]
    else:
        for text in case.says:
            assert text in stderr, stderr[-3000:]
    kept = {name: digest for name, digest in before.items() if not any(part in name for part in case.changes)}
    assert {name: after.get(name) for name in kept} == kept
    if case.code:
        assert set(after) == set(before), sorted(set(after) ^ set(before))  # nothing written, not even a folder
        assert sorted(p.name for p in done.root.iterdir()) == sorted(p.name for p in world.iterdir())


def test_push_card_claims_only_what_the_folder_shows(world, tmp_path):
    """A model with no matryoshka_config.json (never trained here) gets no 'was trained with' claim."""
    root = tmp_path / "w"
    shutil.copytree(world, root)
    done = run_cli(["push", "model", "--repo-id", "me/x", "--results", "eval_out", "--dry-run", "up"], root)
    assert done.returncode == 0, done.stderr[-3000:]
    card = (root / "up" / "README.md").read_text(encoding="utf-8")
    assert "was trained with [Matryoshka" not in card
    assert "records no Matryoshka training" in card


@pytest.mark.slow
def test_ctrl_c_in_training_says_how_to_resume(world, tmp_path):
    root = tmp_path / "w"
    shutil.copytree(world, root)
    args = [*TRAIN, "--train_data", "pairs.jsonl", "--output_dir", "run", "--max_steps", "100000"]
    args += ["--per_device_train_batch_size", "4", "--save_steps", "1", "--use_cpu"]
    process = subprocess.Popen(
        [sys.executable, "-m", "matryoshka_st", *args],
        cwd=root,
        env=cli_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 240
    while not (root / "run" / "checkpoint-2").is_dir() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    (line,) = [line for line in stderr.splitlines() if "interrupted" in line]
    assert "--resume_from_checkpoint latest" in line and "checkpoint-" in line, line


# the real CLI, SIGKILLed by itself right after mteb has saved its 4th result (of 15): mid-run on any machine
KILL_AFTER_4_RESULTS = """
import os, signal, sys
import mteb
from matryoshka_st.cli import main

evaluate, saved = mteb.evaluate, []

def evaluate_then_kill(*args, cache=None, **kwargs):
    result = evaluate(*args, cache=cache, **kwargs)
    if cache is not None:  # a run that saves its result (not the encoding pass before int8)
        saved.append(result)
        if len(saved) == 4:
            os.kill(os.getpid(), signal.SIGKILL)
    return result

mteb.evaluate = evaluate_then_kill
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_eval_killed_midway_reruns_to_the_same_scores(world, tmp_path):
    """``eval`` SIGKILLed after 4 of its 15 results are written: the rerun keeps those 4, computes the 11 missing
    ones, and reports the scores of a clean run."""
    root = tmp_path / "w"
    shutil.copytree(world / "model", root / "model")
    shutil.copytree(world / "beir", root / "beir")
    args = ["eval", "model", "--tasks", "beir", "--dims", "64", "48", "32", "16", "8", "--no-report"]
    args += ["--precisions", "float32", "int8", "binary"]
    (tmp_path / "kill_after_4.py").write_text(KILL_AFTER_4_RESULTS)
    killed = subprocess.run(
        [sys.executable, str(tmp_path / "kill_after_4.py"), *args, "--output", "killed"],
        cwd=root,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    written = list((root / "killed").glob("results/*/*/experiments/*/beir.json"))
    assert len(written) == 4  # some results were missing before the rerun

    rerun = run_cli([*args, "--output", "killed"], root)
    clean = run_cli([*args, "--output", "clean"], root)
    assert rerun.returncode == 0 and clean.returncode == 0, rerun.stderr[-3000:] + clean.stderr[-3000:]
    assert rerun.stderr.count("Skipping beir") == 4  # the 4 finished results were kept, the 11 others computed
    assert sorted(rerun.stdout.splitlines()) == sorted(clean.stdout.splitlines())
    assert len(clean.stdout.splitlines()) == 15


def _raise(error: BaseException):
    def run(args):
        raise error

    return run


def test_main_turns_ctrl_c_into_one_line_and_keeps_bugs_loud(monkeypatch, capsys, tmp_path):
    import matryoshka_st.cli.search as search
    from matryoshka_st.cli import main

    argv = ["search", "build", "--corpus", "c.txt", "--output", str(tmp_path / "index")]
    monkeypatch.setattr(search, "_build", _raise(KeyboardInterrupt()))
    assert main(argv) == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith("matryoshka-st search: interrupted.") and "No index was written" in err
    assert len(err.splitlines()) == 1

    monkeypatch.setattr(search, "_build", _raise(PermissionError(13, "Permission denied", "c.txt")))
    assert main(argv) == 2
    assert capsys.readouterr().err.strip() == "matryoshka-st search: error: permission denied: 'c.txt'."

    monkeypatch.setattr(search, "_build", _raise(RuntimeError("a bug")))  # not a user error: the traceback stays
    with pytest.raises(RuntimeError, match="a bug"):
        main(argv)
