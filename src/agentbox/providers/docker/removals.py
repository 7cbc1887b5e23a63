"""Removals the engine did not answer in time, finished in the background.

An overloaded engine may not answer a removal within the client's timeout while it goes on with it,
late. The workspace's disk must not go before its container (the engine may still be using it), nor
stay mounted until reconciliation comes by, or past the server's end: so the removal is asked again
on a thread of its own, and the rest released once the container is gone.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from agentbox.errors import AgentboxError, ProviderUnavailable

log = logging.getLogger("agentbox.providers.docker.removals")

# A removal the engine did not answer in time goes on in the background this long (the engine usually
# finishes what it was asked, late), then reconciliation is left to finish it; and its attempts' pace.
REMOVAL_IN_BACKGROUND = 600.0
REMOVAL_RETRY_SECONDS = 2.0


class BackgroundRemovals:
    """The workspaces whose removal goes on in the background, by id, one thread each.

    `remove(workspace_id)` removes the workspace's containers and raises ProviderUnavailable while the
    engine does not answer in time; `release(workspace_id)` gives up what the workspace holds besides
    them (its disk, control directory, key and firewall rules).
    """

    def __init__(self, remove: Callable[[str], None], release: Callable[[str], None]) -> None:
        self._remove = remove
        self._release = release
        self._under_way: set[str] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()

    def under_way(self, workspace_id: str) -> bool:
        """Whether the workspace's removal goes on in the background (which finishes it, or leaves it to
        reconciliation)."""
        with self._lock:
            return workspace_id in self._under_way

    def begin(self, workspace_id: str) -> None:
        """Go on removing the workspace in the background; once closed, release the rest at once instead
        (see close). Raises what `release` raises in that case."""
        with self._lock:  # close() sets _closed under it: a removal is either in the set or sees it
            closed = self._closed.is_set()
            if not closed:
                if workspace_id in self._under_way:
                    return
                self._under_way.add(workspace_id)
        if closed:
            self._release(workspace_id)  # no background past close: the disk goes now (see close)
            return
        # A daemon thread: one blocked in a call the engine does not answer must not hold up the process's exit.
        threading.Thread(
            target=self._finish, args=(workspace_id,), name=f"agentbox-remove-{workspace_id}", daemon=True
        ).start()

    def _finish(self, workspace_id: str) -> None:
        """Ask the engine again until the container is gone, then release the rest; give up (to reconciliation)
        after REMOVAL_IN_BACKGROUND or at close."""
        give_up = time.monotonic() + REMOVAL_IN_BACKGROUND
        try:
            while not self._closed.is_set():
                try:
                    self._remove(workspace_id)
                except ProviderUnavailable as exc:
                    if time.monotonic() >= give_up:
                        log.warning(
                            "workspace %s: the engine did not remove its container in %g s (%s); the next "
                            "reconciliation removes what is left",
                            workspace_id,
                            REMOVAL_IN_BACKGROUND,
                            exc.detail,
                        )
                        return
                    self._closed.wait(REMOVAL_RETRY_SECONDS)
                    continue
                except AgentboxError as exc:
                    log.warning(
                        "workspace %s: removing it in the background failed (%s); the next reconciliation retries",
                        workspace_id,
                        exc.detail,
                    )
                    return
                self._release(workspace_id)
                log.info("workspace %s: its removal, late, is finished (container, disk)", workspace_id)
                return
        finally:
            with self._lock:
                self._under_way.discard(workspace_id)

    def close(self) -> None:
        """Stop the removals under way, releasing their workspaces' disks now.

        A disk still held by a container that the engine has not removed yet is unmounted lazily: it goes
        from the host's mounts at once, and for good with the container, which the next start-up's
        reconciliation removes if the engine has not by then.
        """
        with self._lock:
            self._closed.set()
            pending = sorted(self._under_way)
        for workspace_id in pending:
            log.warning(
                "workspace %s: releasing its disk at shutdown, its container's removal unfinished", workspace_id
            )
            try:
                self._release(workspace_id)
            except AgentboxError as exc:
                log.warning("workspace %s: releasing its disk failed: %s", workspace_id, exc.detail)
