from __future__ import annotations

import logging
from pathlib import Path

import pytest
from huggingface_hub import CommitInfo, HfApi, ModelCard, RepoUrl

from matryoshka_st.hub import PushError, push
from matryoshka_st.hub.card import PLOT_NAME
from matryoshka_st.hub.push import DEFAULT_COMMIT_MESSAGE

TOKEN = "hf_testTOKENthatMustNeverBeWritten0123"
MODEL_FILES = [
    "1_Pooling/config.json",
    "2_Dense/config.json",  # the default recipe's PCA rotation
    "2_Dense/model.safetensors",
    "3_Normalize/config.json",
    "config.json",
    "config_sentence_transformers.json",
    "matryoshka_config.json",
    "model.safetensors",
    "modules.json",
    "sentence_bert_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
]


class FakeHub:
    """Stands in for the Hub behind ``HfApi``'s public methods that ``push`` calls: records what create_repo,
    create_branch and upload_folder would send, and the bytes of every file in the uploaded folder."""

    def __init__(self, monkeypatch):
        self.calls: list[tuple[str, dict]] = []
        self.tokens: list[str | None] = []
        self.files: dict[str, bytes] = {}
        hub = self

        def create_repo(api, repo_id, **kwargs):
            hub.tokens.append(api.token)
            hub.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
            return RepoUrl(f"https://huggingface.co/{repo_id}")

        def create_branch(api, repo_id, **kwargs):
            hub.calls.append(("create_branch", {"repo_id": repo_id, **kwargs}))

        def upload_folder(api, *, repo_id, folder_path, **kwargs):
            hub.tokens.append(api.token)
            hub.calls.append(("upload_folder", {"repo_id": repo_id, **kwargs}))
            for path in Path(folder_path).rglob("*"):
                if path.is_file():
                    hub.files[path.relative_to(folder_path).as_posix()] = path.read_bytes()
            return CommitInfo(
                commit_url=f"https://huggingface.co/{repo_id}/commit/abc123",
                commit_message=kwargs["commit_message"],
                commit_description="",
                oid="abc123",
            )

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "create_branch", create_branch)
        monkeypatch.setattr(HfApi, "upload_folder", upload_folder)

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


@pytest.fixture()
def hub(monkeypatch):
    return FakeHub(monkeypatch)


def _written_bytes(folder: Path) -> list[bytes]:
    return [p.read_bytes() for p in folder.rglob("*") if p.is_file()]


def test_dry_run_writes_exactly_the_upload_folder(trained_model_dir, eval_dir, tmp_path, hub, no_token):
    folder = tmp_path / "preview"
    result = push(trained_model_dir, "you/tiny-matryoshka", dry_run=folder, results=[eval_dir])

    expected = sorted([*MODEL_FILES, "README.md", PLOT_NAME])
    assert result.dry_run and result.folder == folder and result.url is None
    assert result.files == expected
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == expected
    for name in MODEL_FILES:  # the model's files are copied unchanged
        assert (folder / name).read_bytes() == (Path(trained_model_dir) / name).read_bytes()
    assert (folder / PLOT_NAME).read_bytes()[:4] == b"\x89PNG"
    readme = (folder / "README.md").read_text(encoding="utf-8")
    assert "## Matryoshka embeddings" in readme and f"]({PLOT_NAME})" in readme
    assert hub.calls == []  # no token needed, nothing sent

    with pytest.raises(PushError, match="already exists and is not empty"):
        push(trained_model_dir, "you/tiny-matryoshka", dry_run=folder)


def test_dry_run_without_results(trained_model_dir, tmp_path, hub, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = push(trained_model_dir, "you/no-results", dry_run=True)
    assert result.folder == Path("no-results-upload")
    assert result.files == sorted([*MODEL_FILES, "README.md"])  # no plot without eval results


def test_push_sends_repo_files_and_commit_message(trained_model_dir, eval_dir, tmp_path, hub, monkeypatch, caplog):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    caplog.set_level(logging.DEBUG)
    result = push(
        trained_model_dir,
        "you/tiny-matryoshka",
        private=True,
        revision="v1",
        results=[eval_dir],
        commit_message="First Matryoshka release",
        license="apache-2.0",
    )

    assert hub.names() == ["create_repo", "create_branch", "upload_folder"]
    (_, repo), (_, branch), (_, commit) = hub.calls
    assert repo == {"repo_id": "you/tiny-matryoshka", "private": True, "exist_ok": True, "repo_type": "model"}
    assert branch["repo_id"] == "you/tiny-matryoshka" and branch["branch"] == "v1"
    assert commit["repo_id"] == "you/tiny-matryoshka"
    assert commit["commit_message"] == "First Matryoshka release"
    assert commit["revision"] == "v1" and commit["repo_type"] == "model"
    assert sorted(hub.files) == result.files == sorted([*MODEL_FILES, "README.md", PLOT_NAME])
    readme = hub.files["README.md"].decode()
    assert ModelCard(readme).data.license == "apache-2.0"  # the front matter parses as Hub metadata
    assert 'SentenceTransformer("you/tiny-matryoshka", truncate_dim=' in readme and "license: apache-2.0" in readme
    assert result.url == "https://huggingface.co/you/tiny-matryoshka/commit/abc123" and not result.dry_run

    # the token reaches HfApi and nothing else: not the files, not the logs
    assert hub.tokens == [TOKEN, TOKEN]
    assert not any(TOKEN.encode() in content for content in hub.files.values())
    assert TOKEN not in caplog.text
    assert not any(TOKEN.encode() in content for content in _written_bytes(Path(trained_model_dir)))
    assert not any(TOKEN.encode() in content for content in _written_bytes(tmp_path))


def test_default_commit_message_and_explicit_token(trained_model_dir, hub, no_token):
    push(trained_model_dir, "you/tiny", token=TOKEN)
    assert hub.names() == ["create_repo", "upload_folder"]  # no branch without --revision
    assert hub.calls[1][1]["commit_message"] == DEFAULT_COMMIT_MESSAGE
    assert hub.calls[1][1]["revision"] is None
    assert hub.calls[0][1]["private"] is False


def test_missing_token_uploads_nothing(trained_model_dir, hub, no_token):
    with pytest.raises(PushError, match=r"No Hugging Face token found: set the HF_TOKEN .* `hf auth login`"):
        push(trained_model_dir, "you/tiny")
    assert hub.calls == []


def test_folder_that_is_not_a_model(tmp_path, hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hello")
    with pytest.raises(PushError, match=r"is not a sentence-transformers model folder: it has no modules.json"):
        push(tmp_path / "notes", "you/tiny")
    with pytest.raises(PushError, match=r"Model folder .*missing.* does not exist"):
        push(tmp_path / "missing", "you/tiny")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "modules.json").write_text("[]")
    with pytest.raises(PushError, match="not a complete saved model"):
        push(tmp_path / "half", "you/tiny")
    assert hub.calls == []


@pytest.mark.parametrize("repo_id", ["you/tiny/extra", "you/tiny model", "you/-tiny-", "you/tiny--x", "", "a" * 97])
def test_invalid_repo_id(trained_model_dir, repo_id, hub, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with pytest.raises(PushError, match=r"repository id"):
        push(trained_model_dir, repo_id, dry_run=tmp_path / "out")
    assert hub.calls == [] and not (tmp_path / "out").exists()


def test_missing_results_folder(trained_model_dir, tmp_path, hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with pytest.raises(PushError, match=r"Results path .*nowhere.* does not exist"):
        push(trained_model_dir, "you/tiny", results=[tmp_path / "nowhere"])
    assert hub.calls == []
