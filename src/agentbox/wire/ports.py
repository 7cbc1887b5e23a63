"""The bodies of a workspace's ports (routes: api/ports.py): what listens in it, and a preview URL onto one."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ListeningPorts(BaseModel):
    ports: list[int] = Field(description="TCP ports something listens on inside the workspace, on any address")


class PreviewURL(BaseModel):
    url: str = Field(
        description="for a browser: the app on its own origin, {port}-{id}.{WORKSPACE_PREVIEW_DOMAIN} "
        "(or {port}-{id}.localhost:{server port} when none is set)"
    )
    path_url: str = Field(
        description="/preview/{token}/ on this server: works without wildcard names; the app's pages are sandboxed"
    )
    expires_at: int = Field(description="Unix time after which the URL is refused (403)")
