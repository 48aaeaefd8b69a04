"""Alembic environment: Store.migrate() hands over its connection; the schema is store/schema.py."""

from alembic import context

from tunesmith.store.db import VERSION_TABLE
from tunesmith.store.schema import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True,
                  compare_type=True, version_table=VERSION_TABLE)
with context.begin_transaction():
    context.run_migrations()
