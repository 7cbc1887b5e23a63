"""A warm pool per template (issue 30): workspaces of a template's image booted ahead, its start command started
and its ready command passed, waiting (suspended where the provider can) for a create that names the template.

Each is a `WarmPool` whose spec has the template's image and whose size is the template's `pool_size` (at most
WORKSPACE_TEMPLATE_POOL_SIZE); its rows are pooled rows like the default pool's, told apart by their image (a
template's, which names its id). The leader fills them in its rounds; a template's delete discards its pool; the
last replica to stop drains them all.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from sqlalchemy import select

from agentbox.db.models import Template, Workspace
from agentbox.errors import ProviderError
from agentbox.providers.base import Provider
from agentbox.sandbox.process_table import ProcessRequest
from agentbox.sandbox.runtime import ExecRequest
from agentbox.wire.domain import NewWorkspace
from agentbox.workspaces.pool import WarmPool, discard_pooled
from agentbox.workspaces.templates import READY, START_TAG, is_template_image

if TYPE_CHECKING:
    from agentbox.workspaces.manager import WorkspaceManager

log = logging.getLogger("agentbox.workspaces.template_pools")


class TemplatePool(WarmPool):
    """The pool of one template: its image, the default sizes and network, its start and ready commands run in
    each before it counts as ready."""

    def __init__(self, manager: WorkspaceManager, provider: Provider, template: Template) -> None:
        super().__init__(manager.settings, manager.store, provider, manager.metrics)
        self.template = template

    @property
    def size(self) -> int:
        return min(self.template.pool_size, self.settings.template_pool_size)

    def serves(self, provider_name: str, request: NewWorkspace, network: dict[str, object]) -> bool:
        # The request's image is the template's already (Templates.applied).
        return super().serves(provider_name, replace_image(request), network)

    def _spec(self) -> dict[str, object]:
        return super()._spec() | {"image": self.template.image}

    def pooled(self) -> list[Workspace]:
        return [w for w in self.store.find(owner="", statuses=("pooled",)) if w.image == self.template.image]

    def _first_commands(self, ref: str) -> None:
        super()._first_commands(ref)
        template = self.template
        runtime = self.provider.runtime(ref)
        if template.start_cmd:
            runtime.processes().start(ProcessRequest(argv=["sh", "-c", template.start_cmd], tag=START_TAG))
        if template.ready_cmd:
            deadline = time.monotonic() + template.ready_timeout
            while True:
                result = runtime.exec(ExecRequest(argv=["sh", "-c", template.ready_cmd], timeout=30))
                if result.exit_code == 0:
                    return
                if time.monotonic() >= deadline:
                    raise ProviderError(
                        f"template {template.name}:{template.tag}: its ready command did not pass within "
                        f"{template.ready_timeout:g} s (exit code {result.exit_code}: {result.stderr.strip()[-300:]})"
                    )
                time.sleep(0.5)


def replace_image(request: NewWorkspace) -> NewWorkspace:
    """`request` as the default pool's `serves` reads it: the image is the pool's own (checked by the claim)."""
    return replace(request, image=None)


class TemplatePools:
    """Every ready template's pool (those whose pool_size is above 0), made from their rows at each look."""

    def __init__(self, manager: WorkspaceManager) -> None:
        self.manager = manager
        self.store = manager.store

    def pool(self, template: Template) -> TemplatePool | None:
        """The pool of `template`, None when it has none (or no provider here builds templates)."""
        if template.pool_size <= 0 or template.status != READY or self.manager.settings.template_pool_size <= 0:
            return None
        provider = self.manager.providers.get(self.manager.settings.default_provider)
        if provider is None or not provider.capabilities().templates:
            return None  # a pool is of the default provider's workspaces, as the default pool is
        return TemplatePool(self.manager, provider, template)

    def _templates(self) -> list[Template]:
        with self.store.session() as session:
            query = select(Template).where(Template.status == READY, Template.pool_size > 0)
            return list(session.scalars(query))

    def fill(self, keep_going: Callable[[], bool] = lambda: True) -> None:
        """The leader's round: fill each template's pool; discard pooled workspaces of templates gone or with
        no pool now."""
        pools = [pool for pool in map(self.pool, self._templates()) if pool is not None]
        wanted = {pool.template.image for pool in pools}
        for workspace in self.store.find(owner="", statuses=("pooled",)):
            if is_template_image(workspace.image) and workspace.image not in wanted:
                discard_pooled(self.store, self.manager.providers.get(workspace.provider), workspace)
        for pool in pools:
            pool.fill(keep_going)

    def fits(self, workspace: Workspace) -> bool:
        """Whether a pooled row belongs to a template's pool that is wanted (reconciliation keeps those)."""
        if not is_template_image(workspace.image):
            return False
        return any(pool.fits(workspace) for pool in map(self.pool, self._templates()) if pool is not None)

    def drain(self) -> None:
        """Remove every template's pooled workspace (the last replica's shutdown)."""
        for workspace in self.store.find(owner="", statuses=("pooled",)):
            if is_template_image(workspace.image):
                discard_pooled(self.store, self.manager.providers.get(workspace.provider), workspace)
