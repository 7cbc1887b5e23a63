"""Template images built by the engine's own builder from a Dockerfile and a context archive (issue 30), with
WORKSPACE_TEMPLATE_BUILDER=engine or where the engine has no `runsc-build` runtime (else gvisor_build.py builds).

The Docker 20.10 engine here builds with its classic builder: each `RUN` step is a container of the daemon's
default runtime (runc), not gVisor; the engine offers no per-build runtime. What this module makes of it: every
step runs with no network at all (`network_mode="none"`: no package downloads, no reaching the host or other
workspaces), under a memory and CPU limit, with intermediate containers always removed, and never pulls (`FROM`
names an image already on the engine). docs/architecture.md ("Templates") says what is and is not isolated.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import tarfile
from collections.abc import Callable

import docker
import docker.errors
import requests

from agentbox.errors import BadRequest, ProviderError, Unprocessable
from agentbox.providers.base import ImageBuild
from agentbox.providers.docker.engine import engine_errors

log = logging.getLogger("agentbox.providers.docker.images")

#: The Dockerfile's name in the context the engine gets: not one a user's context would hold.
DOCKERFILE_IN_CONTEXT = ".agentbox.Dockerfile"
#: The name of each gVisor build step's container begins with this and the template's image tag (its id).
STEP_PREFIX = "agentbox-build-"
# The classic builder names each step's image on a line of its own: ` ---> 0123456789ab`.
_STEP_IMAGE = re.compile(r"^ ---> ([0-9a-f]{12})\s*$", re.MULTILINE)


class BuildFailed(ProviderError):
    """The build ran and failed (a step's error): the log says why."""

    status_code = 422


def context_archive(dockerfile: str, context: bytes | None) -> bytes:
    """The tar the engine gets: the caller's context (any entries, gzip'd or not) with the Dockerfile added
    under a name of its own. Unprocessable (422) for a context that is not a tar archive."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as target:
        if context:
            try:
                with tarfile.open(fileobj=io.BytesIO(context), mode="r:*") as source:
                    for member in source:
                        if member.name.lstrip("./") == DOCKERFILE_IN_CONTEXT:
                            continue
                        data = source.extractfile(member) if member.isfile() else None
                        target.addfile(member, data)
            except (tarfile.TarError, EOFError, OSError) as exc:
                raise Unprocessable(f"context: not a tar archive (plain or gzip'd): {exc}") from None
        body = dockerfile.encode()
        info = tarfile.TarInfo(DOCKERFILE_IN_CONTEXT)
        info.size, info.mode = len(body), 0o644
        target.addfile(info, io.BytesIO(body))
    return out.getvalue()


def build_image(client: docker.DockerClient, build: ImageBuild, on_log: Callable[[str], None]) -> str:
    """Build and tag the image; its id. Every line of the engine's log goes to `on_log` as it comes.
    BuildFailed (422) with the engine's message when a step fails; what the failed build made is removed."""
    archive = context_archive(build.dockerfile, build.context)
    seen = ""
    try:
        with engine_errors("building the template's image"):
            stream = client.api.build(
                fileobj=io.BytesIO(archive),
                custom_context=True,
                dockerfile=DOCKERFILE_IN_CONTEXT,
                tag=build.ref,
                rm=True,
                forcerm=True,  # a failed step's container too
                pull=False,
                network_mode="none",
                container_limits={
                    "memory": build.memory,
                    "memswap": build.memory,
                    "cpushares": max(2, int(build.cpu * 1024)),
                },
                labels=build.labels,
                decode=True,
                timeout=build.timeout,
            )
            for chunk in stream:
                if "error" in chunk:
                    message = str(chunk.get("error") or "").strip()
                    on_log(message + "\n")
                    raise BuildFailed(f"the build failed: {message}")
                text = chunk.get("stream") or chunk.get("status")
                if text:
                    seen += text
                    on_log(text if text.endswith("\n") else text + "\n")
        with engine_errors("looking up the built image"):
            return str(client.images.get(build.ref).id)
    except requests.exceptions.ReadTimeout:
        _remove_steps(client, seen)
        raise BuildFailed(
            f"the build took longer than {build.timeout:g} s (WORKSPACE_TEMPLATE_BUILD_TIMEOUT)"
        ) from None
    except BaseException:
        _remove_steps(client, seen)
        raise


def _remove_steps(client: docker.DockerClient, log_text: str) -> None:
    """Remove the images of a failed build's completed steps (the last one, and with it its untagged parents):
    never a tagged image (the `FROM`), nor one another image still builds on (the engine refuses those)."""
    steps = _STEP_IMAGE.findall(log_text)
    if not steps:
        return
    with contextlib.suppress(docker.errors.DockerException, requests.exceptions.RequestException):
        image = client.images.get(steps[-1])
        if not image.tags:
            client.images.remove(image.id, noprune=False)


def remove_image(client: docker.DockerClient, ref: str) -> None:
    """Untag `ref`, and remove the image with its untagged layers when no other name holds it, and any step
    container its build left (a server that stopped during it). One already gone is not an error."""
    with engine_errors("removing the template's image"):
        steps = client.api.containers(all=True, filters={"name": f"{STEP_PREFIX}{ref.rpartition(':')[2]}-"})
        for step in steps:
            with contextlib.suppress(docker.errors.NotFound):
                client.api.remove_container(step["Id"], force=True)
        try:
            client.images.remove(ref, noprune=False)
        except docker.errors.ImageNotFound:
            return


def check_base(client: docker.DockerClient, bases: list[str]) -> None:
    """Every `FROM` image is on the engine (the build never pulls). BadRequest naming one that is not."""
    for base in bases:
        if base.lower() == "scratch":
            continue
        with engine_errors("looking up the base image"):
            try:
                client.images.get(base)
            except docker.errors.ImageNotFound:
                raise BadRequest(
                    f"FROM {base}: no such image on this server's engine, and builds never pull: start FROM an "
                    "image the server has (the default workspace image is one)"
                ) from None
