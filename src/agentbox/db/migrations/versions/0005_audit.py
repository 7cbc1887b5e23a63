"""The audit trail: every call of the API on a workspace.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

from agentbox.db.models import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_records",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("workspace_id", sa.String(32), nullable=False),
        sa.Column("owner", sa.String(64), nullable=True),
        sa.Column("at", UTCDateTime, nullable=False),
        sa.Column("action", sa.String(128), nullable=False),
        sa.Column("arguments", sa.JSON, nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("duration_ms", sa.Integer, nullable=False),
    )
    op.create_index("ix_audit_records_workspace_id", "audit_records", ["workspace_id"])


def downgrade() -> None:
    op.drop_index("ix_audit_records_workspace_id", "audit_records")
    op.drop_table("audit_records")
