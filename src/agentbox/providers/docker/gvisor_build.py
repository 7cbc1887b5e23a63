"""Template images built step by step under gVisor (issue 30): each `RUN` in a container of the runtime
`runsc-build` (registered by scripts/setup-host.sh: runsc with `--network=none`, so no network, and
`--overlay2=none`, so that the step's writes reach the container's own layer and `docker commit` keeps them),
each step committed as an image, the next step started from it; `COPY` and `ADD` put the context's files into
a created (never started) container and commit it; the image's configuration (ENV, WORKDIR, USER, CMD,
ENTRYPOINT, EXPOSE, LABEL) is written by the last commit.

The engine's own builder runs `RUN` under the daemon's default runtime (runc), with no way to ask for another:
this is the way to gVisor for builds on this engine. What it does not do (multi-stage builds, `COPY --from`,
flags of COPY and ADD, `ADD` of a URL, HEALTHCHECK, STOPSIGNAL, ONBUILD) is refused before the build
(`unsupported`), naming the line; `ADD` of a local archive copies it as a file (the engine's builder unpacks it).
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import json
import logging
import posixpath
import re
import secrets
import shlex
import tarfile
import threading
import time
from collections.abc import Callable
from typing import Any

import docker
import docker.errors
import requests
from dockerfile_parse import DockerfileParser  # type: ignore[import-untyped]

from agentbox.providers.base import ImageBuild
from agentbox.providers.docker.engine import engine_errors
from agentbox.providers.docker.images import STEP_PREFIX, BuildFailed

log = logging.getLogger("agentbox.providers.docker.gvisor_build")

#: The engine's name of the runtime `RUN` steps run under (scripts/setup-host.sh registers it).
BUILD_RUNTIME = "runsc-build"
#: Instructions the step builder takes; the image's configuration ones go to the last commit as they are.
CONFIG = ("CMD", "ENTRYPOINT", "EXPOSE", "LABEL", "VOLUME")
REFUSED = {
    "HEALTHCHECK": "HEALTHCHECK",
    "STOPSIGNAL": "STOPSIGNAL",
    "ONBUILD": "ONBUILD",
}
# gVisor's own threads count against a container's pids limit (docs: machine notes); room for a build's tools.
PIDS_LIMIT = 4096
#: How often a running step's layer is measured against what the build may still write (`ImageBuild.disk`): the
#: engine's storage has no quota here, so a step past it is killed, at most this late.
DISK_CHECK = 0.5
_VARIABLE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


def runtime_registered(client: docker.DockerClient) -> bool:
    """Whether the engine has the build runtime (runsc with --overlay2=none --network=none)."""
    with contextlib.suppress(docker.errors.DockerException, requests.exceptions.RequestException):
        return BUILD_RUNTIME in (client.info().get("Runtimes") or {})
    return False


def unsupported(dockerfile: str) -> str | None:
    """What of `dockerfile` the step builder does not do, said for a 422; None when it builds all of it."""
    froms = 0
    for item in _instructions(dockerfile):
        instruction, value = item["instruction"], item["value"]
        where = f"line {item['startline'] + 1}"
        if instruction in REFUSED:
            return f"{where}: {instruction} is not supported by the gVisor builder"
        if instruction == "FROM":
            froms += 1
            if froms > 1:
                return f"{where}: a second FROM: multi-stage builds are not supported by the gVisor builder"
        if instruction in ("COPY", "ADD"):
            flags = [w for w in value.split() if w.startswith("--")]
            if flags:
                return f"{where}: {instruction} {flags[0]}: flags are not supported by the gVisor builder"
            if instruction == "ADD" and re.search(r"(^|\s)[a-z]+://", value):
                return f"{where}: ADD of a URL: builds have no network; put the file in the context"
    return None


def _instructions(dockerfile: str) -> list[dict[str, Any]]:
    structure = DockerfileParser(fileobj=io.BytesIO(dockerfile.encode())).structure
    return [item for item in structure if item["instruction"] != "COMMENT"]


def _substitute(text: str, variables: dict[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3)
        return variables.get(name, match.group(2) or "")

    return _VARIABLE.sub(value, text)


def _pairs(value: str) -> list[tuple[str, str]]:
    """ENV's or LABEL's `k=v k2="v 2"`, or ENV's old `k v` form."""
    words = _split(value)
    if words and "=" not in words[0]:
        return [(words[0], value.split(None, 1)[1] if len(words) > 1 else "")]
    return [(word.split("=", 1)[0], word.split("=", 1)[1]) for word in words if "=" in word]


