"""Background processes through the helper (processes.c), over any `Transport` into the sandbox.

The helper keeps each process's record, output and exit in the workspace itself, so this side
holds no state: every call asks the sandbox. What it answers:

    spawn [-i] [-c COLS -r ROWS] [-t MS] [-H] -j META -- ARGV    "OK <pid>" | "E <ERRNO> <why>"
                       (-t: killed MS ms after its start; -H: ARGV is a helper subcommand)
    procs [PID]        "P <pid> <meta bytes> <exit bytes> <alive>\\n" + meta + exit, per process
    output PID OFFSET [-f]   "S <first offset>\\n", then records: u8 stream (1 stdout, 2 stderr,
                       3 terminal; 0 the end, with the exit line; 9 keep-alive), u32 length, data
    signal PID SIGNUM  "OK" | "E ..."
    input PID [-c | -w COLS ROWS]   stdin from ours; "OK <bytes>" | "E ..."
"""

from __future__ import annotations

import builtins
import json
import re
import signal as signals
import struct
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from agentbox.errors import BadRequest, Conflict, NotFound, ProviderError
from agentbox.sandbox.channel import (
    IDLE_SECONDS,
    MAX_LINE,
    AnswerReader,
    Call,
    HelperMalformed,
    Invocation,
    Transport,
)
from agentbox.sandbox.process_table import (
    OutputDropped,
    ProcessEnded,
    ProcessEvent,
    ProcessInfo,
    ProcessOutput,
    ProcessRequest,
    ProcessStream,
    TerminalSize,
)

_STREAMS: dict[int, ProcessStream] = {1: "stdout", 2: "stderr", 3: "pty"}
#: Looks at the table while a process's end is being written (a supervisor killed from inside never
#: writes it: that one is reported ended, how unknown, after these).
SETTLE_TRIES, SETTLE_PAUSE = 5, 0.02
_END, _SKIPPED, _KEEPALIVE = 0, 8, 9
_RECORD = struct.Struct(">BI")

# What the helper answers is untrusted (see agentbox.sandbox.channel): each part is read within a
# bound far above what processes.c and process_io.c send, and a helper past one fails its call
# (HelperMalformed).

#: An output record: process_io.c sends at most BUFSZ (64 KiB) of output in one, or its exit line
#: (256 bytes at most) or an offset.
MAX_OUTPUT_RECORD = 256 << 10
#: A process's record in the table: its "meta" is read up to MAX_META (64 KiB), "exit" up to 256 bytes.
MAX_META = 256 << 10
MAX_EXIT = 4 << 10
#: The table is answered as one document, so it is held whole: bounded, generously (about 4 KiB
#: each once parsed). Exited processes stay listed until removed (DELETE .../processes/{pid}).
MAX_PROCESSES = 10_000
MAX_TABLE_BYTES = 16 << 20
_TABLE_HEADER = re.compile(rb"P (\d{1,10}) (\d{1,10}) (\d{1,10}) ([01])")
_NUMBER = re.compile(rb"-?\d{1,20}")


