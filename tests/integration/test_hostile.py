"""The hostile-workload suite: the worst an agent's code can try, under gVisor and under runc.

Every attack runs in a fresh workspace of a fenced server (own network, firewall), once per
runtime. After each, the service must answer and a bystander workspace of another owner
must still work with its files. Each attack records what happened; the table is printed at
the end of the run (and each outcome is in its test's output on failure).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker
import pytest

from agentbox.client import Client

from .conftest import (
    HOSTILE_REPORT,
    PRIVATE,
    REJECTED,
    Server,
    address_of,
    container_id,
    host_addresses,
    probe,
    reads_back,
)

CGROUPS = Path("/sys/fs/cgroup")
RUNTIMES = {"gvisor": "runsc", "docker": "runc"}
MARKER = "bystander-secret-7f3a9c"  # in the bystander's files, and nowhere an attacker can read


@dataclass
class Attack:
    """One attack: the attacker's client and provider, its workspaces, and what it found."""

    client: Client
    provider: str
    made: list[str] = field(default_factory=list)
    outcome: list[str] = field(default_factory=list)

    def workspace(self, **options: object) -> str:
        created = self.client.create(provider=self.provider, **options)
        assert created.runtime == RUNTIMES[self.provider]
        self.made.append(created.id)
        return created.id

    def saw(self, what: str) -> None:
        self.outcome.append(what)
        print(what)


@pytest.fixture(scope="module")
def report(request: pytest.FixtureRequest) -> list[tuple[str, str, str]]:
    """Rows of (attack, provider, outcome), printed at the end of the run (conftest.py)."""
    return request.config.stash.setdefault(HOSTILE_REPORT, [])


@pytest.fixture(scope="module")
def bystander(fenced: Server) -> Iterator[tuple[Client, str]]:
    """Bob's workspace: it holds a secret and serves HTTP on 8080, and must never notice the attacks."""
    with fenced.client("bob") as bob:
        workspace_id = bob.create().id
        bob.write_file(workspace_id, "/workspace/secret.txt", MARKER.encode())
        bob.exec(workspace_id, "python3 -m http.server 8080 >/dev/null 2>&1 &")
        yield bob, workspace_id
        bob.delete(workspace_id)


@pytest.fixture(params=sorted(RUNTIMES))
def attack(
    request: pytest.FixtureRequest,
    fenced: Server,
    bystander: tuple[Client, str],
    report: list[tuple[str, str, str]],
) -> Iterator[Attack]:
    with fenced.client("alice") as alice:
        attempt = Attack(alice, request.param)
        try:
            yield attempt
        finally:
            for workspace_id in attempt.made:
                alice.delete(workspace_id)
    name = request.node.originalname.removeprefix("test_")
    report.append((name, request.param, "; ".join(attempt.outcome) or "(no outcome: the test failed)"))
    # The service and the neighbour carry on.
    assert fenced.health().status == "ok"
    bob, victim = bystander
    assert reads_back(bob, victim, "/workspace/secret.txt", MARKER)


def test_fork_bomb(attack: Attack, docker_client: docker.DockerClient) -> None:
    workspace_id = attack.workspace()
    attack.client.write_file(workspace_id, "/workspace/notes.txt", b"kept")
    pids = CGROUPS / "pids" / "docker" / container_id(docker_client, workspace_id)
    host_limit = int((pids / "pids.max").read_text())

    result = attack.client.exec(workspace_id, "bomb() { bomb | bomb & }; bomb; sleep 30", timeout=5)
    # The bomb ran into the workspace's own task limit (under gVisor: RLIMIT_NPROC inside the
    # sandbox; under runc: the pids cgroup)...
    assert "Cannot fork" in result.stderr or "Resource temporarily unavailable" in result.stderr, result
    # ...and the host's pids cgroup bounds what the sandbox may spend on it.
    peak = int((pids / "pids.peak").read_text())
    assert peak <= host_limit < 20000
    # The timeout killed the bomb's whole process group (again and again until it was empty:
    # under gVisor a forking member can outlive one kill). The workspace answers at once, with
    # its files, and nothing of the bomb is left.
    killed, deadline = time.monotonic(), time.monotonic() + 10
    while True:
        result = attack.client.exec(workspace_id, "cat /workspace/notes.txt; echo; ps -e | wc -l", timeout=5)
        if result.exit_code == 0 and int(result.stdout.split()[-1]) < 10:
            break
        assert time.monotonic() < deadline, f"the workspace did not recover within 10 s: {result}"
        time.sleep(0.5)
    assert result.stdout.split()[0] == "kept"
    attack.saw(f"contained: 'Cannot fork'; host tasks peaked at {peak} of {host_limit}")
    attack.saw(f"workspace usable again {time.monotonic() - killed:.1f} s after the bomb was killed, files kept")


