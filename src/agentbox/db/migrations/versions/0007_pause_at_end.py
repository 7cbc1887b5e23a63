"""What happens at a workspace's fixed end when it is not deletion: E2B's lifecycle `onTimeout: pause`.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("workspaces", sa.Column("pause_at_end", sa.JSON(none_as_null=True), nullable=True))


def downgrade() -> None:
    op.drop_column("workspaces", "pause_at_end")
