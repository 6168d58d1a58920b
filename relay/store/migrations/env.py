"""Alembic environment: runs on the connection that relay.store.engine hands it."""

from alembic import context

from relay.store.models import Base

connection = context.config.attributes.get("connection")
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