def test_memory_bomb(attack: Attack) -> None:
    workspace_id = attack.workspace(memory="256M")
    result = attack.client.exec(workspace_id, ["python3", "-c", "b = bytearray(1 << 30); print('allocated')"])
    assert result.exit_code == 137 and result.signal == "SIGKILL", result
    assert "allocated" not in result.stdout
    assert attack.client.exec(workspace_id, "echo still here").stdout == "still here\n"
    attack.saw("1 GiB at a 256 MiB limit: the process was SIGKILLed (exit 137); the workspace lives on")


def test_disk_fill(attack: Attack) -> None:
    workspace_id = attack.workspace(disk="128M")
    host_free_before = shutil.disk_usage("/").free
    result = attack.client.exec(workspace_id, "dd if=/dev/zero of=/workspace/big bs=1M count=400 2>&1")
    assert "No space left on device" in result.stdout, result
    written = int(attack.client.exec(workspace_id, "stat -c %s /workspace/big").stdout)
    assert 100 << 20 < written <= 128 << 20
    # /tmp and the home directory share the same budget; the rest of the root is read-only.
    fill = "dd if=/dev/zero bs=64k count=16 of="
    result = attack.client.exec(workspace_id, f"{fill}/tmp/more; {fill}$HOME/more; echo x > /var/tmp/x; echo x > /x")
    assert result.stderr.count("No space left on device") == 2, result
    assert "Read-only file system" in result.stderr
    spent = host_free_before - shutil.disk_usage("/").free
    assert spent < 140 << 20
    # Freeing space inside makes the workspace usable again.
    result = attack.client.exec(
        workspace_id, "rm /workspace/big && echo hello > /workspace/small && cat /workspace/small"
    )
    assert result.stdout == "hello\n"
    attack.saw(f"400 MiB into a 128 MiB disk: ENOSPC after {written >> 20} MiB; root read-only")
    attack.saw(f"host spent {spent >> 20} MiB")


def test_cpu_spin(attack: Attack, docker_client: docker.DockerClient) -> None:
    workspace_id = attack.workspace(cpu=0.5)
    usage = CGROUPS / "cpuacct" / "docker" / container_id(docker_client, workspace_id) / "cpuacct.usage"
    busy = "python3 -c 'import time\nt = time.time()\nwhile time.time() - t < 4: pass' &"
    before, started = int(usage.read_text()), time.monotonic()
    attack.client.exec(workspace_id, f"{busy} {busy} wait")
    used = (int(usage.read_text()) - before) / 1e9 / (time.monotonic() - started)
    # Two busy processes on a 2-core host would use ~2 CPUs; the workspace gets half of one.
    assert 0.3 < used < 0.65, f"used {used:.2f} CPUs with --cpus 0.5"
    attack.saw(f"two spinning processes at cpu=0.5 got {used:.2f} CPUs")


def test_process_ignoring_sigterm(attack: Attack, docker_client: docker.DockerClient) -> None:
    workspace_id = attack.workspace()
    stubborn = "trap '' TERM HUP INT; while :; do sleep 1; done"
    result = attack.client.exec(workspace_id, stubborn, timeout=2)
    assert result.exit_code == 124 and result.timed_out is True, result  # killed at its deadline
    attack.client.exec(workspace_id, f'nohup sh -c "{stubborn}" >/dev/null 2>&1 &')
    started = time.monotonic()
    assert attack.client.stop(workspace_id).status == "stopped"
    stopped_in = time.monotonic() - started
    attack.client.delete(workspace_id)
    attack.made.remove(workspace_id)
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(f"agentbox-{workspace_id}")
    attack.saw(f"killed at the exec deadline (exit 124); workspace stopped in {stopped_in:.1f} s and deleted")


def test_stdout_flood(attack: Attack, fenced: Server) -> None:
    workspace_id = attack.workspace()
    assert fenced.process is not None
    status = Path(f"/proc/{fenced.process.pid}/status")
    Path(f"/proc/{fenced.process.pid}/clear_refs").write_text("5")  # restart the server's peak-memory count
    before = _memory(status, "VmRSS")
    started = time.monotonic()
    result = attack.client.exec(workspace_id, "head -c 1G /dev/zero; echo done >&2", timeout=300)
    took = time.monotonic() - started
    assert result.stdout_truncated is True and len(result.stdout) == 10 << 20
    assert result.stderr == "done\n" and result.exit_code == 0  # the flood ran to its end
    # The server held the kept 10 MiB, never the flood. (Its JSON is up to 6x bigger, a NUL being
    # \u0000, and passes through a few copies on the way out: ~200 MiB at the peak, measured.)
    grew = _memory(status, "VmHWM") - before
    assert grew < 384 << 20, f"the server grew by {grew >> 20} MiB"
    attack.saw(f"1 GiB of stdout: 10 MiB kept, the rest discarded in {took:.1f} s; server grew {grew >> 20} MiB")


