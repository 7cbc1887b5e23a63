"""gVisor's platform for this host, chosen by measuring systrap and ptrace at set-up.

Which platform serves an agent better depends on the host: on this project's machines (nested VM,
2 cores, runsc 20240729) ptrace starts a process ~2x faster than systrap, while systrap serves a
system call ~15x faster (given a spare CPU) and spins ~4-5% of a CPU in every awake idle sandbox. So
`scripts/setup-host.sh` measures both, once per runsc build and kernel, and registers `runsc` with
the better one (measuring under `runsc-systrap` and `runsc-ptrace`, registered beside it; the latter
stays the service's fallback):

- **process starts**: `/bin/true` started 20 times by a shell in the sandbox (fork + exec + wait);
- **file work**: 200 round trips of a small file on a bind-mounted host directory, as a workspace's
  disk is: the shell writes it, sources it and tests it (2 opens and a stat among 14 system calls);
- **system calls**: 5,000 that gVisor serves itself (the shell reading /dev/zero a byte at a time:
  a read and a poll each), the cost a compute- or output-heavy program pays per call;
- **idle cost**: the sandbox's host cgroup CPU time over 2 s of doing nothing.

Timed inside the sandbox (a file's mtime before and after, from gVisor's own clock), one round per
`docker exec`, the platforms alternating, 5 rounds after a warm-up; medians, since other work may
share the machine. About 15 s in all; a measurement begun on a busy host (load average above its
CPUs) is used but taken again at the next set-up.

The rule (`choose`): a platform that did not run is never chosen. Of those that did, the cost of
one command decides when one is more than 20% cheaper: one process start, 30 small-file round
trips and 200 system calls. `git add` + `git commit` make ~1,200 system calls in 3 processes
(strace), ~210 file calls and ~190 others a process: 30 round trips make ~420 calls and 90 path
lookups, 200 plain calls stand for the rest (a compiler or a test run makes many more). Closer
than 20% (separate runs on this 2-core machine differed by up to 15%), the lower idle CPU wins:
idle workspaces are frozen after their idle timeout (freezer.py), so idle CPU only counts for the
awake time before, and least.

The result is recorded in RECORD_PATH (JSON) with the runsc version and kernel it holds for; `doctor`
and `/health` read it back (`describe`) to say which platform is in use and why.

Only the standard library: setup-host.sh runs this file with the system's python3 before the
project's virtualenv may exist (`python3 -I .../platform_choice.py measure`); `python -m
agentbox.providers.docker.platform_choice` does the same from the virtualenv.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RECORD_PATH = Path(os.environ.get("AGENTBOX_PLATFORM_RECORD") or "/var/lib/agentbox/platform.json")
PLATFORMS = ("systrap", "ptrace")
#: What runsc registers when nothing was measured: upstream's default since 2023.
DEFAULT_PLATFORM = "systrap"
#: The runtimes setup-host.sh registers for each platform, whichever `runsc` is registered with.
RUNTIMES = {"systrap": "runsc-systrap", "ptrace": "runsc-ptrace"}
IMAGE = "agentbox/measure:busybox"
LABEL = "agentbox.measure"

STARTS = 20  # process starts a round
FILES = 200  # file round trips a round
ROUNDS = 5
IDLE_SECONDS = 2.0
#: Small-file round trips that one command costs besides its process start (the rule's weight).
FILES_PER_COMMAND = 30
#: System calls gVisor serves itself that one command makes besides (the rule's weight).
SYSCALLS_PER_COMMAND = 200
SYSCALLS = 5000  # a round's: 2,500 one-byte reads, each with its poll
#: What the record holds; a record of another format is measured again.
FORMAT = 2
#: A cost this much lower wins outright; closer than that (noise, on a shared machine), the lower idle CPU does.
MARGIN = 0.20
#: Past this many seconds of measuring, no further round is started (set-up runs on every `make test`).
BUDGET = 20.0
TIMEOUT = 60.0  # one docker call; a platform that hangs (kvm in a nested VM) must not hang set-up
RULE = (
    f"the lower cost of one command (a process start + {FILES_PER_COMMAND} small-file round trips + "
    f"{SYSCALLS_PER_COMMAND} system calls) wins when "
    f"more than {MARGIN:.0%} lower; closer than that, the lower idle CPU (idle workspaces are frozen, so it "
    "counts least)"
)
MEASURE_HINT = (
    "run `make host` (or `bash scripts/setup-host.sh`) to measure systrap and ptrace here and register runsc on "
    "the better one"
)

# Runs in the sandbox's busybox shell: every command in the loops is a builtin but /bin/true, which
# is a real fork + exec (a name with a slash is never run as an applet). The stamps are files whose
# mtimes gVisor's clock sets; `stat` prints them to the nanosecond.
ROUND_SCRIPT = f"""
d=/workspace/r$$; s=/tmp/stamp$$; mkdir -p $d
: > $s.0
i=0; while [ $i -lt {STARTS} ]; do /bin/true; i=$((i+1)); done
: > $s.1
i=0; while [ $i -lt {FILES} ]; do echo : > $d/$i; . $d/$i; [ -f $d/$i ]; i=$((i+1)); done
: > $s.2
read -r -n {SYSCALLS // 2} x < /dev/zero
: > $s.3
stat -c '%n %y' $s.0 $s.1 $s.2 $s.3
rm -rf $d $s.0 $s.1 $s.2 $s.3
"""
STAMP = re.compile(r"^\S+\.(\d) (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)(?:\.(\d{1,9}))? ([+-]\d{4})\s*$")


@dataclass(frozen=True)
class Figures:
    """One platform's medians."""

    process_start_ms: float
    file_round_trip_us: float
    syscall_us: float
    #: Percent of one CPU an idle sandbox spends; None when its cgroup was not found.
    idle_cpu_percent: float | None
    rounds: int

    @property
    def command_ms(self) -> float:
        """The rule's cost of one command."""
        return (
            self.process_start_ms
            + FILES_PER_COMMAND * self.file_round_trip_us / 1000
            + SYSCALLS_PER_COMMAND * self.syscall_us / 1000
        )

    def summary(self) -> str:
        idle = "?" if self.idle_cpu_percent is None else f"{self.idle_cpu_percent:.1f}%"
        return (
            f"{self.process_start_ms:.1f} ms a process start, {self.file_round_trip_us:.0f} µs a file round trip, "
            f"{self.syscall_us:.1f} µs a system call "
            f"({self.command_ms:.1f} ms a command), {idle} of a CPU idle"
        )


@dataclass(frozen=True)
class PlatformResult:
    platform: str
    runtime: str
    figures: Figures | None = None
    #: Why it could not be measured (it did not run here); None when it was.
    error: str | None = None

    def summary(self) -> str:
        return f"{self.platform}: {self.figures.summary() if self.figures else 'did not run: ' + str(self.error)}"


@dataclass(frozen=True)
class Record:
    """What RECORD_PATH holds: a measurement and its choice, for one runsc build on one kernel."""

    runsc_version: str
    kernel: str
    measured_at: str
    results: dict[str, PlatformResult]
    #: The platform `runsc` is registered with: measurement's choice, or the user's (chosen_by "you").
    chosen: str
    why: str
    rule: str = RULE
    chosen_by: str = "measurement"
    #: AGENTBOX_RUNSC_ARGS when chosen_by is "you".
    user_args: tuple[str, ...] = field(default=())
    #: The host's 1-minute load average when the measurement began, and its CPUs.
    load: float | None = None
    cpus: int | None = None
    format: int = FORMAT

    @property
    def busy(self) -> bool:
        """Whether other work competed for the CPUs: systrap, whose sentry spins on a spare CPU, then
        measures far slower (a system call 27 µs instead of 4.5 here), so set-up measures again."""
        return self.load is not None and self.cpus is not None and self.load > self.cpus

    def busy_note(self) -> str:
        return f"measured on a busy host (load {self.load:.1f} on {self.cpus} CPUs): set-up measures again"

    def holds_for(self, runsc_version: str | None, kernel: str) -> bool:
        return self.runsc_version == runsc_version and self.kernel == kernel and self.format == FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Record:
        """The record in `text`; ValueError when it is not one (another version's, or damaged)."""
        try:
            data = json.loads(text)
            results = {}
            for name, entry in dict(data["results"]).items():
                figures = entry.get("figures")
                results[name] = PlatformResult(
                    platform=str(entry["platform"]),
                    runtime=str(entry["runtime"]),
                    figures=Figures(**figures) if figures else None,
                    error=entry.get("error"),
                )
            return cls(
                runsc_version=str(data["runsc_version"]),
                kernel=str(data["kernel"]),
                measured_at=str(data["measured_at"]),
                results=results,
                chosen=str(data["chosen"]),
                why=str(data["why"]),
                rule=str(data.get("rule", RULE)),
                chosen_by=str(data.get("chosen_by", "measurement")),
                user_args=tuple(data.get("user_args") or ()),
                load=None if data.get("load") is None else float(data["load"]),
                cpus=None if data.get("cpus") is None else int(data["cpus"]),
                format=int(data.get("format", 1)),
            )
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ValueError(f"not a platform record: {exc!r}") from None


def read_record(path: Path = RECORD_PATH) -> Record | None:
    """The record at `path`; None when there is none or it cannot be read as one."""
    try:
        return Record.from_json(path.read_text())
    except (OSError, ValueError):
        return None


def write_record(record: Record, path: Path = RECORD_PATH) -> None:
    """Replace the record at `path` whole (a reader never sees half of one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(record.to_json())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------------------------------ the rule


def choose(results: Mapping[str, PlatformResult]) -> tuple[str | None, str]:
    """The platform the rule picks from `results` (None when none ran), and why, in a clause."""
    ran = {name: r.figures for name, r in results.items() if r.figures is not None}
    failed = [r for r in results.values() if r.figures is None]
    note = "".join(f"; {r.platform} did not run here ({r.error})" for r in failed)
    if not ran:
        return None, f"neither platform ran{note}"
    if len(ran) == 1:
        (only,) = ran
        return only, f"the only platform that ran{note}"
    (a, fa), (b, fb) = sorted(ran.items(), key=lambda item: item[1].command_ms)
    cheaper = 1 - fa.command_ms / fb.command_ms
    if cheaper > MARGIN:
        return a, f"a command costs {fa.command_ms:.1f} ms against {fb.command_ms:.1f} ms on {b} ({cheaper:.0%} less)"
    close = f"a command costs {fa.command_ms:.1f} ms on {a} and {fb.command_ms:.1f} ms on {b} (within {MARGIN:.0%})"
    if fa.idle_cpu_percent is None or fb.idle_cpu_percent is None:
        return a, f"{close}; idle CPU unknown, so the cheaper command"
    idler, busier = (a, b) if fa.idle_cpu_percent <= fb.idle_cpu_percent else (b, a)
    return idler, (
        f"{close}, and an idle sandbox costs {ran[idler].idle_cpu_percent:.1f}% of a CPU against "
        f"{ran[busier].idle_cpu_percent:.1f}% on {busier}"
    )


def platform_of(args: Sequence[str]) -> str | None:
    for arg in args:
        if arg.startswith("--platform="):
            return arg.removeprefix("--platform=")
    return None


# ----------------------------------------------------------------------------- doctor's and /health's


def describe(
    platform: str | None, runsc_version: str | None, kernel: str, path: Path = RECORD_PATH
) -> tuple[bool, str]:
    """Why `runsc` runs on `platform` here, from the record: (whether that is the recorded choice, a
    sentence with the figures and the rule or what to do)."""
    record = read_record(path)
    if record is None:
        return False, f"no platform measurement recorded ({path}): {MEASURE_HINT}"
    if not record.holds_for(runsc_version, kernel):
        return False, (
            f"the platform measurement in {path} is for runsc {record.runsc_version} on kernel {record.kernel}, "
            f"this host runs runsc {runsc_version or '?'} on kernel {kernel}: {MEASURE_HINT}"
        )
    figures = "; ".join(r.summary() for r in record.results.values())
    measured = f"Measured at set-up ({record.measured_at}, medians): {figures}." if figures else ""
    if figures and record.busy:
        measured = f"{measured[:-1]}; {record.busy_note()}."
    if record.chosen_by == "you":
        said = f"{record.chosen}, chosen by you (AGENTBOX_RUNSC_ARGS={' '.join(record.user_args)})"
        return platform == record.chosen, f"{said}. {measured}".rstrip()
    if platform != record.chosen:
        return False, (
            f"runsc runs on {platform or 'an unknown platform'}, but the set-up's measurement chose {record.chosen} "
            f"({record.why}): its registration was changed after set-up; {MEASURE_HINT}"
        )
    return True, f"{record.chosen}, chosen by measurement: {record.why}. Rule: {record.rule}. {measured}"


# --------------------------------------------------------------------------------------- measuring


def docker(*args: str, timeout: float = TIMEOUT, stdin: bytes | None = None) -> str:
    """`docker ARGS`' output; RuntimeError with its own words when it fails."""
    try:
        done = subprocess.run(["docker", *args], input=stdin, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"`docker {args[0]}` did not answer within {timeout:g} s") from None
    except OSError as exc:
        raise RuntimeError(f"cannot run docker: {exc}") from None
    if done.returncode != 0:
        words = done.stderr.decode("utf-8", "replace").strip() or done.stdout.decode("utf-8", "replace").strip()
        raise RuntimeError(words.splitlines()[-1][:300] if words else f"exit status {done.returncode}")
    return done.stdout.decode("utf-8", "replace")


def runsc_version(path: str) -> str | None:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    found = re.search(r"runsc version (\S+)", out)
    return found.group(1) if found else None


def busybox_tar() -> bytes:
    """A root filesystem of the host's busybox-static as a tar archive: its applets, /tmp and /workspace."""
    busybox = shutil.which("busybox")
    if busybox is None:
        raise RuntimeError("busybox is missing (apt-get install busybox-static)")
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=True).stdout.split()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(busybox, arcname="bin/busybox")
        for applet in applets:
            if applet != "busybox":
                link = tarfile.TarInfo(f"bin/{applet}")
                link.type, link.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(link)
        for directory in ("tmp", "workspace"):
            entry = tarfile.TarInfo(directory)
            entry.type, entry.mode = tarfile.DIRTYPE, 0o1777
            tar.addfile(entry)
    return buffer.getvalue()


