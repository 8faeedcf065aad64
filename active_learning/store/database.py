"""The database connection every repository shares: SQLite (default) or PostgreSQL, schema by Alembic.

The web server (webhooks, /predict) and the trainer are separate processes writing the same database, so:
SQLite runs in WAL mode with a busy timeout and takes its write lock at the start of every write transaction
(``BEGIN IMMEDIATE``), and every write that could race is one atomic statement (``INSERT ... ON CONFLICT``).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000


class Database:
    """An engine with the schema at the latest migration, read sessions and write transactions."""

    def __init__(self, database_url: str):
        self.engine = make_engine(database_url)
        self.dialect = self.engine.dialect.name
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        migrate(self.engine)

    def read(self) -> Session:
        return self._sessions()

    @contextmanager
    def write(self) -> Iterator[Session]:
        """A write transaction; on SQLite it holds the write lock from its first statement."""
        with self._sessions() as session, session.begin():
            session.connection(execution_options={"write": True})
            yield session

    def insert(self, table: type) -> Any:
        """``INSERT`` with this dialect's ``ON CONFLICT`` support."""
        return (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table)

    def close(self) -> None:
        self.engine.dispose()


def make_engine(database_url: str) -> Engine:
    """An engine for SQLite (WAL, busy timeout, immediate write transactions) or PostgreSQL."""
    url = make_url(database_url)
    if url.get_backend_name() == "postgresql":
        if url.drivername == "postgresql":
            url = url.set(drivername="postgresql+psycopg")
        return create_engine(url, pool_pre_ping=True)
    if url.get_backend_name() != "sqlite":
        raise ValueError(f"DATABASE_URL {url.render_as_string()!r}: only sqlite:// and postgresql:// are supported")
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves, below
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # Taking the write lock up front makes a writer wait (busy_timeout) instead of failing when another
        # process committed between its read and its write.
        write = connection.get_execution_options().get("write")
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def migrate(engine: Engine) -> None:
    """Apply every Alembic migration not yet applied; safe when several processes start together."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.connect().execution_options(write=True) as connection, connection.begin():
        if engine.dialect.name == "postgresql":
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(74657)")  # one migrator at a time
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


