"""envd's Process service (`/process.Process/*`) over the workspace's process table.

An envd process is an agentbox background process: its PID is the real one in the sandbox, it
outlives the stream that started it (E2B's `disconnect`), and its output is kept in the
workspace, so `Connect` replays what it printed so far and then follows. As envd does, a
command started with a deadline (the SDK's `timeout`, 60 s unless 0) is killed when it passes:
by its supervisor in the sandbox, so that the deadline holds whichever replica started it and
whether or not that replica is still there.
"""

from __future__ import annotations

import signal as signals
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from e2b.envd.process import process_connect
from e2b.envd.process import process_pb as P

from agentbox.e2b_api import envd
from agentbox.e2b_api.rpc import call, connect_error, drain, one_of
from agentbox.errors import AgentboxError, Conflict
from agentbox.sandbox.process_table import (
    ProcessEnded,
    ProcessEvent,
    ProcessInfo,
    ProcessOutput,
    ProcessRequest,
    ProcessTable,
    TerminalSize,
)
from agentbox.sandbox.watchers import TAG as WATCH_TAG
from agentbox.web.dependencies import in_thread

R = TypeVar("R")
#: A command's process table and its PID.
Begun = tuple[ProcessTable, int]

#: envd's exit code for a process that a signal ended.
SIGNALLED = -1
_SIGNALS = {P.Signal.SIGKILL: signals.SIGKILL, P.Signal.SIGTERM: signals.SIGTERM}


def _table() -> ProcessTable:
    target = envd.TARGET.get()
    return target.use().processes()


def _pid(selector: P.ProcessSelector | None) -> int:
    chosen = selector.selector if selector is not None else None
    if chosen is None or chosen.field != "pid":
        raise ConnectError(Code.INVALID_ARGUMENT, "name the process by its pid (tags are not offered)")
    return int(chosen.value)


def _event(kind: str, value: Any) -> P.ProcessEvent:
    return P.ProcessEvent(event=one_of(kind, value))


def _end(ended: ProcessEnded) -> P.ProcessEvent:
    if ended.exit_code is not None:
        end = P.ProcessEvent.EndEvent(exit_code=ended.exit_code, exited=True, status=f"exit status {ended.exit_code}")
    else:
        name = (ended.signal or "SIGKILL").removeprefix("SIG").lower()
        end = P.ProcessEvent.EndEvent(exit_code=SIGNALLED, exited=False, status=f"signal: {name}")
    return _event("end", end)


async def _events(begun: Awaitable[Begun], wrap: Callable[..., R]) -> AsyncGenerator[R, None]:
    """start, the output (kept and to come), keep-alives while it is quiet, and the end; each `wrap`ped.
    A command killed at its deadline ends the stream with `deadline_exceeded`, as envd's does.

    It closes its source itself: the server closes what the handler returned when its client
    leaves, and that close must reach the follower in the sandbox (an inner generator is not
    closed with the one around it)."""
    table, pid = await begun
    source = drain(await call(table.output, pid, 0, True))
    try:
        yield wrap(event=_event("start", P.ProcessEvent.StartEvent(pid=pid)))
        async for item in source:
            event: ProcessEvent | None = item
            if event is None:
                yield wrap(event=_event("keepalive", P.ProcessEvent.KeepAlive()))
            elif isinstance(event, ProcessOutput):
                yield wrap(event=_event("data", P.ProcessEvent.DataEvent(output=one_of(event.stream, event.data))))
            elif isinstance(event, ProcessEnded):
                if event.timed_out:
                    raise ConnectError(Code.DEADLINE_EXCEEDED, "the command ran past its timeout and was killed")
                yield wrap(event=_end(event))
                return
            # OutputDropped (over KEPT_OUTPUT): envd keeps no output at all, so nothing to say
    finally:
        await source.aclose()  # ends the follower in the sandbox; the process runs on


async def _running(pid: int) -> Begun:
    table = _table()
    info: ProcessInfo = await call(table.get, pid)
    if info.status != "running":
        raise ConnectError(Code.NOT_FOUND, f"process with pid {pid} not found")
    return table, pid


