"""Store: one database (an SQLite file by default, PostgreSQL by URL), migrated to the newest schema
when opened, with short transactions for the API and the workers.

SQLite runs in WAL mode (readers never block the one writer) with a busy timeout, so a server and a
few workers on one machine share the file; several machines share PostgreSQL.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError, ProgrammingError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from tunesmith.config import data_home, without_password
from tunesmith.errors import ConfigError

MIGRATIONS = Path(__file__).parent / "migrations"
SQLITE_BUSY_MS = 30_000  # a writer waits this long for another process's transaction before failing
CONNECT_TIMEOUT_S = 10  # PostgreSQL: a server that does not answer in this long is an error, not a hang
MIGRATION_LOCK = 7_301_946  # PostgreSQL advisory lock id: one process migrates at a time
# Our own name for Alembic's bookkeeping table: Optuna's study storage lives in the same database and
# keeps its schema version in Alembic's default `alembic_version`.
VERSION_TABLE = "tunesmith_alembic_version"


def default_url() -> str:
    return f"sqlite:///{data_home() / 'tunesmith.db'}"


def normalize_url(url: str) -> str:
    """postgresql:// and postgres:// mean psycopg 3 (the driver tunesmith installs)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def shown_url(url: str) -> str:
    """A store URL fit to print: its password as ***, in the user part or in the query (libpq takes ?password= too),
    also when the URL does not parse."""
    try:
        url = make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - SQLAlchemy's URL errors vary by cause
        pass
    return without_password(url)


