"""The Host a workspace's ports' apps are sent (E2B's `maskRequestHost`, `${PORT}` in it); NULL, as every
workspace made before has: `localhost:<port>`, what agentbox always sent.

Revision ID: 0016
Revises: 0015
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("workspaces", sa.Column("request_host", sa.String(259), nullable=True))


def downgrade() -> None:
    op.drop_column("workspaces", "request_host")
