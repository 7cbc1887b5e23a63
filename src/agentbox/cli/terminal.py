"""The client side of a workspace terminal (`agentbox ws shell`): this terminal, relayed over the WebSocket.

Keys go out as binary frames as they are typed (the local terminal in raw mode, so that ^C
and arrows reach the remote shell), the remote terminal's bytes come back as they are, and a
window resize here (SIGWINCH) resizes the remote one.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import termios
import threading
import tty
from collections.abc import Iterator
from types import FrameType
from typing import BinaryIO

from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from agentbox.client import APIError
from agentbox.wire.processes import ProcessExitEvent


def terminal_url(base_url: str, workspace_id: str, pid: int) -> str:
    scheme, _, rest = base_url.rstrip("/").partition("://")
    return f"{'wss' if scheme == 'https' else 'ws'}://{rest}/api/v1/workspaces/{workspace_id}/processes/{pid}/terminal"


def attach(
    base_url: str, api_key: str, workspace_id: str, pid: int, stdin: int = 0, stdout: BinaryIO | None = None
) -> ProcessExitEvent | None:
    """Relay terminal `stdin`/`stdout` to process `pid`'s terminal until it ends (its exit) or the connection
    does (None: the process may still run). Raises APIError when the server refuses the socket."""
    out = stdout or sys.stdout.buffer
    headers = {"Authorization": f"Bearer {api_key}"}
    try:
        connection = connect(terminal_url(base_url, workspace_id, pid), additional_headers=headers, max_size=None)
    except InvalidStatus as exc:
        raise APIError(exc.response.status_code, _detail(exc.response.body)) from None
    with connection, _raw(stdin), _resizes(connection, stdin):
        threading.Thread(target=_send_keys, args=(connection, stdin), daemon=True).start()
        try:
            for message in connection:
                if isinstance(message, bytes):
                    out.write(message)
                    out.flush()
                elif "exit_code" in message:
                    return ProcessExitEvent.model_validate_json(message)
        except ConnectionClosed:
            pass
    return None


def terminal_size(fd: int) -> tuple[int, int]:
    """(cols, rows) of the terminal on `fd`; 80x24 when it is not one."""
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        return 80, 24
    return size.columns, size.lines


def _send_keys(connection: ClientConnection, stdin: int) -> None:
    with contextlib.suppress(OSError, ConnectionClosed):
        while keys := os.read(stdin, 4096):
            connection.send(keys)


@contextlib.contextmanager
def _raw(fd: int) -> Iterator[None]:
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@contextlib.contextmanager
def _resizes(connection: ClientConnection, fd: int) -> Iterator[None]:
    if not os.isatty(fd) or threading.current_thread() is not threading.main_thread():
        yield
        return

    def resized(_signum: int, _frame: FrameType | None) -> None:
        cols, rows = terminal_size(fd)
        with contextlib.suppress(ConnectionClosed):
            connection.send(json.dumps({"cols": cols, "rows": rows}))

    previous = signal.signal(signal.SIGWINCH, resized)
    try:
        yield
    finally:
        signal.signal(signal.SIGWINCH, previous)


def _detail(body: bytes | bytearray | None) -> str:
    try:
        return str(json.loads(body or b"")["detail"])
    except (ValueError, KeyError, TypeError):
        return bytes(body or b"").decode("utf-8", "replace") or "the server refused the terminal"
