"""gVisor's platform chosen by measurement: the parts that need no engine (parsing a round's output,
the rule, the record, and what doctor and /health say from it). The measurement itself runs against
the real engine in tests/integration/test_platform_choice.py."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from agentbox.cli.doctor import platform_check
from agentbox.providers.docker import platform_choice as pc
from agentbox.providers.docker.oci_runtime import GVisorRuntime, platform_note
from agentbox.providers.docker.platform_choice import Figures, PlatformResult, Record

KERNEL = os.uname().release
MODULE = Path(pc.__file__)


def figures(start_ms: float, file_us: float, idle: float | None = 1.0, syscall_us: float = 5.0) -> Figures:
    return Figures(
        process_start_ms=start_ms, file_round_trip_us=file_us, syscall_us=syscall_us, idle_cpu_percent=idle, rounds=5
    )


def results(systrap: Figures | str, ptrace: Figures | str) -> dict[str, PlatformResult]:
    made = {}
    for platform, runtime, outcome in (("systrap", "runsc-systrap", systrap), ("ptrace", "runsc-ptrace", ptrace)):
        if isinstance(outcome, str):
            made[platform] = PlatformResult(platform, runtime, error=outcome)
        else:
            made[platform] = PlatformResult(platform, runtime, outcome)
    return made


def record(chosen: str = "ptrace", version: str = "0.0~20240729.0", **changes: object) -> Record:
    # Measured here under load: systrap 41.6 ms a command, ptrace 50.8 ms (within 20%).
    measured = results(figures(16.8, 785, 3.6, syscall_us=6.0), figures(8.7, 1030, 0.0, syscall_us=56.0))
    fields: dict[str, object] = {
        "runsc_version": version,
        "kernel": KERNEL,
        "measured_at": "2026-12-07T10:58:20+00:00",
        "results": measured,
        "chosen": chosen,
        "why": pc.choose(measured)[1],
    }
    return Record(**(fields | changes))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------ a round's output


def test_a_round_gives_the_time_of_a_process_start_a_file_round_trip_and_a_system_call() -> None:
    output = (
        "/tmp/stamp12.0 2026-12-07 10:55:05.693368212 +0000\n"
        "/tmp/stamp12.1 2026-12-07 10:55:06.093368212 +0000\n"  # 400 ms for 20 starts
        "/tmp/stamp12.2 2026-12-07 10:55:06.253368212 +0000\n"  # 160 ms for 200 round trips
        "/tmp/stamp12.3 2026-12-07 10:55:06.278368212 +0000\n"  # 25 ms for 5,000 system calls
    )
    start_ms, file_us, syscall_us = pc.parse_round(output)
    assert start_ms == pytest.approx(400 / pc.STARTS)
    assert file_us == pytest.approx(160_000 / pc.FILES)
    assert syscall_us == pytest.approx(25_000 / pc.SYSCALLS)


def test_stamps_across_a_second_and_in_another_zone_count_the_same() -> None:
    # A sandbox's TZ may differ; stat prints the zone, and a shorter fraction is a fraction all the same.
    output = (
        "/tmp/s.0 2026-12-07 11:59:59.9 +0100\n"  # 10:59:59.900 UTC
        "/tmp/s.1 2026-12-07 10:00:00.100000000 -0100\n"  # 11:00:00.100 UTC: 200 ms later
        "/tmp/s.2 2026-12-07 11:00:00.300000000 +0000\n"
        "/tmp/s.3 2026-12-07 11:00:00.300000000 +0000\n"
    )
    start_ms, file_us, syscall_us = pc.parse_round(output)
    assert start_ms == pytest.approx(200 / pc.STARTS) and file_us == pytest.approx(200_000 / pc.FILES)
    assert syscall_us == 0


def test_a_round_without_its_four_stamps_is_refused_with_what_it_said() -> None:
    with pytest.raises(ValueError, match="sh: /bin/true: not found"):
        pc.parse_round("sh: /bin/true: not found\n/tmp/s.0 2026-12-07 10:55:05.6 +0000\n")


# -------------------------------------------------------------------------------------- the rule


def test_a_platform_whose_command_costs_more_than_twenty_percent_less_wins_whatever_its_idle_cost() -> None:
    # What this machine measured when quiet. A command, systrap: 19.5 + 30 x 0.305 + 200 x 0.0045 = 29.5 ms;
    # ptrace: 9.0 + 30 x 0.950 + 200 x 0.0551 = 48.5 ms.
    quiet = results(figures(19.5, 305, idle=3.6, syscall_us=4.5), figures(9.0, 950, idle=0.0, syscall_us=55.1))
    chosen, why = pc.choose(quiet)
    assert chosen == "systrap"
    assert why == "a command costs 29.5 ms against 48.5 ms on ptrace (39% less)"


def test_within_twenty_percent_the_lower_idle_cpu_wins() -> None:
    # Measured here with a crowd of 270 sandboxes on the machine: systrap's edge shrinks to 10%,
    # and it spins while idle.
    crowded = results(figures(22.7, 1038, idle=3.8, syscall_us=27.7), figures(12.8, 1453, idle=0.0, syscall_us=48.7))
    chosen, why = pc.choose(crowded)
    assert chosen == "ptrace"
    assert "within 20%" in why and "3.8% on systrap" in why
    # The same, when it is ptrace that costs a little less but idles dearer.
    chosen, _ = pc.choose(results(figures(16.8, 785, idle=0.5), figures(8.7, 1000, idle=2.0)))
    assert chosen == "systrap"


def test_without_idle_figures_a_close_call_goes_to_the_cheaper_command() -> None:
    chosen, why = pc.choose(results(figures(16, 800, idle=None), figures(9, 1000, idle=0.0)))
    assert chosen == "ptrace" and "idle CPU unknown" in why


def test_a_platform_that_did_not_run_is_never_chosen_and_the_reason_says_so() -> None:
    chosen, why = pc.choose(
        results("a container could not start under runsc-systrap: unknown platform", figures(9, 5000))
    )
    assert chosen == "ptrace"
    assert "the only platform that ran" in why and "systrap did not run here" in why and "unknown platform" in why


def test_when_neither_ran_there_is_no_choice() -> None:
    chosen, why = pc.choose(results("timed out", "not registered"))
    assert chosen is None and "neither platform ran" in why and "timed out" in why


def test_the_runtime_args_name_their_platform() -> None:
    assert pc.platform_of(["--network=host", "--platform=ptrace"]) == "ptrace"
    assert pc.platform_of(["--network=host"]) is None


# ------------------------------------------------------------------------------------ the record


def test_a_record_reads_back_as_written_and_is_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "lib" / "platform.json"
    first = record(results=results("unknown platform", figures(8.7, 1030, None)))
    pc.write_record(first, path)
    assert pc.read_record(path) == first
    pc.write_record(record(), path)
    assert pc.read_record(path) == record()
    assert [p.name for p in path.parent.iterdir()] == ["platform.json"]  # no temporary file left
    assert oct(path.stat().st_mode & 0o777) == "0o644"  # doctor runs as anyone


@pytest.mark.parametrize("text", ["", "{", "[]", '{"runsc_version": "x"}', '{"results": {"a": 1}}'])
def test_a_damaged_record_reads_as_none(tmp_path: Path, text: str) -> None:
    path = tmp_path / "platform.json"
    path.write_text(text)
    assert pc.read_record(path) is None
    assert pc.read_record(tmp_path / "missing.json") is None


# ----------------------------------------------------------------------- what doctor and /health say


def test_the_measured_choice_is_explained_with_the_figures_and_the_rule(tmp_path: Path) -> None:
    path = tmp_path / "platform.json"
    pc.write_record(record("ptrace"), path)
    ok, text = pc.describe("ptrace", "0.0~20240729.0", KERNEL, path)
    assert ok
    assert text.startswith("ptrace, chosen by measurement: a command costs 41.6 ms on systrap and 50.8 ms on ptrace")
    assert "Rule: the lower cost of one command" in text
    assert "systrap: 16.8 ms a process start, 785 µs a file round trip" in text
    assert "ptrace: 8.7 ms a process start" in text and "0.0% of a CPU idle" in text


def test_without_a_record_the_explanation_says_how_to_measure(tmp_path: Path) -> None:
    ok, text = pc.describe("systrap", "0.0~20240729.0", KERNEL, tmp_path / "none.json")
    assert not ok and "no platform measurement recorded" in text and "make host" in text


def test_a_record_of_another_runsc_build_or_kernel_does_not_count(tmp_path: Path) -> None:
    path = tmp_path / "platform.json"
    pc.write_record(record("ptrace", version="0.0~20221219.0"), path)
    ok, text = pc.describe("ptrace", "0.0~20240729.0", KERNEL, path)
    assert not ok and "is for runsc 0.0~20221219.0" in text and "make host" in text
    pc.write_record(record("ptrace", kernel="5.10.0-other"), path)
    assert pc.describe("ptrace", "0.0~20240729.0", KERNEL, path)[0] is False


def test_a_registration_changed_after_set_up_is_called_out(tmp_path: Path) -> None:
    path = tmp_path / "platform.json"
    pc.write_record(record("ptrace"), path)
    ok, text = pc.describe("systrap", "0.0~20240729.0", KERNEL, path)
    assert not ok and "runsc runs on systrap, but the set-up's measurement chose ptrace" in text


def test_a_platform_chosen_by_the_user_is_reported_as_theirs(tmp_path: Path) -> None:
    path = tmp_path / "platform.json"
    args = ("--platform=systrap", "--network=host")
    pc.write_record(record("systrap", chosen_by="you", user_args=args, why="AGENTBOX_RUNSC_ARGS"), path)
    ok, text = pc.describe("systrap", "0.0~20240729.0", KERNEL, path)
    assert ok and text.startswith("systrap, chosen by you (AGENTBOX_RUNSC_ARGS=--platform=systrap --network=host)")
    assert "Measured at set-up" in text  # the earlier figures, for comparison


def test_doctor_and_health_render_the_record(tmp_path: Path) -> None:
    path = tmp_path / "platform.json"
    pc.write_record(record("ptrace"), path)
    runtime = GVisorRuntime("runsc", str(fake_runsc(tmp_path)), ("--platform=ptrace", "--network=host"))
    check = platform_check(runtime, KERNEL, path)
    assert check.ok and check.name == "runsc's platform (ptrace) chosen for this host"
    assert "chosen by measurement" in check.detail and "8.7 ms a process start" in check.detail
    assert platform_note(runtime, KERNEL, path).startswith("Platform: ptrace, chosen by measurement: ")
    other = GVisorRuntime("runsc", str(fake_runsc(tmp_path)), ("--platform=systrap",))
    check = platform_check(other, KERNEL, path)
    assert not check.ok and "make host" in check.fix and str(path) in check.fix


# ------------------------------------------------------------------- the command setup-host.sh runs


def fake_runsc(tmp_path: Path, version: str = "0.0~20240729.0") -> Path:
    binary = tmp_path / "runsc"
    binary.write_text(f"#!/bin/sh\necho 'runsc version {version}'\necho 'spec: 1.0.2-dev'\n")
    binary.chmod(0o755)
    return binary


def tool(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The module as setup-host.sh runs it: a file, by the system's python3, isolated."""
    return subprocess.run(
        ["python3", "-I", str(MODULE), "--record", str(path), *args], capture_output=True, text=True, timeout=60
    )


