"""Three replicas behave as one service: `agentbox serve` processes on one PostgreSQL and one engine,
real gVisor workspaces. Admission stays exact whichever replica a create reaches, one leader does the
background work, and a leader SIGKILLed in the middle of a burst of creates loses nothing and leaves
nothing behind."""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker
import httpx
import pytest
import sqlalchemy

from agentbox.db.store import Store
from agentbox.workspaces.replicas import LEASE_SECONDS, REPLICA_TIMEOUT, Replica

from .conftest import KEYS, Replicas, Server, eventually

HEADERS = {"Authorization": f"Bearer {KEYS['alice']}"}
# Small workspaces, so that a dozen fit this machine at once; a quick round, so that the pool refills
# and reconciliation comes without long waits.
SETTINGS = {"WORKSPACE_DEFAULT_MEMORY": "256M", "WORKSPACE_REAP_INTERVAL": "2"}


@contextlib.contextmanager
def replicas_with(tmp_path: Path, postgres_url: str, **settings: str) -> Iterator[Replicas]:
    running = Replicas(tmp_path, postgres_url, env=SETTINGS | settings).start()
    try:
        yield running
    finally:
        # A test that failed half-way leaves workspaces: removed through a replica still running.
        for server in alive(running)[:1]:
            with api(server) as http, contextlib.suppress(httpx.HTTPError):
                for workspace in http.get("/workspaces").json()["workspaces"]:
                    http.delete(f"/workspaces/{workspace['id']}")
        running.stop()


def api(server: Server) -> httpx.Client:
    return httpx.Client(base_url=f"{server.url}/api/v1", headers=HEADERS, timeout=300)


def alive(replicas: Replicas) -> list[Server]:
    return [server for server in replicas if server.process is not None]


class Database:
    """What the replicas share, looked at directly."""

    def __init__(self, url: str) -> None:
        self.engine = sqlalchemy.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))

    def rows(self, *statuses: str) -> dict[str, dict[str, object]]:
        """Workspaces in `statuses`: id -> {status, replica, ref}."""
        query = "SELECT id, status, replica, provider_ref FROM workspaces WHERE status = ANY(:s)"
        with self.engine.connect() as connection:
            found = connection.execute(sqlalchemy.text(query), {"s": list(statuses)})
            return {row.id: {"status": row.status, "replica": row.replica, "ref": row.provider_ref} for row in found}

    def events(self, kind: str) -> list[str]:
        """The workspace of every event of `kind`, once per event."""
        with self.engine.connect() as connection:
            found = connection.execute(sqlalchemy.text("SELECT workspace_id FROM events WHERE kind = :k"), {"k": kind})
            return [row.workspace_id for row in found]


@pytest.fixture
def database(postgres_url: str) -> Iterator[Database]:
    opened = Database(postgres_url)
    yield opened
    opened.engine.dispose()


def pool_ready(server: Server) -> int:
    with api(server) as http:
        return int(http.get("/capacity").json()["warm_pool_ready"])


def test_creates_spread_over_three_replicas_keep_the_cap_exact(
    tmp_path: Path, postgres_url: str, database: Database, docker_client: docker.DockerClient
) -> None:
    with replicas_with(tmp_path, postgres_url, WORKSPACE_MAX_CONCURRENT="5", WORKSPACE_WARM_POOL_SIZE="2") as three:
        eventually(lambda: pool_ready(three[0]) == 2, timeout=120)
        clients = [api(server) for server in three]
        # Pool claims (a default create) and cold creates (runc) mixed, each replica getting its share.
        bodies = itertools.cycle([{}, {"provider": "docker"}, {"labels": {"burst": "1"}}])
        requests = [(clients[i % 3], next(bodies)) for i in range(18)]
        with ThreadPoolExecutor(max_workers=18) as pool:
            responses = list(pool.map(lambda r: r[0].post("/workspaces", json=r[1]), requests))
        codes = sorted(r.status_code for r in responses)
        assert codes.count(201) == 5 and codes.count(429) == 13, codes
        admitted = {r.json()["id"] for r in responses if r.status_code == 201}
        for client in clients:  # every replica sees the same five
            assert {w["id"] for w in client.get("/workspaces").json()["workspaces"]} == admitted
        with api(three[1]) as http:
            assert http.get("/capacity").json()["active"] == 5
        # No room is left, so the pool gives its workspaces up: five containers, the admitted ones.
        eventually(lambda: set(three[0].containers(docker_client)) == admitted, timeout=60)

        for i, workspace_id in enumerate(sorted(admitted)):
            assert clients[i % 3].delete(f"/workspaces/{workspace_id}").status_code == 204
        # The leader alone refills, to exactly the pool's size, whichever replica the deletes came through.
        eventually(lambda: pool_ready(three[2]) == 2, timeout=120)
        pooled = database.rows("pooled")
        assert len(pooled) == 2 and set(three[0].containers(docker_client)) == set(pooled)
        leaders = {server.health("alice").leader for server in three}
        assert len(leaders) == 1 and leaders <= {"r1", "r2", "r3"}
        for client in clients:
            client.close()
        # Stopping two leaves the pool to the third; the last one out removes it.
        three[0].stop()
        three[1].stop()
        assert set(three[2].containers(docker_client)) == set(pooled)
        three[2].stop()
        assert three[2].containers(docker_client) == {}
        assert three[2].disks() == set()


