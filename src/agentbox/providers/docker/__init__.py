"""The Docker provider: workspaces as containers under gVisor's runsc or runc, and what only it needs
(the OCI runtime's choice in oci_runtime.py, per-workspace disks, the ways into the helper)."""

from agentbox.providers.docker.provider import DockerProvider, install_helper

__all__ = ["DockerProvider", "install_helper"]