def _split(value: str) -> list[str]:
    try:
        return shlex.split(value)
    except ValueError as exc:
        raise BuildFailed(f"the build failed: cannot read {value!r}: {exc}") from None


def _json_or_shell(value: str, shell: list[str]) -> list[str]:
    if value.startswith("["):
        with contextlib.suppress(ValueError):
            parsed = json.loads(value)
            if isinstance(parsed, list) and all(isinstance(word, str) for word in parsed):
                return parsed
    return [*shell, value]


class StepBuilder:
    def __init__(self, client: docker.DockerClient, build: ImageBuild, on_log: Callable[[str], None]) -> None:
        self.client = client
        self.build = build
        self.on_log = on_log
        self.context = _context_files(build.context)
        self.image = ""
        self.env: dict[str, str] = {}
        self.args: dict[str, str] = {}
        self.workdir = "/"
        self.user = ""
        self.shell = ["/bin/sh", "-c"]
        self.changes: list[str] = []
        self.made: list[str] = []  # images committed, in order
        self.written = 0  # bytes the RUN steps' layers hold so far
        self.steps = 0  # containers made
        self.deadline = time.monotonic() + build.timeout

    def run(self) -> str:
        steps = _instructions(self.build.dockerfile)
        self.on_log(f"Building under gVisor ({BUILD_RUNTIME}: no network; each RUN in its own sandbox)\n")
        try:
            for number, item in enumerate(steps, 1):
                self.on_log(f"Step {number}/{len(steps)} : {item['content'].strip()}\n")
                self._step(item["instruction"], item["value"].strip())
                if time.monotonic() > self.deadline:
                    raise BuildFailed(
                        f"the build took longer than {self.build.timeout:g} s (WORKSPACE_TEMPLATE_BUILD_TIMEOUT)"
                    )
            image_id = self._commit(self._created(), changes=self._config(), final=True)
        except BaseException:
            self._forget()
            raise
        self.on_log(f"Successfully built {image_id[7:19]}\nSuccessfully tagged {self.build.ref}\n")
        return image_id

    def _variables(self) -> dict[str, str]:
        return {**self.args, **self.env}

    def _step(self, instruction: str, value: str) -> None:
        if instruction == "FROM":
            base = value.split()[0] if not value.startswith("--") else value.split()[1]
            with engine_errors("looking up the base image"):
                image = self.client.images.get(_substitute(base, self.args))
            self.image = str(image.id)
            config = image.attrs.get("Config") or {}
            self.env = dict(entry.split("=", 1) for entry in config.get("Env") or [] if "=" in entry)
            self.workdir = config.get("WorkingDir") or "/"
            self.user = config.get("User") or ""
            self.on_log(f" ---> {self.image[7:19]}\n")
        elif instruction == "ARG":
            name, _, default = value.partition("=")
            self.args[name.strip()] = _substitute(default.strip().strip('"'), self._variables())
        elif instruction == "ENV":
            for key, val in _pairs(_substitute(value, self._variables())):
                self.env[key] = val
        elif instruction == "WORKDIR":
            self.workdir = posixpath.normpath(posixpath.join(self.workdir, _substitute(value, self._variables())))
            self._put({self.workdir + "/": None})
        elif instruction == "USER":
            self.user = _substitute(value, self._variables())
        elif instruction == "SHELL":
            self.shell = _json_or_shell(value, [])
        elif instruction == "RUN":
            self._run(_json_or_shell(value, self.shell))
        elif instruction in ("COPY", "ADD"):
            self._copy(
                _split(_substitute(value, self._variables())) if not value.startswith("[") else json.loads(value)
            )
        elif instruction == "MAINTAINER":
            self.changes.append(f"LABEL maintainer={json.dumps(value)}")
        elif instruction in ("CMD", "ENTRYPOINT"):  # the shell substitutes in these, at their run
            self.changes.append(f"{instruction} {value}")
        elif instruction in CONFIG:
            self.changes.append(f"{instruction} {_substitute(value, self._variables())}")

    def _container_options(self) -> dict[str, Any]:
        # Named, not labelled: a step container's labels would go into every image committed from it, and so
        # into every workspace of the template.
        self.steps += 1
        return {
            "name": f"{STEP_PREFIX}{self.build.ref.rpartition(':')[2]}-{self.steps}-{secrets.token_hex(3)}",
            "runtime": BUILD_RUNTIME,
            "network_mode": "none",
            "mem_limit": self.build.memory,
            "memswap_limit": self.build.memory,
            "nano_cpus": int(self.build.cpu * 1e9),
            "pids_limit": PIDS_LIMIT,
            "environment": {**self.args, **self.env},
            "working_dir": self.workdir,
            "user": self.user,
        }

    def _run(self, argv: list[str]) -> None:
        with engine_errors("running a build step"):
            container = self.client.containers.create(self.image, argv, entrypoint=[], **self._container_options())
        try:
            self.on_log(f" ---> Running in {container.id[:12]}\n")
            # The build's deadline holds inside a step too: past it the step is killed.
            late = threading.Timer(max(1.0, self.deadline - time.monotonic()), _kill, (container,))
            late.start()
            watch = _LayerWatch(self.client, container, self.build.disk - self.written)
            try:
                with engine_errors("running a build step"):
                    container.start()
                    watch.start()
                    for chunk in container.logs(stream=True, follow=True):
                        self.on_log(chunk.decode(errors="replace"))
                    status = container.wait()["StatusCode"]
            finally:
                late.cancel()
                watch.stop()
            self.written += watch.measure()
            if watch.over or self.written > self.build.disk:
                message = f"the build wrote more than {self.build.disk >> 20} MiB (WORKSPACE_TEMPLATE_BUILD_DISK)"
                self.on_log(message + "\n")
                raise BuildFailed(f"the build failed: {message}")
            if time.monotonic() >= self.deadline:
                raise BuildFailed(
                    f"the build took longer than {self.build.timeout:g} s (WORKSPACE_TEMPLATE_BUILD_TIMEOUT)"
                )
            if status != 0:
                shown = " ".join(argv) if argv[: len(self.shell)] != self.shell else argv[-1]
                message = f"The command '{shown}' returned a non-zero code: {status}"
                self.on_log(message + "\n")
                raise BuildFailed(f"the build failed: {message}")
            self._commit(container)
        finally:
            with contextlib.suppress(docker.errors.DockerException, requests.exceptions.RequestException):
                container.remove(force=True)

    def _copy(self, words: list[str]) -> None:
        if len(words) < 2:
            raise BuildFailed("the build failed: COPY needs a source and a destination")
        *sources, destination = words
        destination = posixpath.join(self.workdir, destination)
        into_directory = destination.endswith("/") or len(sources) > 1
        files: dict[str, bytes | None] = {}
        for source in sources:
            pattern = posixpath.normpath(source.lstrip("/")) if source not in (".", "./") else "."
            matched = [
                name
                for name in self.context
                if pattern == "." or fnmatch.fnmatch(name, pattern) or name.startswith(pattern + "/")
            ]
            if not matched:
                raise BuildFailed(
                    f"the build failed: COPY failed: no source files were specified ({source} is not in the context)"
                )
            for name in matched:
                if pattern == ".":
                    target = posixpath.join(destination, name)
                elif name.startswith(pattern + "/"):
                    target = posixpath.join(destination, name[len(pattern) + 1 :])
                elif into_directory or len(matched) > 1:
                    target = posixpath.join(destination, posixpath.basename(name))
                else:
                    target = destination
                files[target] = self.context[name]
        self._put(files)

    def _put(self, files: dict[str, bytes | None]) -> None:
        """Files (None: a directory) into a created container of the current image, committed."""
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            for path, data in files.items():
                info = tarfile.TarInfo(path.lstrip("/").rstrip("/") or ".")
                if data is None:
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    tar.addfile(info)
                else:
                    info.size, info.mode = len(data), 0o644
                    tar.addfile(info, io.BytesIO(data))
        container = self._created()
        try:
            with engine_errors("copying into a build step"):
                container.put_archive("/", archive.getvalue())
            self._commit(container)
        finally:
            with contextlib.suppress(docker.errors.DockerException, requests.exceptions.RequestException):
                container.remove(force=True)

    def _created(self) -> Any:
        with engine_errors("creating a build step"):
            return self.client.containers.create(self.image, ["true"], entrypoint=[], **self._container_options())

    def _config(self) -> list[str]:
        changes = [f"ENV {key}={json.dumps(value)}" for key, value in self.env.items()]
        changes.append(f"WORKDIR {self.workdir}")
        if self.user:
            changes.append(f"USER {self.user}")
        return changes + self.changes

    def _commit(self, container: Any, changes: list[str] | None = None, final: bool = False) -> str:
        repository, _, tag = self.build.ref.rpartition(":")
        with engine_errors("committing a build step"):
            try:
                if final:
                    image = container.commit(repository=repository, tag=tag, changes=changes)
                else:
                    image = container.commit(changes=changes)
            finally:
                if final:
                    with contextlib.suppress(docker.errors.DockerException, requests.exceptions.RequestException):
                        container.remove(force=True)
        self.image = str(image.id)
        self.made.append(self.image)
        if not final:
            self.on_log(f" ---> {self.image[7:19]}\n")
        return self.image

    def _forget(self) -> None:
        """A failed build's images: the last one removed takes its untagged parents with it."""
        if self.made:
            with contextlib.suppress(docker.errors.DockerException, requests.exceptions.RequestException):
                self.client.images.remove(self.made[-1], noprune=False)