def test_setup_reuses_a_measurement_of_the_same_runsc_and_kernel(tmp_path: Path) -> None:
    path = tmp_path / "platform.json"
    pc.write_record(record("ptrace"), path)
    before = path.read_text()
    # Runtimes that do not exist: measuring would fail, so an answer proves it did not measure.
    done = tool(path, "measure", "--runsc", str(fake_runsc(tmp_path)), "--runtime", "systrap=no-such-runtime")
    assert done.returncode == 0 and done.stdout == "ptrace\n", done.stderr
    assert "as measured for runsc 0.0~20240729.0" in done.stderr
    assert path.read_text() == before
    assert tool(path, "recorded", "--runsc", str(fake_runsc(tmp_path))).stdout == "ptrace\n"
    # Another build: nothing recorded for it.
    (tmp_path / "newer").mkdir()
    other = tool(path, "recorded", "--runsc", str(fake_runsc(tmp_path / "newer", "0.0~20990101.0")))
    assert other.returncode == 1 and other.stdout == ""


def test_the_users_args_are_recorded_as_their_choice_and_the_measurement_kept(tmp_path: Path) -> None:
    path, runsc = tmp_path / "platform.json", str(fake_runsc(tmp_path))
    pc.write_record(record("ptrace"), path)
    done = tool(path, "override", "--runsc", runsc, "--args", "--platform=systrap --network=host")
    assert done.returncode == 0, done.stderr
    mine = pc.read_record(path)
    assert mine is not None and (mine.chosen, mine.chosen_by) == ("systrap", "you")
    assert mine.user_args == ("--platform=systrap", "--network=host") and mine.results == record().results
    # set-up without AGENTBOX_RUNSC_ARGS registers what was measured, without measuring again
    assert tool(path, "recorded", "--runsc", runsc).stdout == "ptrace\n"
    again = tool(path, "measure", "--runsc", runsc, "--runtime", "systrap=no-such-runtime")
    assert again.stdout == "ptrace\n", again.stderr
    back = pc.read_record(path)
    assert back is not None and (back.chosen, back.chosen_by, back.user_args) == ("ptrace", "measurement", ())