def test_a_leader_killed_during_a_burst_of_creates_loses_nothing_and_leaves_nothing(
    tmp_path: Path, postgres_url: str, database: Database, docker_client: docker.DockerClient
) -> None:
    settings = {"WORKSPACE_MAX_CONCURRENT": "16", "WORKSPACE_WARM_POOL_SIZE": "2"}
    with replicas_with(tmp_path, postgres_url, **settings) as three:
        eventually(lambda: pool_ready(three[0]) == 2, timeout=120)
        leader_id = three[0].health("alice").leader
        leader = next(server for server in three if server.env["WORKSPACE_REPLICA_ID"] == leader_id)
        survivors = [server for server in three if server is not leader]
        # Two that expire soon after the leader is gone: the next leader reaps them, once each.
        with api(survivors[0]) as http:
            expiring = [http.post("/workspaces", json={"ttl_days": 0.0003}).json()["id"] for _ in range(2)]  # 26 s

        clients = [api(server) for server in three]
        # Pool claims, cold gVisor creates (other memory than the pool's) and cold runc ones, a third of them
        # through the leader, which dies under them.
        bodies = [{}, {"memory": "300M"}, {"provider": "docker"}, {"memory": "300M"}]
        burst = [(clients[i % 3], bodies[i % 4]) for i in range(12)]
        go = threading.Barrier(len(burst) + 1)

        def create(client: httpx.Client, body: dict[str, str]) -> httpx.Response | str:
            go.wait()
            try:
                return client.post("/workspaces", json=body)
            except httpx.TransportError as exc:
                return type(exc).__name__  # the leader died with the request

        with ThreadPoolExecutor(max_workers=len(burst)) as pool:
            futures = [pool.submit(create, client, body) for client, body in burst]
            go.wait()
            # Killed while it is making at least one workspace (a `starting` row of its own).
            eventually(lambda: any(r["replica"] == leader_id for r in database.rows("starting").values()), 60, 0.02)
            leader.stop(kill=True)
            answers = [future.result() for future in futures]
        for client in clients:
            client.close()

        made = {a.json()["id"] for a in answers if isinstance(a, httpx.Response) and a.status_code == 201}
        refused = [a for a in answers if isinstance(a, httpx.Response) and a.status_code != 201]
        assert not refused, [(a.status_code, a.text) for a in refused]
        assert len(made) >= 8, answers  # the survivors answered every one of theirs

        # Another replica leads within the lease, and the dead one is no longer counted alive.
        def led_by_a_survivor() -> bool:
            seen = [server.health("alice") for server in survivors]
            leaders = {health.leader for health in seen}
            gone = all(leader_id not in health.replicas for health in seen)
            return len(leaders) == 1 and leaders <= {"r1", "r2", "r3"} - {leader_id} and gone

        eventually(led_by_a_survivor, timeout=LEASE_SECONDS + REPLICA_TIMEOUT + 15)
        # What the dead leader was making is given up: no `starting` row stays, every container is a live
        # workspace's (no orphan), every mounted disk too, and the pool is exactly its size again.
        eventually(lambda: not database.rows("starting"), timeout=60)

        def settled() -> bool:
            live = database.rows("running", "pooled")
            pooled = [w for w, r in live.items() if r["status"] == "pooled" and r["ref"]]
            return len(pooled) == 2 and set(survivors[0].containers(docker_client)) == set(live)

        eventually(settled, timeout=120)
        assert survivors[0].disks() == set(database.rows("running", "pooled"))

        # Every create that answered 201 is there, through either survivor, and runs a command.
        for i, workspace_id in enumerate(sorted(made)):
            with api(survivors[i % 2]) as http:
                assert http.get(f"/workspaces/{workspace_id}").json()["status"] == "running"
                ran = http.post(f"/workspaces/{workspace_id}/exec", json={"command": "echo alive"}).json()
                assert ran["stdout"] == "alive\n", ran

        # The new leader reaps what expires, each once.
        eventually(lambda: not set(expiring) & set(database.rows("running")), timeout=120)
        eventually(lambda: not set(expiring) & set(survivors[0].containers(docker_client)))  # row first, then sandbox
        assert sorted(database.events("expired")) == sorted(expiring)

        for i, workspace_id in enumerate(sorted(made)):
            with api(survivors[i % 2]) as http:
                assert http.delete(f"/workspaces/{workspace_id}").status_code == 204
    assert survivors[0].containers(docker_client) == {}, "the last replica out removes the pool"
    assert survivors[0].disks() == set()


