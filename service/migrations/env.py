"""Alembic environment: runs migrations against the URL set by `db.migrate`."""

from alembic import context
from sqlalchemy import engine_from_config, pool

from service.store.db import Base

config = context.config
target_metadata = Base.metadata


def run() -> None:
    """Run migrations online (a live connection)."""
    connectable = engine_from_config(config.get_section(config.config_ini_section) or {},
                                     prefix="sqlalchemy.", poolclass=pool.NullPool)
    with connectable.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()


run()