class ProcessService(process_connect.Process):
    """The service behind ProcessASGIApplication (e2b.envd.process.process_connect.Process)."""

    def start(self, request: P.StartRequest, ctx: RequestContext[Any, Any]) -> AsyncIterator[P.StartResponse]:
        return _events(self._started(request, ctx.timeout_ms), P.StartResponse)

    def connect(self, request: P.ConnectRequest, ctx: RequestContext[Any, Any]) -> AsyncIterator[P.ConnectResponse]:
        return _events(_running(_pid(request.process)), P.ConnectResponse)

    async def _started(self, request: P.StartRequest, timeout_ms: float | None) -> Begun:
        target = envd.TARGET.get()
        pty = request.pty.size if request.pty is not None else None
        config = request.process or P.ProcessConfig()
        wanted = ProcessRequest(
            argv=[config.cmd, *config.args],
            cwd=target.path(config.cwd) if config.cwd else target.home,
            env=dict(config.envs),
            stdin=bool(request.stdin),
            pty=TerminalSize(cols=pty.cols or 80, rows=pty.rows or 24) if pty else None,
            tag=request.tag if request.has_field("tag") else None,
            timeout=timeout_ms / 1000 if timeout_ms else None,
        )
        started: ProcessInfo = await call(lambda: target.use().start_process(wanted))
        return _table(), started.pid

    async def list(self, request: P.ListRequest, ctx: RequestContext[Any, Any]) -> P.ListResponse:
        table = _table()
        found: list[ProcessInfo] = await call(table.list)
        return P.ListResponse(
            processes=[
                P.ProcessInfo(
                    config=P.ProcessConfig(cmd=p.command[0], args=p.command[1:], cwd=p.cwd),
                    pid=p.pid,
                    tag=p.tag,
                )
                for p in found
                if p.status == "running" and p.command and p.tag != WATCH_TAG  # envd's watchers are no processes
            ]
        )

    async def send_input(self, request: P.SendInputRequest, ctx: RequestContext[Any, Any]) -> P.SendInputResponse:
        table = _table()
        pid = _pid(request.process)
        chosen = request.input.input if request.input is not None else None
        data = chosen.value if chosen is not None else b""
        await self._input(table, pid, data)
        return P.SendInputResponse()

    async def stream_input(
        self, request: AsyncIterator[P.StreamInputRequest], ctx: RequestContext[Any, Any]
    ) -> P.StreamInputResponse:
        table = _table()
        pid: int | None = None
        async for message in request:
            event = message.event
            if event is None:
                continue
            if event.field == "start":
                pid = _pid(event.value.process)
            elif event.field == "data":
                if pid is None:
                    raise ConnectError(Code.INVALID_ARGUMENT, "send the start event (which process) before data")
                given = event.value.input
                chosen = given.input if given is not None else None
                await self._input(table, pid, chosen.value if chosen is not None else b"")
        return P.StreamInputResponse()

    async def close_stdin(self, request: P.CloseStdinRequest, ctx: RequestContext[Any, Any]) -> P.CloseStdinResponse:
        table = _table()
        await self._conflict_as_not_found(table.close_stdin, _pid(request.process))
        return P.CloseStdinResponse()

    async def send_signal(self, request: P.SendSignalRequest, ctx: RequestContext[Any, Any]) -> P.SendSignalResponse:
        table = _table()
        number = _SIGNALS.get(request.signal)
        if number is None:
            raise ConnectError(Code.INVALID_ARGUMENT, "send SIGNAL_SIGKILL or SIGNAL_SIGTERM")
        await self._conflict_as_not_found(table.signal, _pid(request.process), int(number))
        return P.SendSignalResponse()

    async def update(self, request: P.UpdateRequest, ctx: RequestContext[Any, Any]) -> P.UpdateResponse:
        table = _table()
        wanted = request.pty.size if request.pty is not None else None
        if wanted is None:
            raise ConnectError(Code.INVALID_ARGUMENT, "name the terminal's new size (pty.size)")
        size = TerminalSize(cols=wanted.cols, rows=wanted.rows)
        await call(table.resize, _pid(request.process), size)
        return P.UpdateResponse()

    async def _input(self, table: ProcessTable, pid: int, data: bytes) -> None:
        await self._conflict_as_not_found(table.write_stdin, pid, [data])

    async def _conflict_as_not_found(self, function: Callable[..., Any], pid: int, *args: Any) -> None:
        """envd says not_found for a process that has ended; agentbox's table says Conflict."""
        try:
            await in_thread(function, pid, *args)
        except Conflict as exc:
            raise ConnectError(Code.NOT_FOUND, f"process with pid {pid}: {exc.detail}") from None
        except AgentboxError as exc:
            raise connect_error(exc) from None
