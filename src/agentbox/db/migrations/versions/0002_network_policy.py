"""Per-workspace network policy: an allow list and what it resolved to.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("workspaces", sa.Column("allow", sa.JSON, nullable=True))
    op.add_column("workspaces", sa.Column("allow_cidrs", sa.JSON, nullable=True))


def downgrade() -> None:
    op.drop_column("workspaces", "allow_cidrs")
    op.drop_column("workspaces", "allow")
