"""`graftline up --database postgresql://...`: both servers' state in PostgreSQL.

One URL names a PostgreSQL server, a user and a database name NAME; the servers get a database each
on that server, because Prefect and MLflow both keep their schema revision in a table called
`alembic_version` and would overwrite each other's in one database:

- `NAME_mlflow`: the MLflow tracking store and Model Registry (driver psycopg2, MLflow's own);
- `NAME_prefect`: the Prefect server's database (driver asyncpg, Prefect's own).

`prepare` checks everything a start needs before any server starts, each failure one line: the URL's
form, the driver, that the server answers and takes the credentials, and the databases (created when
missing, which needs the CREATEDB right; otherwise the error names the two to create). Schema
migrations stay with the servers' own tools: Prefect migrates its database when it starts; MLflow
creates its tables in an empty database, and a database of an older MLflow schema is refused with
MLflow's own advice (back it up, then `mlflow db upgrade`), since upgrading a team's registry
without a backup is not graftline's call.

Passwords travel in the servers' environment only: `Database.shown` (what platform.json keeps and
the messages print) leaves them out.

`scratch_server` starts a throw-away PostgreSQL from the installed server programs (Debian's
`postgresql` package): what the tests and bench/platform_load.py run against, and a way to try
`--database` on one machine.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from graftline.tasks.errors import GraftlineError

SCHEMES = ("postgresql", "postgres")
CONNECT_TIMEOUT = 5  # seconds: an unreachable host is named in about this long


@dataclass(frozen=True)
class Database:
    user: str
    password: str | None
    host: str
    port: int
    name: str

    @property
    def mlflow_name(self) -> str:
        return f"{self.name}_mlflow"

    @property
    def prefect_name(self) -> str:
        return f"{self.name}_prefect"

    def url(self, database: str, driver: str = "") -> str:
        """A SQLAlchemy URL of `database` on this server (`driver`: "+asyncpg" for Prefect)."""
        secret = f":{quote(self.password, safe='')}" if self.password is not None else ""
        return f"postgresql{driver}://{quote(self.user, safe='')}{secret}@{self.host}:{self.port}/{database}"

    @property
    def mlflow_uri(self) -> str:
        return self.url(self.mlflow_name, "+psycopg2")  # SQLAlchemy 2.1's default PostgreSQL driver is psycopg 3

    @property
    def prefect_uri(self) -> str:
        return self.url(self.prefect_name, "+asyncpg")

    @property
    def shown(self) -> str:
        """The URL as given, without the password."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.name}"