def test_mount_and_namespaces(attack: Attack) -> None:
    workspace_id = attack.workspace()
    attack.client.write_file(workspace_id, "/workspace/kept.txt", b"kept")
    result = attack.client.exec(workspace_id, "mount -t tmpfs none /workspace; echo mount=$?")
    assert "mount=0" not in result.stdout, result
    escape = "unshare -Urm sh -c 'mount -t tmpfs none /workspace && echo >/etc/passwd'; echo unshare=$?"
    result = attack.client.exec(workspace_id, escape)
    if attack.provider == "docker":
        assert "unshare=0" not in result.stdout, result
        assert "Operation not permitted" in result.stderr, result
        attack.saw("mount refused; unshare of user+mount namespaces refused (EPERM)")
    else:
        # gVisor (2024) has user namespaces of its own, inside its kernel: "root" there owns only
        # the new namespaces. The mount stays in them, and the real files stay out of reach.
        assert "unshare=0" not in result.stdout and "Permission denied" in result.stderr, result
        assert attack.client.read_file(workspace_id, "/workspace/kept.txt") == b"kept"
        attack.saw("mount refused; unshare -Urm works inside gVisor's kernel only: /etc still EACCES, mount not seen")


def test_kernel_module(attack: Attack) -> None:
    workspace_id = attack.workspace()
    load = (
        "import ctypes, errno, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "fd = os.open('/dev/null', os.O_RDONLY)\n"
        "for name, args in (('finit_module', (313, fd, b'', 0)), ('init_module', (175, None, 0, b''))):\n"
        "    print(name, libc.syscall(*args), errno.errorcode.get(ctypes.get_errno()))\n"
    )
    result = attack.client.exec(workspace_id, ["python3", "-c", load])
    assert result.stdout.splitlines() == ["finit_module -1 EPERM", "init_module -1 EPERM"], result
    attack.saw("finit_module and init_module: EPERM")


def test_raw_sockets(attack: Attack) -> None:
    workspace_id = attack.workspace()
    opens = (
        "import socket\n"
        "for family, proto in ((socket.AF_INET, socket.IPPROTO_ICMP), (socket.AF_PACKET, 0)):\n"
        "    try:\n"
        "        socket.socket(family, socket.SOCK_RAW, proto); print('opened')\n"
        "    except OSError as exc:\n"
        "        print(exc.strerror)\n"
    )
    result = attack.client.exec(workspace_id, ["python3", "-c", opens])
    refusals = result.stdout.splitlines()
    assert len(refusals) == 2 and "opened" not in refusals, result
    attack.saw(f"raw IP and packet sockets refused: {sorted(set(refusals))}")


def test_reaching_out(
    attack: Attack, bystander: tuple[Client, str], docker_client: docker.DockerClient, host_listener: int
) -> None:
    workspace_id = attack.workspace()
    targets = [
        f"{address_of(docker_client, bystander[1])}:8080",
        f"{PRIVATE}:8080",
        "169.254.169.254:80",
        "100.100.100.200:80",
        "[fd00:ec2::254]:80",
        *(f"{address}:{host_listener}" for address in host_addresses(docker_client)),
    ]
    found = probe(attack.client, workspace_id, *targets)
    assert set(found.values()) <= REJECTED, found
    attack.saw("refused at once: " + json.dumps(found))


def test_reading_another_workspace(attack: Attack) -> None:
    workspace_id = attack.workspace()
    search = (
        f"grep -rl {MARKER} / --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev 2>/dev/null; "
        "echo processes: $(ls /proc | grep -c '^[0-9]')"
    )
    result = attack.client.exec(workspace_id, search, timeout=300)
    assert MARKER not in result.stdout and "/" not in result.stdout, result
    processes = int(result.stdout.split()[-1])
    assert processes < 10, result  # only its own (the bystander runs a server, among others)
    attack.saw(f"no file of the bystander's anywhere; sees {processes} processes, all its own")


def _memory(status: Path, field: str) -> int:
    for line in status.read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in {status}")
