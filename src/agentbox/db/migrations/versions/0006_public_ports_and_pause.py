"""Ports that answer without a preview token (E2B's public sandbox URLs), and what a pause kept.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("workspaces", sa.Column("public_ports", sa.Boolean, nullable=False, server_default=sa.false()))
    op.add_column("workspaces", sa.Column("memory_kept", sa.Boolean, nullable=True))


def downgrade() -> None:
    op.drop_column("workspaces", "memory_kept")
    op.drop_column("workspaces", "public_ports")
