"""Secrets as E2B's Secrets API sees them: an identifier apart from the name, a version that each new
value raises, and metadata. Secrets stored before get an identifier, version 1 and no metadata.

Revision ID: 0015
Revises: 0014
"""

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Added nullable, filled, then made NOT NULL: existing rows need values no server default could give
    # (a random identifier each).
    with op.batch_alter_table("secrets") as batch:
        batch.add_column(sa.Column("id", sa.String(40), nullable=True))
        batch.add_column(sa.Column("version", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("labels", sa.JSON(), nullable=True))
    table = sa.table(
        "secrets",
        sa.column("owner", sa.String),
        sa.column("name", sa.String),
        sa.column("id", sa.String),
        sa.column("version", sa.Integer),
        sa.column("labels", sa.JSON),
    )
    bind = op.get_bind()
    for owner, name in bind.execute(sa.select(table.c.owner, table.c.name)).all():
        bind.execute(
            table.update()
            .where(table.c.owner == owner, table.c.name == name)
            .values(id="sec_" + secrets.token_hex(16), version=1, labels={})
        )
    with op.batch_alter_table("secrets") as batch:
        batch.alter_column("id", existing_type=sa.String(40), nullable=False)
        batch.alter_column("version", existing_type=sa.Integer(), nullable=False)
        batch.alter_column("labels", existing_type=sa.JSON(), nullable=False)
        batch.create_index("ix_secrets_id", ["id"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("secrets") as batch:
        batch.drop_index("ix_secrets_id")
        batch.drop_column("labels")
        batch.drop_column("version")
        batch.drop_column("id")
