"""`graftline up --database`: what is refused before any server starts, each a one-line error.
The platform itself on PostgreSQL is tests/test_platform.py."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from graftline.flows import database as dbs
from graftline.tasks.errors import GraftlineError


def graftline(*args: str, home: Path) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).parent / "graftline"), "up", "--home", str(home), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    "url, message",
    [
        ("mysql://pg@127.0.0.1/graftline", "not a PostgreSQL URL"),
        ("postgresql://127.0.0.1/graftline", "needs a user, a host and a database name"),
        ("postgresql://pg@127.0.0.1", "needs a user, a host and a database name"),
        ("postgresql://pg@127.0.0.1:99999/graftline", "the port is not a number"),
        ("postgresql://pg@127.0.0.1/graft-line", "must be letters, digits and underscores"),
    ],
)
def test_a_malformed_url_is_named(url, message):
    with pytest.raises(GraftlineError, match=message):
        dbs.parse(url)


def test_an_unreachable_server_is_one_line_and_nothing_starts(tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = graftline("--database", f"postgresql://pg:hush@127.0.0.1:{port}/graftline", home=tmp_path / "p")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("graftline: error: --database postgresql://pg@127.0.0.1:")
    assert "Connection refused" in lines[0] and "hush" not in done.stderr + done.stdout
    assert not (tmp_path / "p" / "platform.json").exists() and not (tmp_path / "p" / "logs").exists()


def test_wrong_credentials_and_an_older_mlflow_schema_are_refused(postgres, tmp_path):
    import psycopg2

    wrong = postgres.replace("pg-secret", "not-it")
    done = graftline("--database", wrong, home=tmp_path / "p")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert 'password authentication failed for user "pg"' in done.stderr and "not-it" not in done.stderr

    # a database of its own on the session's server (the platform tests keep theirs in use)
    admin = psycopg2.connect(postgres)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute("CREATE DATABASE schema_check")
    admin.close()
    url = postgres.rsplit("/", 1)[0] + "/schema_check"
    database = dbs.prepare(url)  # creates both of its databases
    assert database.shown.endswith("/schema_check") and "pg-secret" not in database.shown
    with psycopg2.connect(database.url(database.mlflow_name)) as connection, connection.cursor() as cursor:
        cursor.execute("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
        cursor.execute("INSERT INTO alembic_version VALUES ('451aebb31d03')")  # an MLflow 1.x revision
    with pytest.raises(GraftlineError, match=r"holds MLflow schema 451aebb31d03, not this MLflow's .* db upgrade"):
        dbs.prepare(url)


def test_a_stopped_server_is_not_restarted_on_a_store_it_cannot_log_in_to(tmp_path):
    """A platform whose store needs a password (never written down) restarts only when given it again:
    not on fresh SQLite files in its home."""
    from graftline.flows import servers

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(gone.stdout)  # a process that has ended
    for kept, again in (
        ({"database": "postgresql://pg@127.0.0.1:5432/team"}, "--database postgresql://pg@127.0.0.1:5432/team"),
        ({"store": dbs.hide_password("postgresql://pg:hush@db/mlflow")}, "--backend-store-uri and its password"),
    ):
        home = tmp_path / next(iter(kept))
        platform = servers.Platform(str(home), "127.0.0.1", 1, 2, "pool", {"mlflow": pid}, **kept)
        home.mkdir()
        servers.save(platform)
        with pytest.raises(GraftlineError, match=f"run up again with {re.escape(again)}"):
            servers.up(home)
        assert not (home / "mlflow.db").exists() and "hush" not in (home / "platform.json").read_text()