def busybox_image() -> str:
    """IMAGE, imported from the host's busybox-static when missing (no registry needed)."""
    try:
        docker("image", "inspect", IMAGE)
        return IMAGE
    except RuntimeError:
        pass
    docker("import", "-", IMAGE, stdin=busybox_tar())
    return IMAGE


def parse_round(output: str) -> tuple[float, float, float]:
    """(ms a process start, µs a file round trip, µs a system call) from one round's stamps."""
    stamps: dict[int, int] = {}
    for line in output.splitlines():
        found = STAMP.match(line.strip())
        if found:
            index, when, fraction, zone = found.groups()
            seconds = int(datetime.strptime(f"{when} {zone}", "%Y-%m-%d %H:%M:%S %z").timestamp())
            stamps[int(index)] = seconds * 10**9 + int((fraction or "0").ljust(9, "0"))
    if sorted(stamps) != [0, 1, 2, 3]:
        raise ValueError(f"a round's output lacks its four time stamps: {output.strip()[-300:]!r}")
    return (
        (stamps[1] - stamps[0]) / STARTS / 1e6,
        (stamps[2] - stamps[1]) / FILES / 1e3,
        (stamps[3] - stamps[2]) / SYSCALLS / 1e3,
    )


def cgroup_cpu_seconds(container_id: str, root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The container's host cgroup CPU time (v1 or v2, cgroupfs or systemd driver), as usage.py reads
    it (repeated here: this file runs without the package's dependencies)."""
    for name in (f"docker/{container_id}", f"system.slice/docker-{container_id}.scope"):
        unified = root / name / "cpu.stat"
        if unified.is_file():
            for line in unified.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "usage_usec":
                    return int(value) / 1e6
        v1 = root / "cpuacct" / name / "cpuacct.usage"
        if v1.is_file():
            return int(v1.read_text()) / 1e9
    return None


def registered_runtimes() -> dict[str, dict[str, Any]]:
    return dict(json.loads(docker("info", "--format", "{{json .Runtimes}}")) or {})


def measure(
    runtimes: Mapping[str, str], rounds: int = ROUNDS, budget: float = BUDGET, say: Any = print
) -> dict[str, PlatformResult]:
    """Measure each platform under its runtime (platform -> runtime name): a result per platform, with
    its figures or why it could not be measured."""
    started = time.monotonic()
    errors: dict[str, str] = {}
    containers: dict[str, str] = {}
    samples: dict[str, list[tuple[float, float, float]]] = {p: [] for p in runtimes}
    idle: dict[str, float | None] = {}
    registered = registered_runtimes()
    for platform, runtime in runtimes.items():
        entry = registered.get(runtime)
        if entry is None:
            errors[platform] = f"runtime {runtime} is not registered with the engine"
        elif (has := platform_of(entry.get("runtimeArgs") or ())) not in (platform, None):
            errors[platform] = f"runtime {runtime} is registered with --platform={has}, not {platform}"
    workdir = Path(tempfile.mkdtemp(prefix="agentbox-measure-", dir="/var/tmp"))
    try:
        if len(errors) < len(runtimes):
            image = busybox_image()
            for platform, runtime in runtimes.items():
                if platform not in errors:
                    try:
                        containers[platform] = _start(platform, runtime, image, workdir / platform)
                    except RuntimeError as exc:
                        errors[platform] = f"a container could not start under {runtime}: {exc}"
        for number in range(rounds + 1 if containers else 0):  # round 0 warms up (binaries loaded, caches filled)
            if number > 1 and time.monotonic() - started > budget:
                say(f"    stopping after {number - 1} rounds: the {budget:g} s budget is spent (a busy machine?)")
                break
            order = [p for p in containers if p not in errors]
            for platform in order if number % 2 else reversed(order):
                try:
                    sample = parse_round(docker("exec", containers[platform], "sh", "-c", ROUND_SCRIPT))
                except (RuntimeError, ValueError) as exc:
                    errors[platform] = f"a round under {runtimes[platform]} failed: {exc}"
                    continue
                if number:
                    samples[platform].append(sample)
        idle = _idle_cpu({p: c for p, c in containers.items() if p not in errors})
    finally:
        removals = [subprocess.Popen(["docker", "rm", "-f", c], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    for c in containers.values()]  # fmt: skip
        for removal in removals:
            try:
                removal.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                removal.kill()
        shutil.rmtree(workdir, ignore_errors=True)
    results = {}
    for platform, runtime in runtimes.items():
        taken = samples[platform]
        if platform in errors or not taken:
            results[platform] = PlatformResult(platform, runtime, error=errors.get(platform, "no round finished"))
            continue
        figures = Figures(
            process_start_ms=round(statistics.median(s[0] for s in taken), 2),
            file_round_trip_us=round(statistics.median(s[1] for s in taken), 1),
            syscall_us=round(statistics.median(s[2] for s in taken), 2),
            idle_cpu_percent=idle.get(platform),
            rounds=len(taken),
        )
        results[platform] = PlatformResult(platform, runtime, figures)
    return results


def _start(platform: str, runtime: str, image: str, workspace: Path) -> str:
    """A sleeping container under `runtime` with `workspace` bind-mounted (as a workspace's disk is)."""
    workspace.mkdir()
    name = f"agentbox-measure-{platform}-{os.getpid()}"
    try:
        return docker(
            "run", "-d", "--name", name, "--runtime", runtime, "--network", "none", "--label", f"{LABEL}=1",
            "-v", f"{workspace}:/workspace", image, "sleep", "86400",
        ).strip()  # fmt: skip
    except RuntimeError:
        docker_quietly("rm", "-f", name)  # created, then failed to start (or timed out)
        raise


def _idle_cpu(containers: Mapping[str, str]) -> dict[str, float | None]:
    """Percent of a CPU each container's sandbox spends doing nothing, over the same IDLE_SECONDS."""
    if not containers:
        return {}
    time.sleep(0.5)  # the last round's work settles
    before = {p: cgroup_cpu_seconds(c) for p, c in containers.items()}
    t0 = time.monotonic()
    time.sleep(IDLE_SECONDS)
    after = {p: cgroup_cpu_seconds(c) for p, c in containers.items()}
    elapsed = time.monotonic() - t0
    spent = {p: (before[p], after[p]) for p in containers}
    return {p: None if b is None or a is None else round(100 * (a - b) / elapsed, 2) for p, (b, a) in spent.items()}


def docker_quietly(*args: str) -> None:
    with contextlib.suppress(RuntimeError):
        docker(*args)


# --------------------------------------------------------------------------------------------- CLI


def _say(line: str) -> None:
    """Progress, on stderr: stdout carries only the platform chosen (setup-host.sh reads it)."""
    print(line, file=sys.stderr, flush=True)


def _kernel() -> str:
    return os.uname().release


def _measure(args: argparse.Namespace) -> int:
    runtimes = dict(item.split("=", 1) for item in args.runtime) if args.runtime else dict(RUNTIMES)
    version = runsc_version(args.runsc)
    record = read_record(args.record)
    chosen, why = choose(record.results) if record is not None else (None, "")
    if record is not None and record.holds_for(version, _kernel()) and chosen and record.busy and not args.force:
        _say(f"==> the platform measurement in {args.record} was {record.busy_note()}")
    elif record is not None and record.holds_for(version, _kernel()) and chosen and not args.force:
        if record.chosen_by == "you":  # the user's choice is gone: back to what was measured
            record = replace(record, chosen=chosen, why=why, chosen_by="measurement", user_args=())
            with contextlib.suppress(OSError):
                write_record(record, args.record)
        _say(f"==> gVisor platform {record.chosen}, as measured for runsc {version} on this kernel "
             f"({record.measured_at}; {args.record}): {record.why}")  # fmt: skip
        print(record.chosen)
        return 0
    _say(f"==> measuring gVisor's platforms ({', '.join(runtimes)}) for runsc {version}, once per build: ~15 s")
    t0, load = time.monotonic(), os.getloadavg()[0]
    try:
        results = measure(runtimes, rounds=args.rounds, say=_say)
    except (RuntimeError, OSError, ValueError, subprocess.SubprocessError) as exc:
        print(f"warning: the platform measurement failed: {exc}", file=sys.stderr)
        return 1
    for result in results.values():
        _say(f"    {result.summary()}")
    chosen, why = choose(results)
    if chosen is None:
        print(f"warning: {why}; runsc keeps its registration", file=sys.stderr)
        return 1
    when = datetime.now(UTC).isoformat(timespec="seconds")
    _say(f"==> chose {chosen}: {why} ({time.monotonic() - t0:.1f} s; rule: {RULE})")
    try:
        write_record(
            Record(version or "?", _kernel(), when, results, chosen, why, load=load, cpus=os.cpu_count()), args.record
        )
    except OSError as exc:
        _say(f"warning: could not record the measurement in {args.record} ({exc}): the next set-up measures again")
    print(chosen)
    return 0


def _recorded(args: argparse.Namespace) -> int:
    """The measured choice for this runsc and kernel (also under a user's choice recorded since)."""
    record = read_record(args.record)
    if record is None or not record.holds_for(runsc_version(args.runsc), _kernel()):
        return 1
    chosen = choose(record.results)[0] if record.chosen_by == "you" else record.chosen
    if chosen is None:
        return 1
    print(chosen)
    return 0


def _override(args: argparse.Namespace) -> int:
    """Note that the user's AGENTBOX_RUNSC_ARGS chose; an earlier measurement's figures are kept."""
    user_args = tuple(args.args.split())
    chosen, why = platform_of(user_args) or DEFAULT_PLATFORM, f"AGENTBOX_RUNSC_ARGS={args.args}"
    version, record = runsc_version(args.runsc), read_record(args.record)
    if record is None or not record.holds_for(version, _kernel()):
        record = Record(version or "?", _kernel(), datetime.now(UTC).isoformat(timespec="seconds"), {}, chosen, why)
    write_record(replace(record, chosen=chosen, why=why, chosen_by="you", user_args=user_args), args.record)
    return 0


def _show(args: argparse.Namespace) -> int:
    runtimes = registered_runtimes()
    entry = runtimes.get(args.runtime) or {}
    platform = platform_of(entry.get("runtimeArgs") or ())
    ok, text = describe(platform, runsc_version(str(entry.get("path") or "runsc")), _kernel(), args.record)
    print(text)
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="platform_choice", description=__doc__.split("\n\n")[0])
    parser.add_argument("--record", type=Path, default=RECORD_PATH, help=f"the record (default {RECORD_PATH})")
    commands = parser.add_subparsers(dest="command", required=True)
    m = commands.add_parser("measure", help="measure (unless recorded for this runsc and kernel), record, print it")
    m.add_argument("--runsc", default=shutil.which("runsc") or "runsc", help="the runsc binary (for its version)")
    m.add_argument("--runtime", action="append", metavar="PLATFORM=RUNTIME", help="default: PLATFORM=runsc-PLATFORM")
    m.add_argument("--rounds", type=int, default=ROUNDS)
    m.add_argument("--force", action="store_true", help="measure even if a record holds for this runsc and kernel")
    m.set_defaults(run=_measure)
    r = commands.add_parser("recorded", help="print the measured choice for this runsc and kernel, if recorded")
    r.add_argument("--runsc", default=shutil.which("runsc") or "runsc")
    r.set_defaults(run=_recorded)
    o = commands.add_parser("override", help="record that AGENTBOX_RUNSC_ARGS chose the platform")
    o.add_argument("--runsc", default=shutil.which("runsc") or "runsc")
    o.add_argument("--args", required=True)
    o.set_defaults(run=_override)
    s = commands.add_parser("show", help="say which platform the engine's runtime runs on, and why")
    s.add_argument("--runtime", default="runsc")
    s.set_defaults(run=_show)
    args = parser.parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