class HelperProcesses:
    """The process table of one sandbox (see `agentbox.sandbox.process_table.ProcessTable`)."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    def start(self, request: ProcessRequest) -> ProcessInfo:
        started_at = datetime.now(UTC)
        meta = {
            "command": request.argv,
            "cwd": request.cwd,
            "tag": request.tag,
            "stdin": request.stdin or request.pty is not None,
            "pty": vars(request.pty) if request.pty else None,
            "started_at": started_at.isoformat(),
        }
        argv = ["spawn", "-j", json.dumps(meta)]
        if request.stdin:
            argv.append("-i")
        if request.pty:
            argv += ["-c", str(request.pty.cols), "-r", str(request.pty.rows)]
        if request.timeout:
            argv += ["-t", str(max(1, round(request.timeout * 1000)))]
        if request.helper_subcommand:
            argv.append("-H")
        answer = self._answer(Invocation([*argv, "--", *request.argv], cwd=request.cwd, env=request.env))
        if not answer.startswith(b"OK "):
            _raise(answer, None, BadRequest)
        return _info(_number(answer[3:], "a process id"), meta, b"", alive=True)

    def list(self) -> list[ProcessInfo]:
        return sorted(self._settled(["procs"]), key=lambda p: p.pid)

    def get(self, pid: int) -> ProcessInfo:
        found = self._settled(["procs", str(pid)], pid)
        if not found:
            raise NotFound(_missing(pid))
        return found[0]

    def _settled(self, argv: builtins.list[str], pid: int | None = None) -> builtins.list[ProcessInfo]:
        """The table, asked again (briefly) while a process is gone but its end not yet written: the
        moment between its supervisor reaping it and recording how it ended."""
        found = self._table(argv, pid)
        for _ in range(SETTLE_TRIES):
            if not any(p.status == "exited" and p.ended_at is None for p in found):
                break
            time.sleep(SETTLE_PAUSE)
            found = self._table(argv, pid)
        return found

    def _table(self, argv: builtins.list[str], pid: int | None) -> builtins.list[ProcessInfo]:
        call = self.transport.call(Invocation(argv, idle=IDLE_SECONDS))
        try:
            reader = AnswerReader(_stdout(call))
            if (first := reader.exactly(2)) == b"E ":  # an error line, or the first record's "P "
                _raise(first + (reader.line()), pid)
            return _read_table(reader, first or b"")
        finally:
            call.close()

    def output(self, pid: int, offset: int = 0, follow: bool = False) -> Iterator[ProcessEvent | None]:
        # Started here, not lazily, so that an unknown PID fails before any output is promised.
        argv = ["output", str(pid), str(offset), *(["-f"] if follow else [])]
        call = self.transport.call(Invocation(argv, idle=None if follow else IDLE_SECONDS))
        reader = _Records(call)
        try:
            header = reader.line()
            if not header.startswith(b"S "):
                _raise(header, pid)
            begin = _number(header[2:], "an output offset")
        except BaseException:
            call.close()
            raise
        return _output_events(call, reader, offset, begin, follow)

    def write_stdin(self, pid: int, data: Iterable[bytes]) -> int:
        answer = self._answer(Invocation(["input", str(pid)], stdin=True), data)
        if not answer.startswith(b"OK "):
            _raise(answer, pid)
        return _number(answer[3:], "a count of bytes written")

    def close_stdin(self, pid: int) -> None:
        self._ok(["input", str(pid), "-c"], pid)

    def signal(self, pid: int, signum: int) -> None:
        self._ok(["signal", str(pid), str(signum)], pid)

    def resize(self, pid: int, size: TerminalSize) -> None:
        self._ok(["input", str(pid), "-w", str(size.cols), str(size.rows)], pid)

    def _ok(self, argv: builtins.list[str], pid: int) -> None:
        answer = self._answer(Invocation(argv))
        if not answer.startswith(b"OK"):
            _raise(answer, pid)

    def _answer(self, invocation: Invocation, stdin: Iterable[bytes] | None = None) -> bytes:
        """A one-line answer ("OK ...", "E ..."), MAX_LINE at most."""
        call = self.transport.call(invocation)
        try:
            if stdin is not None:
                call.send(stdin)
            answer = bytearray()
            for data in _stdout(call):
                answer += data
                if len(answer) > MAX_LINE:
                    raise HelperMalformed(f"an answer longer than {MAX_LINE} bytes")
            return bytes(answer).strip()
        finally:
            call.close()


def _stdout(call: Call) -> Iterator[bytes]:
    return (data for stream, data in call.frames() if stream == 1)


class _Records:
    """Reads the `output` answer: a header line, then records, from the call's stdout."""

    def __init__(self, call: Call) -> None:
        self._reader = AnswerReader(_stdout(call))

    def line(self) -> bytes:
        return self._reader.line()

    def records(self) -> Iterator[tuple[int, bytes]]:
        while (head := self._reader.exactly(_RECORD.size)) is not None:
            kind, length = _RECORD.unpack(head)
            if length > MAX_OUTPUT_RECORD:
                raise HelperMalformed(f"an output record of {length} bytes (at most {MAX_OUTPUT_RECORD})")
            data = self._reader.exactly(length)
            if data is None:
                raise ProviderError("the workspace helper ended a process's output mid-record")
            yield kind, data


def _output_events(call: Call, reader: _Records, asked: int, begin: int, follow: bool) -> Iterator[ProcessEvent | None]:
    offset = begin
    try:
        if begin > asked:
            yield OutputDropped(offset=asked, resumed_at=begin)
        for kind, data in reader.records():
            if kind == _END:
                yield _ended(data)
                return
            if kind == _SKIPPED:  # the follower fell behind the oldest output kept
                resumed_at = _number(data, "an output offset")
                yield OutputDropped(offset=offset, resumed_at=resumed_at)
                offset = resumed_at
            elif kind in _STREAMS and data:
                yield ProcessOutput(_STREAMS[kind], offset, data)
                offset += len(data)
            elif kind == _KEEPALIVE:
                yield None
    finally:
        call.close()
    if follow:  # a follower ends with the process, never silently: the sandbox stopped or restarted
        raise ProviderError(f"the workspace's helper went away while following; ask again from offset {offset}")


def _parse_table(data: bytes) -> builtins.list[ProcessInfo]:
    return _read_table(AnswerReader(iter([data])))


def _read_table(reader: AnswerReader, first: bytes = b"") -> builtins.list[ProcessInfo]:
    """The `procs` answer, parsed as it comes (`first`: its first bytes, read already), within
    MAX_PROCESSES and MAX_TABLE_BYTES; each record "P <pid> <meta bytes> <exit bytes> <alive>\n", meta, exit."""
    found: builtins.list[ProcessInfo] = []
    total = 0
    while header := first + reader.line():
        first = b""
        parsed = _TABLE_HEADER.fullmatch(header)
        if parsed is None:
            raise HelperMalformed(f"a malformed process record ({header[:200]!r})")
        pid, meta_len, exit_len = (int(field) for field in parsed.groups()[:3])
        if meta_len > MAX_META or exit_len > MAX_EXIT:
            raise HelperMalformed(f"a process record of {meta_len} + {exit_len} bytes")
        total += len(header) + 1 + meta_len + exit_len
        if len(found) == MAX_PROCESSES or total > MAX_TABLE_BYTES:
            raise ProviderError(
                f"the workspace's process table has more than {MAX_PROCESSES} processes (or "
                f"{MAX_TABLE_BYTES >> 20} MiB of records), more than agentbox lists at once: remove exited ones "
                "(DELETE .../processes/{pid}; `ls /.agentbox/procs` through exec shows their PIDs)"
            )
        meta, ended = reader.exactly(meta_len), reader.exactly(exit_len)
        if meta is None or ended is None:
            break  # cut short: the sandbox stopped while it answered
        try:
            found.append(_info(pid, json.loads(meta), ended, parsed[4] == b"1"))
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError):  # RecursionError: "[[[[..."
            continue  # a record the workload itself has damaged: it is its own to lose
    return found


def _number(field: bytes, what: str) -> int:
    """An integer the helper sent (a PID, an offset, a count)."""
    if _NUMBER.fullmatch(field.strip()) is None:
        raise HelperMalformed(f"{what} that is not a number ({field[:100]!r})")
    return int(field)


def _info(pid: int, meta: dict[str, Any], ended: bytes, alive: bool) -> ProcessInfo:
    end = _ended(ended) if ended else None
    if end is None and not alive:  # its supervisor was killed from inside: how it ended is unknown
        end = ProcessEnded(exit_code=None, signal=None, ended_at=None)
    pty = meta.get("pty")
    return ProcessInfo(
        pid=pid,
        command=[str(arg) for arg in meta["command"]],
        cwd=str(meta.get("cwd") or ""),
        tag=tag if isinstance(tag := meta.get("tag"), str) else None,
        stdin=bool(meta.get("stdin")),
        pty=TerminalSize(int(pty["cols"]), int(pty["rows"])) if pty else None,
        status="running" if end is None else "exited",
        started_at=datetime.fromisoformat(meta["started_at"]) if meta.get("started_at") else None,
        exit_code=end.exit_code if end else None,
        signal=end.signal if end else None,
        ended_at=end.ended_at if end else None,
        timed_out=end.timed_out if end else False,
    )


def _ended(line: bytes) -> ProcessEnded:
    """The helper's exit line: "<exit code or -1> <signal or 0> <unix ns>[ stopped| timeout]"."""
    fields = line.split()
    try:
        code, signum, ns = (int(field) for field in fields[:3])
        ended_at = datetime.fromtimestamp(ns / 1e9, UTC)
    except (ValueError, OverflowError, OSError):  # a file the workload itself overwrote: it ended, how is lost
        return ProcessEnded(exit_code=None, signal=None, ended_at=None)
    return ProcessEnded(
        exit_code=code if code >= 0 else None,
        signal=_signal_name(signum) if signum else None,
        ended_at=ended_at,
        timed_out=fields[3:4] == [b"timeout"],
    )


def _signal_name(signum: int) -> str:
    try:
        return signals.Signals(signum).name
    except ValueError:
        return f"SIG{signum}"


def _missing(pid: int) -> str:
    return f"process {pid}: no such process in this workspace (GET .../processes lists them)"


#: The helper's errors for a process that exists but cannot take the request.
_CONFLICTS = {"ESRCH", "EBADF", "EPIPE"}


def _raise(answer: bytes, pid: int | None, default: type[ProviderError] | type[BadRequest] = ProviderError) -> None:
    if not answer.startswith(b"E "):
        raise ProviderError(f"unexpected answer from the workspace helper: {answer[:200]!r}")
    _, name, message = [*answer.decode("utf-8", "replace").split(" ", 2), "", ""][:3]
    what = f"process {pid}: " if pid is not None else ""
    if name == "ENOENT" and pid is not None:
        raise NotFound(_missing(pid))
    if name in _CONFLICTS:
        raise Conflict(what + message)
    if name == "ENOTSUP":
        raise Conflict(f"{message}: processes need a workspace made by this version of agentbox")
    if name == "ETIMEDOUT":
        raise Conflict(what + message)
    raise default(what + message.strip())
