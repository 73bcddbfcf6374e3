"""Alembic environment for Tether's store; run through :func:`tether.core.audit.store.upgrade`."""

from alembic import context

from tether.core.audit.schema import VERSION_TABLE, metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
