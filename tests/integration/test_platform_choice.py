"""gVisor's platform chosen by measurement, for real: both platforms measured on this engine, set-up
registering runsc on the one chosen, and doctor and /health saying which and why."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from agentbox.client import Client
from agentbox.providers.docker import platform_choice as pc

from .test_cli import agentbox

REPO = Path(__file__).resolve().parents[2]
SETUP = REPO / "scripts" / "setup-host.sh"
DAEMON_JSON = Path("/etc/docker/daemon.json")


def measure(record: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The measurement as setup-host.sh runs it: the file, by the system's python3."""
    command = ["python3", "-I", str(Path(pc.__file__)), "--record", str(record), "measure", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def measurement_containers() -> list[str]:
    listed = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={pc.LABEL}"], capture_output=True, text=True, check=True
    )
    return listed.stdout.split()


def test_both_platforms_are_measured_here_and_the_rule_picks_one(tmp_path: Path) -> None:
    path = tmp_path / "platform.json"
    done = measure(path)
    assert done.returncode == 0, done.stderr
    record = pc.read_record(path)
    assert record is not None, done.stderr
    runsc = shutil.which("runsc")
    assert runsc is not None
    assert (record.runsc_version, record.kernel) == (pc.runsc_version(runsc), os.uname().release)
    for platform in pc.PLATFORMS:
        result = record.results[platform]
        assert (result.error, result.runtime) == (None, pc.RUNTIMES[platform]), done.stderr
        figures = result.figures
        assert figures is not None and 1 <= figures.rounds <= pc.ROUNDS
        assert figures.process_start_ms > 0 and figures.file_round_trip_us > 0 and figures.syscall_us > 0
        assert figures.idle_cpu_percent is not None and figures.idle_cpu_percent >= 0  # its cgroup was found
    assert done.stdout == f"{record.chosen}\n"
    assert (record.chosen, record.why) == pc.choose(record.results)
    assert record.cpus == os.cpu_count() and record.load is not None
    assert measurement_containers() == []
    # Set-up again on the same runsc and kernel: the record answers, nothing is measured (unless the
    # host was busy when it was measured: then it is measured again).
    before = path.read_text()
    again = measure(path)
    if record.busy:
        assert "was measured on a busy host" in again.stderr and "measuring" in again.stderr
    else:
        assert again.stdout == done.stdout and "as measured for runsc" in again.stderr
        assert path.read_text() == before


def test_a_platform_that_cannot_run_leaves_the_other(tmp_path: Path) -> None:
    path = tmp_path / "platform.json"
    done = measure(path, "--runtime", "systrap=agentbox-no-such-runtime", "--runtime", "ptrace=runsc-ptrace")
    assert done.returncode == 0 and done.stdout == "ptrace\n", done.stderr
    record = pc.read_record(path)
    assert record is not None and record.results["ptrace"].figures is not None
    assert "agentbox-no-such-runtime is not registered" in str(record.results["systrap"].error)
    assert "the only platform that ran" in record.why and "systrap did not run here" in record.why
    # Neither: no choice, no record, and set-up goes on (the exit status says it, the script warns).
    nothing = tmp_path / "nothing.json"
    neither = measure(nothing, "--runtime", "systrap=agentbox-no-such-runtime", "--runtime", "ptrace=agentbox-nor-this")
    assert neither.returncode == 1 and neither.stdout == "" and "neither platform ran" in neither.stderr
    assert not nothing.exists()
    assert measurement_containers() == []


def test_set_up_registers_runsc_on_the_platform_it_recorded() -> None:
    first = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr + first.stdout
    measured = pc.read_record()
    assert measured is not None, f"no record in {pc.RECORD_PATH}: {first.stderr}"
    assert measured.holds_for(pc.runsc_version(shutil.which("runsc") or "runsc"), os.uname().release)
    # The second run on this host has a measurement for this runsc and kernel: it does not measure
    # (unless that one was made on a busy host).
    second = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr + second.stdout
    record = pc.read_record()
    assert record is not None
    if not measured.busy:
        assert "measuring gVisor's platforms" not in second.stderr and record == measured
    registered = json.loads(DAEMON_JSON.read_text())["runtimes"]
    live = json.loads(subprocess.run(["docker", "info", "--format", "{{json .Runtimes}}"],
                                     capture_output=True, text=True, check=True).stdout)  # fmt: skip
    args = registered["runsc"]["runtimeArgs"]
    assert live["runsc"]["runtimeArgs"] == args  # the engine uses what daemon.json says
    if record.chosen_by == "you":  # AGENTBOX_RUNSC_ARGS
        assert tuple(args) == record.user_args
    else:
        assert pc.platform_of(args) == record.chosen
        assert f"runsc on {record.chosen} (measured for this host: {pc.RECORD_PATH})" in second.stdout
    # What is measured stays registered whatever runsc runs on.
    for platform, name in pc.RUNTIMES.items():
        assert pc.platform_of(registered[name]["runtimeArgs"]) == platform


def test_doctor_and_health_say_which_platform_and_why(alice: Client) -> None:
    record = pc.read_record()
    assert record is not None, f"scripts/setup-host.sh records its measurement in {pc.RECORD_PATH}"
    health = alice.health()
    assert health.runtime == "runsc" and health.gvisor_platform == record.chosen
    assert f"Platform: {record.chosen}, chosen by " in health.runtime_reason
    figures = record.results["ptrace"].figures
    assert figures is not None and f"{figures.process_start_ms:.1f} ms a process start" in health.runtime_reason
    doctor = agentbox(None, "doctor", env={"WORKSPACE_NETWORK_NAME": "workspace_net"})
    line = f"ok   runsc's platform ({record.chosen}) chosen for this host: {record.chosen}, chosen by "
    assert line in doctor.stdout, doctor.stdout