def parse(url: str) -> Database:
    """The parts of a `postgresql://USER[:PASSWORD]@HOST[:PORT]/NAME` URL, or a one-line error."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise GraftlineError(
            f"--database {hide_password(url)!r}: not a PostgreSQL URL (postgresql://USER[:PASSWORD]@HOST[:PORT]/NAME); "
            "without --database the servers keep their state in SQLite files in the platform's home"
        )
    try:
        port = parts.port or 5432
    except ValueError:
        raise GraftlineError(f"--database {hide_password(url)!r}: the port is not a number from 1 to 65535") from None
    name = parts.path.lstrip("/")
    if not parts.hostname or not parts.username or not name or "/" in name:
        raise GraftlineError(
            f"--database {hide_password(url)!r}: needs a user, a host and a database name: postgresql://USER@HOST/NAME"
        )
    if not name.replace("_", "").isalnum():
        raise GraftlineError(f"--database: database name {name!r} must be letters, digits and underscores")
    password = unquote(parts.password) if parts.password is not None else None
    return Database(unquote(parts.username), password, parts.hostname, port, name)


def prepare(url: str) -> Database:
    """`url` checked and its two databases made ready, before any server starts (see the module)."""
    database = parse(url)
    try:
        import psycopg2
    except ImportError:
        raise GraftlineError(
            "--database needs PostgreSQL's driver for MLflow: pip install 'graftline[postgres]' (psycopg2-binary)"
        ) from None
    import importlib.util

    if importlib.util.find_spec("asyncpg") is None:
        raise GraftlineError("--database needs PostgreSQL's driver for Prefect: pip install asyncpg")
    try:
        with closing(_connect(psycopg2, database, database.name)) as connection:
            connection.autocommit = True  # CREATE DATABASE runs outside a transaction (psycopg2's `with` opens one)
            with connection.cursor() as cursor:
                cursor.execute("SELECT datname FROM pg_database")
                present = {row[0] for row in cursor.fetchall()}
                for name in (database.mlflow_name, database.prefect_name):
                    if name not in present:
                        _create(cursor, psycopg2, database, name)
        _require_current_mlflow_schema(psycopg2, database)
    except psycopg2.OperationalError as exc:
        raise GraftlineError(f"--database {database.shown}: {_reason(exc)}") from None
    return database


def _connect(psycopg2, database: Database, name: str):
    return psycopg2.connect(
        dbname=name,
        user=database.user,
        password=database.password,
        host=database.host,
        port=database.port,
        connect_timeout=CONNECT_TIMEOUT,
    )


def _create(cursor, psycopg2, database: Database, name: str) -> None:
    from psycopg2 import sql

    try:
        cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    except psycopg2.errors.InsufficientPrivilege:
        raise GraftlineError(
            f"--database {database.shown}: user {database.user!r} may not create databases; create "
            f"{database.mlflow_name} and {database.prefect_name} owned by {database.user}, or grant it CREATEDB"
        ) from None
    except psycopg2.errors.DuplicateDatabase:
        pass  # made by another `up` meanwhile


def _require_current_mlflow_schema(psycopg2, database: Database) -> None:
    """Refuse an MLflow database whose schema is older than this MLflow's (MLflow's server would
    refuse it too, but only after it started, in its log)."""
    with closing(_connect(psycopg2, database, database.mlflow_name)) as connection, connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass('public.alembic_version') IS NOT NULL")
        if not cursor.fetchone()[0]:
            return  # empty: MLflow creates its tables on first start
        cursor.execute("SELECT version_num FROM alembic_version")
        row = cursor.fetchone()
    found, head = (row[0] if row else None), mlflow_schema_head()
    if found != head:
        raise GraftlineError(
            f"--database {database.shown}: database {database.mlflow_name} holds MLflow schema {found}, not this "
            f"MLflow's {head}; back it up, then run: mlflow db upgrade "
            f"{database.mlflow_uri if database.password is None else '<its URL>'}"
        )


def mlflow_schema_head() -> str:
    """The newest schema revision of the installed MLflow's tracking store."""
    import importlib.util

    from alembic.script import ScriptDirectory

    # alembic imports the revision scripts to read them (and they import MLflow): ~2 s, once per `up`
    mlflow = Path(importlib.util.find_spec("mlflow").origin).parent
    return ScriptDirectory(str(mlflow / "store" / "db_migrations")).get_current_head()


def _reason(exc: Exception) -> str:
    """psycopg2's message, first line, e.g. 'password authentication failed for user "x"'."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return first.removeprefix("connection to server at ").strip()


def hide_password(url: str) -> str:
    """`url` with its password, if any, shown as ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


def server_programs() -> Path | None:
    """The folder of PostgreSQL's server programs (initdb, pg_ctl), or None when not installed."""
    import shutil

    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return versions[-1].parent if versions else None


@contextmanager
def scratch_server(password: str = "pg-secret", name: str = "platform") -> Iterator[str]:
    """A throw-away PostgreSQL server on a free loopback port, for as long as the block runs: user
    `pg` with `password` over TCP, one database `name`; yields its URL. Its files live in a fresh
    temporary folder, removed with it. As root (initdb refuses root) it runs as the `postgres` user.
    Durability is off (fsync=off): nothing in it is meant to survive a crash."""
    import shutil
    import socket
    import subprocess
    import tempfile

    import psycopg2

    programs = server_programs()
    if programs is None:
        raise GraftlineError("PostgreSQL's server programs are not installed (apt-get install postgresql)")
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="graftline-postgres-"))
    if os.geteuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(folder, "postgres")
    (folder / "password").write_text(password + "\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = str(folder / "data")

    def run(*args: str) -> None:
        done = subprocess.run([*as_user, *args], capture_output=True, text=True)
        if done.returncode:
            raise GraftlineError(f"{Path(args[0]).name}: {(done.stderr or done.stdout).strip()}")

    try:
        run(str(programs / "initdb"), "-D", data, "-U", "pg", "--pwfile", str(folder / "password"),
            "--auth-local=trust", "--auth-host=scram-sha-256")  # fmt: skip
        run(str(programs / "pg_ctl"), "-D", data, "-l", str(folder / "log"), "-w", "start",
            "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off")  # fmt: skip
        connection = psycopg2.connect(dbname="postgres", user="pg", password=password, host="127.0.0.1", port=port)
        connection.autocommit = True  # CREATE DATABASE runs outside a transaction
        with connection.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        connection.close()
        yield f"postgresql://pg:{password}@127.0.0.1:{port}/{name}"
    finally:
        subprocess.run([*as_user, str(programs / "pg_ctl"), "-D", data, "-m", "fast", "-w", "stop"],
                       capture_output=True)  # fmt: skip
        shutil.rmtree(folder, ignore_errors=True)
