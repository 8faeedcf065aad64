"""Write a new migration from the difference between ``store/tables.py`` and the latest migration.

    python -m active_learning.store.migrations "add foo to tasks"

Autogenerate compares against a scratch SQLite database brought to head; read the file it writes.
"""

import sys
import tempfile
from pathlib import Path

from alembic import command
from alembic.config import Config

from active_learning.store.database import MIGRATIONS_DIR, make_engine, migrate


def main(message: str) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        engine = make_engine(f"sqlite:///{Path(scratch) / 'scratch.db'}")
        migrate(engine)
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.revision(config, message=message, autogenerate=True)
        engine.dispose()


if __name__ == "__main__":
    main(" ".join(sys.argv[1:]) or "schema change")