class _LayerWatch(threading.Thread):
    """Kills a running step once its layer holds more than `room` bytes (measured every DISK_CHECK s)."""

    def __init__(self, client: docker.DockerClient, container: Any, room: int) -> None:
        super().__init__(name="agentbox-build-disk", daemon=True)
        self.api: Any = client.api
        self.container = container
        self.room = room
        self.over = False
        self._done = threading.Event()

    def measure(self) -> int:
        """The bytes the step's layer holds (the engine walks it: SizeRw)."""
        with contextlib.suppress(docker.errors.DockerException, requests.exceptions.RequestException):
            url = self.api._url("/containers/{0}/json", self.container.id)
            return int(self.api._result(self.api._get(url, params={"size": True}), True).get("SizeRw") or 0)
        return 0

    def run(self) -> None:
        while not self._done.wait(DISK_CHECK):
            if self.measure() > self.room:
                self.over = True
                _kill(self.container)
                return

    def stop(self) -> None:
        self._done.set()
        if self.is_alive():
            self.join()


def _kill(container: Any) -> None:
    with contextlib.suppress(docker.errors.DockerException, requests.exceptions.RequestException):
        container.kill()


def _context_files(context: bytes | None) -> dict[str, bytes]:
    """The context's regular files by their path (no leading ./)."""
    if not context:
        return {}
    files = {}
    with tarfile.open(fileobj=io.BytesIO(context), mode="r:*") as archive:
        for member in archive:
            if member.isfile():
                extracted = archive.extractfile(member)
                if extracted is not None:
                    files[posixpath.normpath(member.name).lstrip("/")] = extracted.read()
    return files


def build_in_gvisor(client: docker.DockerClient, build: ImageBuild, on_log: Callable[[str], None]) -> str:
    return StepBuilder(client, build, on_log).run()
