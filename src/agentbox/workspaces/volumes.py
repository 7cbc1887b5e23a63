"""Named volumes: an owner's persistent disks, made with a size, mounted into workspaces at their create, kept
when those go, deleted once no workspace (that is not deleted) mounts them.

The rows are here (the store's `volumes` table), the storage is a provider's (`Provider.create_volume`): the
one provider scope on this server that keeps volumes (the Docker providers, gvisor and docker, share theirs).
Which workspaces use a volume is read from their rows (`Workspace.volumes`), under the admission lock: a
delete and a create that mounts the volume never pass each other.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from agentbox.config import Settings
from agentbox.db.models import Volume, Workspace, new_volume_id
from agentbox.db.store import LIVE, Store
from agentbox.errors import BadRequest, Conflict, NotFound, Unprocessable
from agentbox.providers.base import Provider, distinct
from agentbox.wire.domain import VolumeRequest
from agentbox.wire.sizes import format_size

log = logging.getLogger("agentbox.workspaces.volumes")


@dataclass(frozen=True)
class VolumeState:
    """A volume as answered: its row, the workspaces that mount it, the bytes written on it (None: unknown)."""

    volume: Volume
    used_by: list[str]
    used: int | None


class Volumes:
    def __init__(self, settings: Settings, store: Store, providers: Mapping[str, Provider]) -> None:
        self.settings = settings
        self.store = store
        self.providers = dict(providers)

    def keeper(self) -> Provider:
        """The provider whose storage holds the volumes (the default provider's scope first). BadRequest when
        no provider here keeps volumes."""
        ordered = sorted(self.providers.values(), key=lambda p: p.name != self.settings.default_provider)
        for provider in distinct(ordered):
            if provider.capabilities().volumes:
                return provider
        offered = ", ".join(sorted(self.providers)) or "none"
        raise BadRequest(
            f"no provider on this server keeps volumes (offered: {offered}): volumes need the gvisor or docker "
            "provider (WORKSPACE_PROVIDERS)"
        )

    # The API's operations

    def create(self, owner: str, name: str, size: int) -> VolumeState:
        """A new volume of `size` bytes, its storage made (and its size enforced) before it is answered."""
        if size > self.settings.max_volume_size:
            raise Unprocessable(
                f"size: {format_size(size)} is more than this server allows for a volume "
                f"({format_size(self.settings.max_volume_size)}, WORKSPACE_MAX_VOLUME_SIZE)"
            )
        keeper = self.keeper()
        self._check_room(owner, name)  # before the storage is made: a refusal costs nothing
        volume_id = new_volume_id()
        keeper.create_volume(volume_id, size)
        try:
            with self.store.admission():
                self._check_room(owner, name)
                with self.store.session() as session:
                    session.add(Volume(id=volume_id, owner=owner, name=name, size=size))
        except BaseException as exc:
            keeper.destroy_volume(volume_id)
            if isinstance(exc, IntegrityError):  # another replica's create of the same name, at once
                raise self._taken(name) from None
            raise
        log.info("volume %s (%s, %s) of %s made", volume_id, name, format_size(size), owner)
        return self.get(owner, volume_id)

    def list(self, owner: str) -> list[VolumeState]:
        with self.store.session() as session:
            volumes = list(session.scalars(select(Volume).where(Volume.owner == owner).order_by(Volume.name)))
        users = self._users(owner)
        keeper = self._keeper_or_none()
        return [
            VolumeState(v, users.get(v.id, []), keeper.volume_used(v.id) if keeper is not None else None)
            for v in volumes
        ]

    def get(self, owner: str, ref: str) -> VolumeState:
        """The owner's volume named `ref`, or with the id `ref`. NotFound for any other (another owner's too)."""
        volume = self._find(owner, ref)
        if volume is None:
            raise NotFound(f"no volume {ref!r} of yours: list yours with GET /api/v1/volumes")
        keeper = self._keeper_or_none()
        used = keeper.volume_used(volume.id) if keeper is not None else None
        return VolumeState(volume, self._users(owner).get(volume.id, []), used)

    def delete(self, owner: str, ref: str) -> None:
        """Delete the volume and what it holds. Conflict (409) naming the workspaces that mount it, while any does."""
        volume = self.get(owner, ref).volume
        with self.store.admission():  # no create that mounts it passes in between
            users = self._users(owner).get(volume.id, [])
            if users:
                raise Conflict(
                    f"volume {volume.name!r} is in use by workspace{'s' if len(users) > 1 else ''} "
                    f"{', '.join(users)}: delete {'them' if len(users) > 1 else 'it'} first"
                )
            # The storage first: should its removal fail, the volume is still there to be deleted again.
            self.keeper().destroy_volume(volume.id)
            with self.store.session() as session:
                row = session.get(Volume, volume.id)
                if row is not None:
                    session.delete(row)
        log.info("volume %s (%s) of %s deleted", volume.id, volume.name, owner)

    # For a workspace's create (the manager's)

    def resolve(self, owner: str, requests: Sequence[VolumeRequest]) -> builtins.list[dict[str, Any]]:
        """The rows' `volumes` for mounting these of `owner`'s volumes; Unprocessable (422) naming one that is
        not the owner's."""
        mounts = []
        for index, request in enumerate(requests):
            volume = self._find(owner, request.name)
            if volume is None:
                raise Unprocessable(
                    f"volumes[{index}].name: no volume {request.name!r} of yours: create it first with POST "
                    "/api/v1/volumes (`agentbox volumes create NAME --size 1G`)"
                )
            mounts.append(
                {"volume": volume.id, "name": volume.name, "path": request.path, "read_only": request.read_only}
            )
        if len({m["volume"] for m in mounts}) != len(mounts):
            raise Unprocessable("volumes: a volume is named twice: mount each volume once per workspace")
        return mounts

    def check_present(self, owner: str, mounts: Sequence[Mapping[str, Any]]) -> None:
        """Under the admission lock: every volume of `mounts` is still there (a delete may have passed since
        `resolve`). Unprocessable naming one that is gone."""
        if not mounts:
            return
        wanted = [m["volume"] for m in mounts]
        with self.store.session() as session:
            found = set(session.scalars(select(Volume.id).where(Volume.owner == owner, Volume.id.in_(wanted))))
        for mount in mounts:
            if mount["volume"] not in found:
                raise Unprocessable(f"volumes: volume {mount.get('name') or mount['volume']!r} was deleted meanwhile")

    # Helpers

    def _keeper_or_none(self) -> Provider | None:
        try:
            return self.keeper()
        except BadRequest:
            return None

    def _find(self, owner: str, ref: str) -> Volume | None:
        with self.store.session() as session:
            by_id = session.scalar(select(Volume).where(Volume.owner == owner, Volume.id == ref))
            return by_id or session.scalar(select(Volume).where(Volume.owner == owner, Volume.name == ref))

    def _check_room(self, owner: str, name: str) -> None:
        with self.store.session() as session:
            count = session.scalar(select(func.count()).select_from(Volume).where(Volume.owner == owner)) or 0
            taken = session.scalar(select(Volume.id).where(Volume.owner == owner, Volume.name == name))
        if taken is not None:
            raise self._taken(name)
        if count >= self.settings.max_volumes:
            raise Conflict(
                f"you hold {count} volumes, as many as this server allows (WORKSPACE_MAX_VOLUMES): delete one first"
            )

    @staticmethod
    def _taken(name: str) -> Conflict:
        return Conflict(f"you have a volume named {name!r} already: choose another name, or delete that one first")

    def _users(self, owner: str) -> dict[str, builtins.list[str]]:
        """volume id -> the owner's workspaces (not deleted) that mount it."""
        query = select(Workspace.id, Workspace.volumes).where(
            Workspace.owner == owner, Workspace.status.in_(list(LIVE)), Workspace.volumes.is_not(None)
        )
        users: dict[str, builtins.list[str]] = {}
        with self.store.session() as session:
            for workspace_id, mounts in session.execute(query.order_by(Workspace.created_at)):
                for mount in mounts or ():
                    users.setdefault(mount["volume"], []).append(workspace_id)
        return users
