"""One atomic folder write, shared by the final model save (training), ``adapt`` (posthoc) and index saves (search).

The files go into a temporary sibling folder that then takes the target's place by renames, so a reader (or a
killed run) sees the previous complete folder or the new complete one, never half of one. Nothing in the standard
library or the host libraries does this for a folder.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> target = Path(tempfile.mkdtemp()) / "model"
    >>> write_folder_atomically(target, lambda folder: (folder / "weights.bin").write_bytes(b"1")).name
    'model'
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path


def write_folder_atomically(
    path: str | os.PathLike, write: Callable[[Path], object], *, own_files: Sequence[str] | None = None
) -> Path:
    """Run ``write(folder)`` on a new temporary sibling of ``path``, then put that folder at ``path``.

    Args:
        path: the folder to write; its parent is created if needed. An existing folder there is replaced whole.
        write: fills the folder it is given; when it raises, the temporary folder is removed and ``path`` is
            untouched.
        own_files: the names ``write`` may produce. Where ``path`` already holds other files too, only these are
            replaced, one rename each in this order (put the file that marks a complete folder last; one that
            ``write`` did not produce this time is removed), and the others are kept.

    Returns:
        ``path`` as an absolute path.
    """
    final = Path(os.path.abspath(path))
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        write(tmp)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if own_files is not None and final.is_dir() and any(p.name not in own_files for p in final.iterdir()):
        for name in own_files:
            if (tmp / name).exists():
                os.replace(tmp / name, final / name)
            else:  # this write made no such file: an old one would be stale
                (final / name).unlink(missing_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    elif final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
        os.rename(final, old / final.name)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    return final


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask
