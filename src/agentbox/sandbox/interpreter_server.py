"""The code interpreter of E2B's `code-interpreter-v1` template, as it runs inside the sandbox.

agentbox writes this file into the sandbox and starts it (interpreter.py); it listens on the
sandbox's loopback, port 49999, where E2B's `e2b-code-interpreter` SDK reaches it through the
sandbox's port traffic. It uses the standard library only: it runs under whatever Python the
image has, and nothing in it may reach agentbox.

HTTP, as the SDK speaks it: `POST /execute` (`code`, `context_id` or `language`, `env_vars`)
answers with NDJSON lines (`stdout`, `stderr`, `result`, `error`, `number_of_executions`) while
the code runs; `POST /contexts`, `GET /contexts`, `DELETE /contexts/{id}`, `POST
/contexts/{id}/restart`; `GET /health`.

A context is a Python process of its own (this file, run as `kernel`), so that its variables
live on from one execution to the next, and so that one context's crash or infinite loop is not
another's. Its stdout and stderr are pipes read here (what the code prints, and what its child
processes print); results, errors and the end of each execution come on a third pipe. One
execution at a time per context; a client that goes away interrupts its execution (SIGINT, as
Jupyter's interrupt), so that the context is free for the next.
"""

from __future__ import annotations

import ast
import base64
import codecs
import contextlib
import json
import linecache
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PORT = 49999
#: Seconds of quiet in an execution between two keep-alive lines.
KEEPALIVE = 1.0
#: The name the code runs under, in tracebacks.
CELL = "<cell>"
LANGUAGES = ("python",)
#: The representations of a result the SDK knows (IPython's `_repr_*_` methods), by its field names.
FORMATS = {
    "html": "_repr_html_",
    "markdown": "_repr_markdown_",
    "svg": "_repr_svg_",
    "png": "_repr_png_",
    "jpeg": "_repr_jpeg_",
    "latex": "_repr_latex_",
    "json": "_repr_json_",
    "javascript": "_repr_javascript_",
}


# ---- the kernel: one context's process -----------------------------------------------------------


def kernel(requests_fd: int, protocol_fd: int) -> None:
    """Run each request line (`{"code", "env"}`) of `requests_fd` in one namespace; report on `protocol_fd`.
    The code's own stdin is empty: `input()` must not eat the requests."""
    requests = os.fdopen(requests_fd, "r")
    protocol = os.fdopen(protocol_fd, "w", buffering=1)
    for stream in (sys.stdout, sys.stderr):  # a line at a time, as Jupyter streams it
        stream.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    namespace: dict[str, Any] = {"__name__": "__main__"}

    def send(message: dict[str, Any]) -> None:
        protocol.write(json.dumps(message) + "\n")

    def display(value: object, main: bool = False) -> None:
        send({"type": "result", "is_main_result": main, **represent(value)})

    namespace["display"] = display
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # an interrupt between executions is for nothing
    for executions, line in enumerate(requests, start=1):
        request = json.loads(line)
        send({"type": "number_of_executions", "execution_count": executions})
        saved = {name: os.environ.get(name) for name in request.get("env") or {}}
        os.environ.update(request.get("env") or {})
        signal.signal(signal.SIGINT, signal.default_int_handler)
        code = request["code"]
        linecache.cache[CELL] = (len(code), None, code.splitlines(True), CELL)  # tracebacks show its lines
        try:
            tree = ast.parse(code, CELL, "exec")
            last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
            exec(compile(tree, CELL, "exec"), namespace)
            if last is not None:
                value = eval(compile(ast.Expression(last.value), CELL, "eval"), namespace)
                if value is not None:
                    display(value, main=True)
        except BaseException as exc:  # the code's own errors, SystemExit and ^C included
            tb = exc.__traceback__
            while tb is not None and tb.tb_frame.f_code.co_filename != CELL:
                tb = tb.tb_next  # the kernel's own frames are not the code's
            shown = traceback.format_exception(type(exc), exc, tb)
            send({"type": "error", "name": type(exc).__name__, "value": str(exc), "traceback": "".join(shown)})
        finally:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
            sys.stdout.flush()
            sys.stderr.flush()
            send({"type": "end"})


def represent(value: object) -> dict[str, Any]:
    shown: dict[str, Any] = {"text": value if isinstance(value, str) else repr(value)}  # E2B's: a string as is
    for field, method in FORMATS.items():
        make = getattr(value, method, None)
        if callable(make):
            try:
                made = make()
            except Exception:  # a broken representation is left out, as IPython does
                continue
            if isinstance(made, bytes):
                made = base64.b64encode(made).decode()
            if made is not None:
                shown[field] = made
    return shown


# ---- the server --------------------------------------------------------------------------------


class Context:
    """A kernel process and the pipes it speaks on."""

    def __init__(self, context_id: str, language: str, cwd: str) -> None:
        self.id, self.language, self.cwd = context_id, language, cwd
        self.lock = threading.Lock()
        self._start()

    def describe(self) -> dict[str, str]:
        return {"id": self.id, "language": self.language, "cwd": self.cwd}

    def _start(self) -> None:
        requests_r, requests_w = os.pipe()
        protocol_r, protocol_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        self.process = subprocess.Popen(
            [sys.executable, __file__, "kernel", str(requests_r), str(protocol_w)],
            stdin=subprocess.DEVNULL,
            stdout=out_w,
            stderr=err_w,
            pass_fds=(requests_r, protocol_w),
            cwd=self.cwd,
            start_new_session=True,  # its own group: an interrupt reaches what it started too
        )
        for fd in (requests_r, protocol_w, out_w, err_w):
            os.close(fd)
        for fd in (out_r, err_r):
            os.set_blocking(fd, False)
        self.requests = os.fdopen(requests_w, "wb")
        self.protocol, self.out, self.err = protocol_r, out_r, err_r

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.requests.close()
        for fd in (self.protocol, self.out, self.err):
            os.close(fd)

    def restart(self) -> None:
        with self.lock:
            self.stop()
            self._start()

    def interrupt(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGINT)

    def execute(self, code: str, env: dict[str, str]) -> Iterator[dict[str, Any]]:
        """The execution's messages, as the SDK reads them, until it ends; a keep-alive every KEEPALIVE
        seconds of quiet, so that a client that went away is found out (writing to it fails)."""
        with self.lock:
            try:
                self.requests.write((json.dumps({"code": code, "env": env}) + "\n").encode())
                self.requests.flush()
            except BrokenPipeError:
                yield from self._died()
                return
            yield from self._messages()

    def _messages(self) -> Iterator[dict[str, Any]]:
        decoders = {fd: codecs.getincrementaldecoder("utf-8")("replace") for fd in (self.out, self.err)}
        names = {self.out: "stdout", self.err: "stderr"}

        def printed() -> Iterator[dict[str, Any]]:
            for fd in (self.out, self.err):  # non-blocking: what is there now
                with contextlib.suppress(BlockingIOError):
                    while data := os.read(fd, 65536):
                        yield output(names[fd], decoders[fd].decode(data))

        pending = b""
        with selectors.DefaultSelector() as selector:
            for fd in (self.protocol, self.out, self.err):
                selector.register(fd, selectors.EVENT_READ)
            while True:
                ready = {key.fd for key, _ in selector.select(KEEPALIVE)}
                if not ready:
                    yield {"type": "keepalive"}  # a type the SDK passes over
                yield from printed()
                if self.protocol not in ready:
                    continue
                data = os.read(self.protocol, 65536)
                if not data:
                    yield from self._died()
                    return
                pending += data
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    yield from printed()  # what the code printed before this message goes first
                    message = json.loads(line)
                    if message["type"] == "end":
                        return
                    yield message

    def _died(self) -> Iterator[dict[str, Any]]:
        code = self.process.wait()
        self.stop()
        self._start()
        why = f"the context's process ended (exit status {code}); it was restarted with an empty namespace"
        yield {"type": "error", "name": "ContextDied", "value": why, "traceback": why}


def output(stream: str, text: str) -> dict[str, Any]:
    return {"type": stream, "text": text, "timestamp": time.time_ns()}


class Contexts:
    def __init__(self) -> None:
        self.home = os.environ.get("HOME") or "/"
        self.lock = threading.Lock()
        self.by_id: dict[str, Context] = {}
        self.defaults: dict[str, Context] = {}

    def create(self, language: str, cwd: str) -> Context:
        context = Context(uuid.uuid4().hex, language, cwd)
        with self.lock:
            self.by_id[context.id] = context
        return context

    def default(self, language: str) -> Context:
        with self.lock:
            if language not in self.defaults:
                self.defaults[language] = self.by_id[language] = Context(language, language, self.home)
            return self.defaults[language]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    contexts: Contexts

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/health":
            self.answer(200, "OK")
        elif self.path == "/contexts":
            with self.contexts.lock:
                listed = [c.describe() for c in self.contexts.by_id.values()]
            self.answer(200, listed)
        else:
            self.answer(404, f"no such path: {self.path}")

    def do_POST(self) -> None:
        body = self.body()
        if body is None:
            return
        parts = self.path.strip("/").split("/")
        if parts == ["execute"]:
            self.execute(body)
        elif parts == ["contexts"]:
            language = self.language(body)
            cwd = str(body.get("cwd") or self.contexts.home)
            if language is not None and not os.access(cwd, os.X_OK):
                self.answer(400, f"cwd {cwd!r} is not a directory the sandbox's user may enter")
            elif language is not None:
                self.answer(200, self.contexts.create(language, cwd).describe())
        elif len(parts) == 3 and parts[0] == "contexts" and parts[2] == "restart":
            context = self.context(parts[1])
            if context is not None:
                context.restart()
                self.answer(200, context.describe())
        else:
            self.answer(404, f"no such path: {self.path}")

    def do_DELETE(self) -> None:
        parts = self.path.strip("/").split("/")
        context = self.context(parts[1]) if len(parts) == 2 and parts[0] == "contexts" else None
        if context is None:
            if len(parts) != 2:
                self.answer(404, f"no such path: {self.path}")
            return
        with self.contexts.lock:
            self.contexts.by_id.pop(context.id, None)
            self.contexts.defaults = {k: v for k, v in self.contexts.defaults.items() if v is not context}
        context.stop()
        self.answer(204, None)

    def execute(self, body: dict[str, Any]) -> None:
        if body.get("context_id"):
            context = self.context(str(body["context_id"]))
        else:
            language = self.language(body)
            context = self.contexts.default(language) if language is not None else None
        if context is None:
            return
        code = body.get("code")
        if not isinstance(code, str):
            self.answer(400, "code: the code to run, as a string")
            return
        env = {str(k): str(v) for k, v in (body.get("env_vars") or {}).items()}
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        messages = context.execute(code, env)
        try:
            for message in messages:
                line = (json.dumps(message) + "\n").encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            context.interrupt()  # the client went away (its timeout): the context is freed for the next
            for _ in messages:  # to the end of the interrupted execution
                pass

    def language(self, body: dict[str, Any]) -> str | None:
        language = str(body.get("language") or "python").lower()
        if language not in LANGUAGES:
            self.answer(400, f"language {language!r} is not offered here: agentbox's code interpreter runs python")
            return None
        return language

    def context(self, context_id: str) -> Context | None:
        with self.contexts.lock:
            found = self.contexts.by_id.get(context_id)
        if found is None:
            self.answer(404, f"context {context_id} not found")
        return found

    def body(self) -> dict[str, Any] | None:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            found = json.loads(self.rfile.read(length) or b"{}")
        except ValueError as exc:
            self.answer(400, f"the body is not JSON: {exc}")
            return None
        if not isinstance(found, dict):
            self.answer(400, "the body must be a JSON object")
            return None
        return found

    def answer(self, status: int, content: object) -> None:
        data = b"" if content is None else json.dumps(content).encode()
        self.send_response(status)
        if content is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def serve() -> None:
    Handler.contexts = Contexts()
    server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
    server.daemon_threads = True
    threading.Thread(target=Handler.contexts.default, args=("python",), daemon=True).start()  # warm
    print("listening", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    if sys.argv[1:2] == ["kernel"]:
        kernel(int(sys.argv[2]), int(sys.argv[3]))
    else:
        serve()
