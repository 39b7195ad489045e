"""Publish a Matryoshka model on the Hugging Face Hub: check, build the upload folder, create_repo + upload_folder.

The upload is ``huggingface_hub``'s (``HfApi.create_repo`` and ``HfApi.upload_folder``), the token its
``get_token`` (``HF_TOKEN`` or ``hf auth login``). Written here: the checks that run before anything is built or
sent, and the upload folder, which is the model's files plus the card of :mod:`matryoshka_st.hub.card` and its plot.
A dry run writes that exact folder and uploads nothing. The token is only handed to ``HfApi``: it is never written
to a file, a card or a log.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from matryoshka_st.hub.card import PLOT_NAME, build_card
from matryoshka_st.hub.results import load_eval_results
from matryoshka_st.usage import matryoshka_info

logger = logging.getLogger(__name__)

DEFAULT_COMMIT_MESSAGE = "Upload Matryoshka sentence-transformers model (matryoshka-st)"
# never uploaded: version control, caches, trainer checkpoints and logs, half-written saves (save_atomically's .tmp-)
IGNORED = (".*", "__pycache__", "checkpoint-*", "runs", "*.pyc")


class PushError(ValueError):
    """Input that cannot be pushed (not a model folder, a bad repository id, no token, ...); nothing was uploaded."""


@dataclass
class PushResult:
    """What :func:`push` did.

    Attributes:
        repo_id: the repository.
        files: the uploaded (or, in a dry run, written) files, relative paths, sorted.
        folder: the dry-run folder; ``None`` after an upload (the upload folder was temporary).
        url: the commit URL after an upload; ``None`` in a dry run.
        dry_run: whether nothing was uploaded.
    """

    repo_id: str
    files: list[str] = field(default_factory=list)
    folder: Path | None = None
    url: str | None = None
    dry_run: bool = False


def check_model_dir(model_dir: str | os.PathLike) -> Path:
    """``model_dir`` as a path, after checking it is a saved sentence-transformers model.

    Raises:
        PushError: when it is missing, not a folder, or lacks ``modules.json``, a config file, a module folder or
            a module's weights (:func:`matryoshka_st.readers.check_model_folder`).
    """
    folder = Path(model_dir)
    if not folder.is_dir():
        raise PushError(f"Model folder {str(folder)!r} does not exist: pass the folder `matryoshka-st train` saved.")
    try:
        matryoshka_info(folder)  # modules.json, then every module's folder and weights (check_model_folder)
    except ValueError as error:
        raise PushError(f"{error} Nothing was uploaded.") from error
    if not (folder / "config_sentence_transformers.json").is_file() and not (folder / "config.json").is_file():
        raise PushError(
            f"{str(folder)!r} has a modules.json but neither config_sentence_transformers.json nor config.json: it "
            "is not a complete saved model. Save it again with SentenceTransformer.save_pretrained()."
        )
    return folder


def check_repo_id(repo_id: str) -> str:
    """``repo_id`` after checking it with ``huggingface_hub``'s validator (``name`` or ``owner/name``).

    Raises:
        PushError: naming the id and the rule it breaks.
    """
    if not isinstance(repo_id, str) or not repo_id.strip():
        raise PushError("No repository id: pass --repo-id OWNER/NAME, e.g. --repo-id you/minilm-matryoshka.")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise PushError(
            f"Invalid repository id {repo_id!r}: {error} Use OWNER/NAME, e.g. you/minilm-matryoshka."
        ) from error
    return repo_id


def resolve_token(token: str | None = None) -> str:
    """The token to upload with: ``token``, else ``HF_TOKEN``, else the one saved by ``hf auth login``.

    Raises:
        PushError: when there is none. The message never contains a token.
    """
    token = token or get_token()
    if not token:
        raise PushError(
            "No Hugging Face token found: set the HF_TOKEN environment variable to a token with write access "
            "(https://huggingface.co/settings/tokens) or run `hf auth login`. Nothing was uploaded."
        )
    return token


def _dry_run_folder(dry_run: bool | str | os.PathLike, repo_id: str) -> Path:
    folder = Path(f"{repo_id.split('/')[-1]}-upload") if dry_run is True else Path(dry_run)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise PushError(
            f"Dry-run folder {str(folder)!r} already exists and is not empty: remove it or choose another folder."
        )
    return folder


def build_upload_folder(
    model_dir: str | os.PathLike,
    folder: str | os.PathLike,
    *,
    repo_id: str | None = None,
    results: Sequence[str | os.PathLike] | None = None,
    results_model: str | None = None,
    keep: float = 0.98,
    **card_kwargs,
) -> list[str]:
    """Write into ``folder`` exactly what :func:`push` uploads: the model files, ``README.md`` and the plot.

    Args:
        model_dir: the model folder (checked with :func:`check_model_dir`).
        folder: the (empty or missing) folder to write.
        repo_id: the Hub id the card is written for.
        results: ``matryoshka-st eval`` output folders for the card's quality table, plot and ``model-index``.
        results_model: the model label in ``results`` when they hold several models.
        keep: the share of the full-dimension score the recommended dimension keeps.
        card_kwargs: ``base_model``, ``datasets``, ``license``, ``language``, ``model_name``, ``tags`` for
            :func:`~matryoshka_st.hub.card.build_card`.

    Returns:
        The written files, relative to ``folder``, sorted.
    """
    model_dir = check_model_dir(model_dir)
    folder = Path(folder)
    summary = None
    with tempfile.TemporaryDirectory(prefix="matryoshka-st-report-") as report_dir:
        if results:
            summary = load_eval_results(results, report_dir, model=results_model, model_dir=model_dir, keep=keep)
        card = build_card(model_dir, repo_id=repo_id, results=summary, **card_kwargs)
        shutil.copytree(model_dir, folder, ignore=shutil.ignore_patterns(*IGNORED), dirs_exist_ok=True)
        card.save(folder / "README.md")
        if summary is not None and summary.plot is not None:
            shutil.copyfile(summary.plot, folder / PLOT_NAME)
        elif (folder / PLOT_NAME).exists():  # a stale plot copied from the model folder would contradict the card
            (folder / PLOT_NAME).unlink()
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def push(
    model_dir: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    revision: str | None = None,
    dry_run: bool | str | os.PathLike = False,
    token: str | None = None,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
    *,
    results: Sequence[str | os.PathLike] | None = None,
    results_model: str | None = None,
    keep: float = 0.98,
    **card_kwargs,
) -> PushResult:
    """Publish ``model_dir`` to the Hub as ``repo_id``, with a Matryoshka model card; or, in a dry run, write it.

    Everything is checked before anything is built or sent: the folder is a saved sentence-transformers model, the
    repository id is valid, the results exist, and (unless a dry run) a token is available.

    Args:
        model_dir: the model folder, e.g. ``output/matryoshka-minilm/final``.
        repo_id: ``owner/name`` (or ``name`` for your own namespace).
        private: create the repository as private (an existing repository keeps its visibility).
        revision: a branch to push to; created from the default branch when missing.
        dry_run: ``True`` writes the upload folder to ``./<name>-upload``; a path writes it there. Nothing is
            uploaded and no token is needed.
        token: a Hugging Face token; default: ``HF_TOKEN`` or the saved login. Never written anywhere.
        commit_message: the commit's title.
        results: ``matryoshka-st eval`` output folders for the card (quality table, plot, ``model-index``).
        results_model: which model in ``results`` is this one, when they hold several.
        keep: the share of the full-dimension score the recommended dimension keeps.
        card_kwargs: ``base_model``, ``datasets``, ``license``, ``language``, ``model_name``, ``tags`` for the card.

    Returns:
        A :class:`PushResult` with the files and, after an upload, the commit URL.

    Raises:
        PushError: on bad input, before anything is uploaded.

    Example:
        >>> from matryoshka_st.hub import push
        >>> result = push("output/matryoshka-minilm/final", "you/minilm-matryoshka", results=["eval_out"],
        ...               dry_run="upload_preview")  # doctest: +SKIP
        >>> result.files[:3]  # doctest: +SKIP
        ['1_Pooling/config.json', '2_Normalize/...', 'README.md']
    """
    model_dir = check_model_dir(model_dir)
    repo_id = check_repo_id(repo_id)
    if revision is not None and not str(revision).strip():
        raise PushError("--revision is empty: give a branch name or leave it out for the default branch.")
    for path in results or ():
        if not Path(path).exists():
            raise PushError(
                f"Results path {str(path)!r} does not exist: pass the --output folder of `matryoshka-st eval`."
            )
    if dry_run is not False and dry_run is not None:
        folder = _dry_run_folder(dry_run, repo_id)
        files = build_upload_folder(
            model_dir, folder, repo_id=repo_id, results=results, results_model=results_model, keep=keep, **card_kwargs
        )
        logger.info("Dry run: wrote the %d files that would be uploaded to %s into %s.", len(files), repo_id, folder)
        return PushResult(repo_id=repo_id, files=files, folder=folder, dry_run=True)

    token = resolve_token(token)
    with tempfile.TemporaryDirectory(prefix="matryoshka-st-upload-") as tmp:
        files = build_upload_folder(
            model_dir, tmp, repo_id=repo_id, results=results, results_model=results_model, keep=keep, **card_kwargs
        )
        api = HfApi(token=token)
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        repo_id = getattr(repo_url, "repo_id", None) or repo_id  # "name" becomes "owner/name"
        if revision is not None:
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        logger.info("Uploading %d files to %s%s.", len(files), repo_id, f" (branch {revision})" if revision else "")
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=tmp,
            revision=revision,
            commit_message=commit_message,
            repo_type="model",
        )
    url = getattr(commit, "commit_url", None) or str(commit)
    logger.info("Pushed %s: %s", repo_id, url)
    return PushResult(repo_id=repo_id, files=files, url=url)


__all__ = [
    "DEFAULT_COMMIT_MESSAGE",
    "PushError",
    "PushResult",
    "build_upload_folder",
    "check_model_dir",
    "check_repo_id",
    "push",
    "resolve_token",
]