def test_a_replica_restarted_after_a_crash_rejoins_and_its_id_is_its_own(
    tmp_path: Path, postgres_url: str, database: Database, docker_client: docker.DockerClient
) -> None:
    with replicas_with(tmp_path, postgres_url) as three:
        leader_id = three[0].health("alice").leader
        follower = next(server for server in three if server.env["WORKSPACE_REPLICA_ID"] != leader_id)
        follower_id = follower.env["WORKSPACE_REPLICA_ID"]
        # A second process under a live replica's id is refused: it would give up the first one's work.
        twin = Server(tmp_path, env=follower.env | {"WORKSPACE_REPLICA_ID": follower_id}, log_name="twin.log")
        with pytest.raises(RuntimeError, match=f"WORKSPACE_REPLICA_ID={follower_id} is in use by a running server"):
            twin.start()

        # The follower dies while it makes a workspace, and is started again at once under its id.
        with api(follower) as http, ThreadPoolExecutor(1) as pool:
            pending = pool.submit(http.post, "/workspaces", json={"memory": "300M"})
            eventually(lambda: any(r["replica"] == follower_id for r in database.rows("starting").values()), 60, 0.02)
            follower.stop(kill=True)
            with pytest.raises(httpx.TransportError):
                pending.result()
        follower.start()
        # What its previous run was making is given up (by itself at its start, or by the leader), and it
        # serves again as one of the three; the leader did not change.
        eventually(lambda: not database.rows("starting"), timeout=60)
        eventually(lambda: set(follower.containers(docker_client)) == set(database.rows("running", "pooled")))
        health = follower.health("alice")
        assert health.replica == follower_id and health.leader == leader_id
        stranger = follower.health()  # without a key: up, and nothing of the deployment's map
        assert stranger.status == "ok" and (stranger.replica, stranger.leader, stranger.replicas) == (None, None, [])
        eventually(lambda: sorted(follower.health("alice").replicas) == ["r1", "r2", "r3"])
        with api(follower) as http:
            made = http.post("/workspaces", json={"provider": "docker"}).json()["id"]
            assert http.post(f"/workspaces/{made}/exec", json={"command": "echo ok"}).json()["stdout"] == "ok\n"
            assert http.delete(f"/workspaces/{made}").status_code == 204


def test_of_replicas_bidding_at_once_for_a_free_lease_one_wins(postgres_url: str) -> None:
    # Eight processes' worth of bidders on one PostgreSQL, all at the moment the lease is free: the
    # database's guarded update (or first insert) lets exactly one through.
    store = Store(postgres_url.replace("postgresql://", "postgresql+psycopg://"))
    store.migrate()
    try:
        bidders = [Replica(store, f"b{n}") for n in range(8)]
        for bidder in bidders:
            bidder.register()

        def bid(bidder: Replica, go: threading.Barrier) -> bool:
            go.wait()
            bidder.tick()
            return bidder.leads()

        for attempt in range(2):  # the first time the lease row does not exist yet; then it was given up
            go = threading.Barrier(len(bidders))
            with ThreadPoolExecutor(len(bidders)) as pool:
                won = list(pool.map(bid, bidders, [go] * len(bidders)))
            assert won.count(True) == 1, (attempt, won)
            winner = bidders[won.index(True)]
            assert {bidder.leader for bidder in bidders} == {winner.id}
            winner.leave()  # gives the lease up: free for the next round
            bidders.remove(winner)
    finally:
        store.close()


def test_a_change_on_one_replica_wakes_the_others_through_the_database(postgres_url: str) -> None:
    # A claim or a delete on a replica that does not lead must wake the leader's pool refill at once
    # (NOTIFY), not at its next round; and a lease given up at shutdown is taken without waiting.
    store = Store(postgres_url.replace("postgresql://", "postgresql+psycopg://"))
    store.migrate()
    one, two = Replica(store, "n1"), Replica(store, "n2")
    woken = threading.Event()
    try:
        one.join()
        two.join()
        assert one.leads() and not two.leads()
        one.on_change = woken.set
        eventually(lambda: (two.nudge(), woken.wait(0.5))[1], timeout=20)  # once its LISTEN is in place
        woken.clear()
        two.on_change = woken.set
        assert one.leave() is False  # two is alive
        eventually(two.leads, timeout=5)  # not after the lease's 15 s: at its nudge, or its next beat at worst
        assert woken.is_set()  # told that it leads now
    finally:
        one.leave()
        two.leave()
        store.close()
