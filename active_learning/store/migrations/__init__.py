"""Alembic migrations of the store, applied programmatically (see ``active_learning.store.migrate``)."""
