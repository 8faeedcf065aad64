"""Alembic environment: run by ``Store`` on start with an open connection (no alembic.ini).

To write a new migration after changing ``active_learning/store/tables.py``::

    python -m active_learning.store.migrations "what changed"
"""

from alembic import context

from active_learning.store.tables import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
