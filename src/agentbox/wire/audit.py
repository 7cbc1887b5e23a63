"""The bodies of a workspace's audit trail (routes: api/audit.py)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field, JsonValue


class AuditRecordOut(BaseModel):
    id: int
    at: datetime
    owner: str | None
    action: str = Field(description='the method and route, e.g. "POST /exec", "POST /sessions/{session_id}/run"')
    arguments: dict[str, JsonValue] = Field(
        description="path, query and body arguments; file contents and env values left out"
    )
    status: int = Field(description="the HTTP status answered (101: a WebSocket accepted)")
    duration_ms: int


class AuditPage(BaseModel):
    records: list[AuditRecordOut] = Field(description="newest first")
    next_before: int | None = Field(description="pass as `before` for the next (older) page; null when there is none")