def test_the_module_runs_without_the_projects_dependencies() -> None:
    # setup-host.sh runs it with the system's python3, before the virtualenv may exist: -S leaves out
    # every installed package, so only the standard library is there.
    done = subprocess.run(["python3", "-I", "-S", str(MODULE), "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "measure" in done.stdout, done.stderr


def test_a_measurement_on_a_busy_host_is_said_so_and_taken_again(tmp_path: Path) -> None:
    path, runsc = tmp_path / "platform.json", str(fake_runsc(tmp_path))
    pc.write_record(record("ptrace", load=5.2, cpus=2), path)
    ok, text = pc.describe("ptrace", "0.0~20240729.0", KERNEL, path)
    assert ok and "measured on a busy host (load 5.2 on 2 CPUs): set-up measures again" in text
    # Set-up registers it meanwhile, and measures again rather than answer from it: here with runtimes
    # that do not exist, so nothing is chosen and the busy record stays.
    assert tool(path, "recorded", "--runsc", runsc).stdout == "ptrace\n"
    again = tool(path, "measure", "--runsc", runsc, "--runtime", "systrap=agentbox-none", "--runtime", "ptrace=nor")
    assert again.returncode == 1 and again.stdout == "", again.stderr
    assert "was measured on a busy host" in again.stderr
    assert pc.read_record(path) == record("ptrace", load=5.2, cpus=2)
    # A quiet host's record answers.
    pc.write_record(record("ptrace", load=0.3, cpus=2), path)
    assert not pc.read_record(path).busy  # type: ignore[union-attr]
    assert tool(path, "measure", "--runsc", runsc, "--runtime", "systrap=agentbox-none").stdout == "ptrace\n"