def sqlite_file_url(url: str, what: str) -> str:
    """A parsed `url` as a store opens it: a SQLite file's path with ~ expanded (SQLite itself opened a folder named
    "~" in the current directory) and its folder made; other URLs as they are. `what` (--db, tune.storage) gave it."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return url
    database = Path(parsed.database).expanduser()
    try:
        database.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a file where a folder should be, no permission: the path given, not a bug
        raise ConfigError(f"{what} {shown_url(url)}: cannot make the folder {database.parent} for the SQLite file "
                          f"({err.strerror}: {err.filename}); give a path in a folder you can write to") from None
    return parsed.set(database=str(database)).render_as_string(hide_password=False)


class Store:
    def __init__(self, url: str | None = None, *, migrate: bool = True) -> None:
        self.url = normalize_url(url or default_url())
        try:
            parsed = make_url(self.url)
        except Exception as err:  # noqa: BLE001 - SQLAlchemy's URL errors vary by cause
            raise ConfigError(f"--db {shown_url(str(url))!r} is not a database URL (sqlite:///path.db or postgresql://user@host/db): "
                              f"{shown_url(str(err))}") from None
        self.dialect = parsed.get_backend_name()
        self.url = sqlite_file_url(self.url, "--db")
        try:
            self.engine: Engine = create_engine(self.url, pool_pre_ping=True, **self._engine_options())
        except (NoSuchModuleError, ModuleNotFoundError) as err:  # postgress://, mysql:// without its driver
            raise ConfigError(f"--db {self.shown}: no database driver for it ({err}); tunesmith's stores are "
                              "sqlite:///path.db and postgresql://user@host/db") from None
        except ArgumentError as err:  # sqlite://tunesmith.db (two slashes: a host, which SQLite has none of)
            raise ConfigError(f"--db {self.shown}: {shown_url(str(err)).strip().splitlines()[0]}; a SQLite file is "
                              "sqlite:///relative/path.db or sqlite:////absolute/path.db") from None
        if self.dialect == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        if migrate:
            try:
                self.migrate()
            except OperationalError as err:  # refused, no such database, timed out: the URL or the server, not a bug
                raise ConfigError(f"--db {self.shown}: cannot open the store: {shown_url(str(err.orig or err)).strip()}") \
                    from None
            except ProgrammingError as err:
                raise self._programming_error(err) from None

    def _programming_error(self, err: ProgrammingError) -> Exception:
        """What a ProgrammingError while opening the store means: the URL or the database, not a bug (these surfaced
        as "internal error" with the migration's SQL); `err` itself where it is none of those."""
        sqlstate = getattr(err.orig, "sqlstate", None)
        first = shown_url(str(err.orig or err).strip().splitlines()[0])
        if sqlstate is None:  # refused before any SQL ran: libpq's "invalid connection option" (a misspelt ?option=)
            return ConfigError(f"--db {self.shown}: cannot open the store: {first}; check the URL's options")
        if sqlstate == "42P07":  # a table of another application's where the store's go (its own `jobs`, `files`)
            return ConfigError(f"--db {self.shown}: cannot create the store's tables: {first} and is not tunesmith's; "
                               "give tunesmith a database of its own, or a schema of its own "
                               "(?options=-csearch_path%3Dtunesmith after CREATE SCHEMA tunesmith)")
        if sqlstate in ("3F000", "42501"):  # a search_path naming no schema, a user without CREATE rights
            return ConfigError(f"--db {self.shown}: cannot create the store's tables: {first}; check the URL's "
                               "schema (search_path) and that its user may create tables there")
        return err

    def _engine_options(self) -> dict[str, Any]:
        if self.dialect == "sqlite":
            connect_args = {"timeout": SQLITE_BUSY_MS / 1000, "check_same_thread": False}
            if _in_memory(make_url(self.url).database):
                # each connection to :memory: is a database of its own: the tables were on the migrating connection
                # only, and the prediction log's thread wrote to an empty one. One connection, shared by every thread.
                return {"connect_args": connect_args, "poolclass": StaticPool}
            return {"connect_args": connect_args}
        # a server that accepts the connection and never answers had hung every command (libpq waits for ever)
        return {"pool_size": 5, "max_overflow": 10, "connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}}

    @property
    def home(self) -> Path:
        """Folder for what belongs to this store but not in it: uploaded files' bytes, jobs' run folders.
        Beside the SQLite file, or under TUNESMITH_HOME for a server database."""
        database = make_url(self.url).database
        if self.dialect == "sqlite" and not _in_memory(database):
            return Path(str(database)).expanduser().resolve().parent
        return data_home()

    def insert(self, table: Any) -> Any:
        """INSERT INTO `table` in this store's dialect, which offers ON CONFLICT (`on_conflict_do_nothing`)."""
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
        return insert(table)

    @staticmethod
    def lock(s: Session, entity: Any, *where: Any) -> None:
        """Hold `entity`'s rows matching `where` until the transaction ends, before anything is read: a no-op write,
        first in the transaction. PostgreSQL locks the rows; SQLite (which ignores FOR UPDATE, and reads outside a
        transaction until the first write) takes its database write lock. A read-change-write of a status then cannot
        interleave with another one: the second waits, and reads what the first wrote."""
        from sqlalchemy import inspect, update

        key = inspect(entity).primary_key[0]
        s.execute(update(entity).where(*where).values({key: key}))

    @contextmanager
    def session(self) -> Iterator[Session]:
        """One transaction: committed when the block ends, rolled back if it raises."""
        with self._sessions.begin() as session:
            yield session

    def migrate(self, revision: str = "head") -> None:
        """Bring the schema to the newest migration (a no-op when it is there), all of it or none: `revision`: stop
        earlier (tests build an older store this way)."""
        from alembic import command

        config = _alembic_config()
        with self._migration_lock(), self.engine.connect() as connection:
            sqlite = self.dialect == "sqlite"
            if sqlite:
                # pysqlite runs DDL outside any transaction: an upgrade killed or failed half-way left its new tables
                # with the old revision recorded, and every later open failed "table ... already exists". The driver
                # in autocommit and a BEGIN of our own (SQLAlchemy's recipe for pysqlite) make the upgrade one
                # transaction, batch-mode table copies included.
                connection.execution_options(isolation_level="AUTOCOMMIT")
                # A migration that drops a column copies the table (SQLite cannot alter it in place); with foreign keys
                # on, dropping the old copy cascaded to every row referring to it (0007 deleted every annotation).
                # The pragma is ignored inside a transaction, hence before it.
                connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
                connection.commit()
            try:
                # On SQLite SQLAlchemy's begin sends nothing (autocommit); its commit or rollback ends our BEGIN.
                with connection.begin():
                    if sqlite:
                        connection.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock at once, not on the first write
                    if self.dialect == "postgresql":
                        connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
                    _adopt_default_version_table(connection)
                    self._check_known_revision(connection)
                    config.attributes["connection"] = connection
                    command.upgrade(config, revision)
                    dangling = connection.exec_driver_sql("PRAGMA foreign_key_check").first() if sqlite else None
                    if dangling is not None:  # (table, rowid, parent table, key): rolled back by raising here
                        table, rowid, parent = dangling[0], dangling[1], dangling[2]
                        raise ConfigError(
                            f"--db {self.shown}: row {rowid} of table {table} refers to a row of {parent} that is gone, so the "
                            f"schema upgrade was rolled back and nothing was changed; delete that row (or restore the "
                            f"row of {parent} it refers to) and start again")
            finally:
                if sqlite:
                    connection.exec_driver_sql("PRAGMA foreign_keys=ON")
                    connection.commit()

    def _check_known_revision(self, connection: Any) -> None:
        """A store a newer tunesmith migrated: its revision is none of ours (Alembic said "Can't locate revision",
        shown as an internal error)."""
        from alembic.migration import MigrationContext

        current = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE}).get_current_revision()
        if current is not None and current not in _our_revisions():
            raise ConfigError(f"--db {self.shown}: the store is at schema revision {current!r}, which a newer tunesmith "
                              f"made; this one knows revisions up to {head_revision()!r}. Upgrade tunesmith "
                              "(pip install -U tunesmith), or use the version that made the store")

    @contextmanager
    def _migration_lock(self) -> Iterator[None]:
        """SQLite: a lock file beside the database, so processes starting together migrate one at a time."""
        if self.dialect != "sqlite" or _in_memory(make_url(self.url).database):
            yield
            return
        with file_lock(self.home / ".migrate.lock"):
            yield

    def revision(self) -> str | None:
        with self.engine.connect() as connection:
            return connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()

    @property
    def shown(self) -> str:
        """The URL fit to print (password hidden)."""
        return shown_url(self.url)

    def close(self) -> None:
        self.engine.dispose()


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes on one machine (SQLite has no advisory locks): flock on `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _alembic_config() -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def _adopt_default_version_table(connection: Any) -> None:
    """Stores made before VERSION_TABLE kept their revision in `alembic_version`: move it over, so that
    table is free for Optuna (only when it holds one of our revisions; an Optuna one stays)."""
    from sqlalchemy import inspect

    tables = set(inspect(connection).get_table_names())
    if "alembic_version" not in tables or VERSION_TABLE in tables:
        return
    current = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    if current not in _our_revisions():
        return
    connection.execute(text(f"CREATE TABLE {VERSION_TABLE} (version_num VARCHAR(32) NOT NULL PRIMARY KEY)"))
    connection.execute(text(f"INSERT INTO {VERSION_TABLE} (version_num) VALUES (:v)"), {"v": current})
    connection.execute(text("DROP TABLE alembic_version"))


def _our_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    return {rev.revision for rev in ScriptDirectory.from_config(_alembic_config()).walk_revisions()}


def _in_memory(database: str | None) -> bool:
    """sqlite:// and sqlite:///:memory: - a database that lives in its connection, with no file."""
    return not database or database == ":memory:"


def head_revision() -> str:
    """The newest migration this tunesmith knows."""
    from alembic.script import ScriptDirectory

    return str(ScriptDirectory.from_config(_alembic_config()).get_current_head())


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer, nor it them
    cursor.execute("PRAGMA foreign_keys=ON")  # events and checkpoints go with their job
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_MS}")
    cursor.close()
