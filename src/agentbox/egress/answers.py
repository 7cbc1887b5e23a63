"""What the agentbox resolver told each workspace: which addresses, for which name, until when.

Pure and typed: no I/O, the clock is passed in. The resolver (resolver.py) calls `remember` for every
address it answers; the proxy asks `gave(client, name, ip, now)` for every connection a name rule
allowed, so that an allowed SNI or Host reaches only an address that name really had for this client.

Memory is bounded twice: at most `per_client` (name, address) pairs per client and `total` in all.
Past a bound the pair answered least recently goes first: a client that floods the resolver with
names forgets its own oldest answers (its connections to them are then refused, as after their
TTL), and past `total` the client holding the most pairs loses its oldest, so one client's flood
never evicts a quiet client's answers while it holds more than they do.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

#: Stale answers are dropped in sweeps of at most this many pairs, so one call stays short.
_SWEEP_BATCH = 4096


@dataclass(frozen=True)
class Answer:
    """One address given for one name, valid until `expires` (a clock reading, seconds)."""

    name: str
    ip: str
    expires: float


class AnswerMemory:
    """(client, name, address) → expiry, bounded per client and in all (see the module's docstring)."""

    def __init__(self, *, per_client: int = 4096, total: int = 65536, grace: float = 30.0) -> None:
        """Raises ValueError for a bound below 1 or a negative grace."""
        if per_client < 1 or total < 1 or grace < 0:
            raise ValueError("per_client and total must be at least 1, grace at least 0")
        self.per_client = per_client
        self.total = total
        #: How long past its TTL an answer still lets a connection through: clients that cache a
        #: lookup a little longer than its TTL (the JVM keeps one 30 s whatever the TTL) still connect.
        self.grace = grace
        # Per client, in the order answered (least recent first): popping from the front is LRU.
        self._clients: dict[str, OrderedDict[tuple[str, str], float]] = {}
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def count(self, client: str) -> int:
        """How many (name, address) pairs `client` holds (expired ones included until swept)."""
        return len(self._clients.get(client, ()))

    def remember(self, client: str, name: str, ip: str, ttl: float, now: float) -> None:
        """`ip` was answered to `client` for `name` (normalized) with `ttl` seconds, at `now`."""
        pairs = self._clients.setdefault(client, OrderedDict())
        key = (name, ip)
        expires = now + max(ttl, 0.0)
        previous = pairs.pop(key, None)
        if previous is None:
            self._size += 1
        # An answer never shortens what an earlier one granted: the client may still hold the earlier.
        pairs[key] = expires if previous is None else max(previous, expires)
        if len(pairs) > self.per_client:
            pairs.popitem(last=False)
            self._size -= 1
        while self._size > self.total:
            self._evict_from_largest()

    def gave(self, client: str, name: str, ip: str, now: float) -> bool:
        """Whether `client` was given `ip` for `name` (normalized) and its TTL plus the grace has not run out."""
        pairs = self._clients.get(client)
        if pairs is None:
            return False
        expires = pairs.get((name, ip))
        return expires is not None and now <= expires + self.grace

    def answers(self, client: str, now: float) -> list[Answer]:
        """`client`'s answers still valid at `now` (grace included), least recently answered first."""
        pairs = self._clients.get(client, OrderedDict())
        return [Answer(n, ip, e) for (n, ip), e in pairs.items() if now <= e + self.grace]

    def forget(self, client: str) -> None:
        """Drop everything `client` was told (its workspace is gone, or its address reused)."""
        self._size -= len(self._clients.pop(client, ()))

    def sweep(self, now: float) -> int:
        """Drop answers past their TTL and grace (at most a batch); how many were dropped."""
        dropped = 0
        for client in list(self._clients):
            pairs = self._clients[client]
            stale = [key for key, expires in pairs.items() if now > expires + self.grace]
            for key in stale[: _SWEEP_BATCH - dropped]:
                del pairs[key]
                dropped += 1
            if not pairs:
                del self._clients[client]
            if dropped >= _SWEEP_BATCH:
                break
        self._size -= dropped
        return dropped

    def _evict_from_largest(self) -> None:
        client = max(self._clients, key=lambda c: len(self._clients[c]))
        pairs = self._clients[client]
        pairs.popitem(last=False)
        self._size -= 1
        if not pairs:
            del self._clients[client]
