"""The Docker provider: workspaces as containers under gVisor's runsc or runc, and what only it needs
(the runtime choice, per-workspace disks, the Engine API transport into the helper)."""

from agentbox.providers.docker.provider import DockerProvider, install_helper

__all__ = ["DockerProvider", "install_helper"]
