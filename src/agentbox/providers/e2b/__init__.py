"""Workspaces as E2B sandboxes: the provider (provider.py: the deployment), what reaches inside one
(runtime.py), the helper reached through envd's commands (commands.py), and the SDK's errors as
agentbox's (errors.py)."""

from agentbox.providers.e2b.errors import e2b_errors
from agentbox.providers.e2b.provider import E2BProvider

__all__ = ["E2BProvider", "e2b_errors"]
