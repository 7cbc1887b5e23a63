"""A workspace's egress policy (issue 29): allow and deny by name, wildcard, CIDR and port, header rules.

Rows with an allow list get the policy it stands for ({"allow": [...]}: an allow list becomes rules).

Revision ID: 0013
Revises: 0012
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("workspaces", sa.Column("egress", sa.JSON(none_as_null=True), nullable=True))
    workspaces = sa.table(
        "workspaces",
        sa.column("id", sa.String),
        sa.column("allow", sa.JSON(none_as_null=True)),
        sa.column("egress", sa.JSON(none_as_null=True)),
    )
    bind = op.get_bind()
    rows = bind.execute(sa.select(workspaces.c.id, workspaces.c.allow).where(workspaces.c.allow.is_not(None)))
    for workspace_id, allow in rows.fetchall():
        if isinstance(allow, list):
            bind.execute(
                workspaces.update().where(workspaces.c.id == workspace_id).values(egress={"allow": list(allow)})
            )


def downgrade() -> None:
    op.drop_column("workspaces", "egress")
