#!/usr/bin/env bash
# Prepare this host to run agentbox workspaces: Docker engine + gVisor (runsc).
#
#   a. install what is missing among dockerd, debootstrap, busybox (apt), and runsc at the
#      pinned version from bookworm-backports (the first runsc Debian ships with the
#      systrap platform; bookworm's own 20221219 has only ptrace, 2-10x slower here)
#   b. register five runtimes in /etc/docker/daemon.json (merged, rewritten only on change):
#      `runsc` (on the platform measured for this host in step f; until then as registered),
#      `runsc-ptrace`, the fallback the service probes when runsc does not run on a host (or
#      the runsc installed is too old for systrap), `runsc-systrap` (the two are what step f
#      measures, whatever runsc is registered with), and `runsc-nonet`
#      (runsc's args with --network=none) for workspaces without network, which gVisor can
#      checkpoint, and `runsc-build` (runsc-nonet's args with --overlay2=none) for the RUN steps of
#      template builds; and turn on the engine's "experimental" checkpoints (a pause that keeps
#      memory). A running dockerd picks up the runtimes by SIGHUP, "experimental" only when it
#      next starts: that is said, never forced (a restart would stop every workspace)
#   c. start dockerd if it is not answering (cleaning up after a killed one), and wait for it to
#      answer, saying every 10 s what it is doing (a start after a killed daemon restores every
#      container it had, which takes minutes with many gVisor sandboxes)
#   d. reload dockerd (SIGHUP) if it was running and its runtime registration is stale
#   e. raise kernel.pid_max if it is low (gVisor spends several host threads per task in a
#      sandbox: 32768 pids are a few busy workspaces)
#   f. choose gVisor's platform by measuring systrap and ptrace here (process starts, file work,
#      system calls, idle CPU: src/agentbox/providers/docker/platform_choice.py, ~15 s), once per runsc
#      build and kernel (recorded in AGENTBOX_PLATFORM_RECORD), and register `runsc` on the
#      better one (docs/runtime.md). A measurement that fails leaves runsc as it is and says so
#   g. print a one-line summary
#
# Idempotent; takes well under 2 s when everything is already in place (and measured). A host where
# bookworm-backports cannot be reached keeps (or installs) bookworm's runsc and says so; the
# service then finds by its probe that only ptrace works there.
#
# Environment:
#   AGENTBOX_RUNSC_VERSION  the runsc package version to install (default: the pin below);
#                           "any" keeps whatever runsc is installed
#   AGENTBOX_RUNSC_ARGS     runtimeArgs of `runsc`, space separated; set, no platform is measured
#                           and `doctor` and /health say the platform was chosen by you
#                           (default: "--platform=<measured> --network=host --host-uds=create":
#                           gVisor's netstack fails on this kernel with either build, see
#                           docs/runtime.md; host-uds for the helper's control socket)
#   AGENTBOX_PLATFORM_RECORD where the platform measurement is kept
#                           (default: /var/lib/agentbox/platform.json; delete it to measure again)
#   AGENTBOX_SKIP_RUNSC=1   do not register runsc (leave any registration alone)
#   AGENTBOX_DOCKERD_TIMEOUT seconds to wait for a starting dockerd to answer (default: 180)
set -euo pipefail

export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:${PATH}"

DAEMON_JSON=/etc/docker/daemon.json
DOCKER_PIDFILE=/var/run/docker.pid
CONTAINERD_PIDFILE=/var/run/docker/containerd/containerd.pid
DOCKERD_LOG=/var/log/dockerd.log
START_TIMEOUT=${AGENTBOX_DOCKERD_TIMEOUT:-180}
PROGRESS_EVERY=10
RELOAD_TIMEOUT=30
PLATFORM_PY="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/src/agentbox/providers/docker/platform_choice.py"
PLATFORM_RECORD=${AGENTBOX_PLATFORM_RECORD:-/var/lib/agentbox/platform.json}
RUNSC_PIN="0.0~20240729.0-4~bpo12+2"
RUNSC_SUITE=bookworm-backports
BACKPORTS_SOURCES=/etc/apt/sources.list.d/agentbox-backports.sources

say() { echo "==> $*"; }
die() { echo "error: $*" >&2; exit 1; }

if [ "$(id -u)" -ne 0 ]; then
    echo "error: $0 must run as root (it installs packages and manages dockerd)" >&2
    exit 1
fi

command -v python3 >/dev/null 2>&1 || die "python3 is needed (Debian package python3)"

# The platform measurement and its record (standard library only; -I: the file's own directory is
# not put on sys.path, where its siblings could shadow the standard library's modules).
platform_tool() {
    python3 -I "$PLATFORM_PY" --record "$PLATFORM_RECORD" "$@"
}

# Answers with "VERSION|RUNTIMES_JSON" if dockerd responds, fails otherwise.
docker_query() {
    timeout 15 docker info --format '{{.ServerVersion}}|{{json .Runtimes}}' 2>/dev/null
}

# proc_is PID NAME: true if process PID is alive (not a zombie) and named NAME.
# (A daemon killed with SIGKILL stays a zombie for a few seconds here: PID 1 is
# not an init that reaps promptly, and /proc/PID still exists meanwhile.)
proc_is() {
    local pid=$1 name=$2 stat
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    # /proc/PID/stat is "PID (COMM) STATE ..."
    [[ "$stat" == "$pid ($name) "* ]] || return 1
    [[ "${stat#*) }" != Z* && "${stat#*) }" != X* ]]
}

# ---------------------------------------------------------------- a. packages
declare -A PKG_FOR=([dockerd]=docker.io [docker]=docker.io
                    [debootstrap]=debootstrap [busybox]=busybox-static)
missing_pkgs=()
for cmd in dockerd docker debootstrap busybox; do
    if ! command -v "$cmd" >/dev/null 2>&1; then
        pkg=${PKG_FOR[$cmd]}
        [[ " ${missing_pkgs[*]} " == *" $pkg "* ]] || missing_pkgs+=("$pkg")
    fi
done
runsc_want=${AGENTBOX_RUNSC_VERSION:-$RUNSC_PIN}
runsc_have=$(dpkg-query -W -f '${Version}' runsc 2>/dev/null || true)
[ "$runsc_want" = any ] && [ -n "$runsc_have" ] && runsc_want=$runsc_have
apt_ready=0
apt_update() {
    [ "$apt_ready" = 1 ] && return 0
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install these by hand (Debian package names): $*"
    # A mirror that does not answer must not hang set-up: it fails and the fallbacks below apply.
    apt-get update -q -o Acquire::http::Timeout=20 -o Acquire::Retries=1 || true
    apt_ready=1
}
apt_install() {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}
# The backports suite, from the mirror this host already uses for bookworm (deb822 or one-line).
add_backports() {
    [ -f "$BACKPORTS_SOURCES" ] && return 0
    local uri
    uri=$(awk '/^URIs:/ {u = $2} /^Suites:/ && / bookworm( |$)/ {print u; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null)
    [ -n "$uri" ] || uri=$(awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null)
    [ -n "$uri" ] || return 1
    printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
        "$uri" "$RUNSC_SUITE" >"$BACKPORTS_SOURCES"
    apt_ready=0
}

if [ ${#missing_pkgs[@]} -eq 0 ]; then
    say "packages present: dockerd debootstrap busybox"
else
    say "installing missing packages: ${missing_pkgs[*]}"
    apt_update "${missing_pkgs[@]}"
    apt_install "${missing_pkgs[@]}"
    for cmd in dockerd docker debootstrap busybox; do
        command -v "$cmd" >/dev/null 2>&1 || die "'$cmd' still missing after installing ${PKG_FOR[$cmd]}"
    done
fi

if [ "$runsc_have" = "$runsc_want" ]; then
    say "runsc $runsc_have present"
else
    say "installing runsc $runsc_want from $RUNSC_SUITE (have: ${runsc_have:-none}); a few seconds"
    add_backports || echo "warning: found no bookworm source in /etc/apt to take $RUNSC_SUITE from" >&2
    apt_update runsc
    if apt_install -t "$RUNSC_SUITE" "runsc=$runsc_want"; then
        say "runsc $runsc_want installed"
    elif [ -n "$runsc_have" ]; then
        echo "warning: could not install runsc $runsc_want from $RUNSC_SUITE; keeping runsc $runsc_have." \
             "An older build may lack the systrap platform: the service then falls back to ptrace and says so" >&2
    else
        echo "warning: could not install runsc $runsc_want from $RUNSC_SUITE; installing bookworm's runsc" \
             "(ptrace only, several times slower: see docs/runtime.md)" >&2
        apt_install runsc
    fi
fi
command -v runsc >/dev/null 2>&1 || die "runsc is missing and could not be installed (apt-get install runsc)"

# ----------------------------------------------------- b. register runsc
runsc_path=$(command -v runsc)
# The helper in each workspace serves its control socket on a bind-mounted directory: runsc
# must let the sandbox make a Unix socket the host can connect to. Builds without the flag
# (bookworm's 2022 one) leave it out, and the service uses `docker exec` instead.
# (The flags are read whole first: `grep -q` quitting early would kill runsc with SIGPIPE, and
# under pipefail that read as "no such flag", registering runsc without it now and then.)
runsc_flags=$("$runsc_path" flags 2>&1 || true)
HOST_UDS=""
if grep -q -- '-host-uds ' <<<"$runsc_flags"; then
    HOST_UDS=" --host-uds=create"
fi
args_for() {  # args_for PLATFORM: runsc's runtimeArgs on that platform
    echo "--platform=$1 --network=host$HOST_UDS"
}
PTRACE_RUNSC_ARGS=$(args_for ptrace)
SYSTRAP_RUNSC_ARGS=$(args_for systrap)
# runsc's args: the user's, else those of the platform measured earlier for this runsc build and
# kernel, else (until step f has measured) the platform runsc is registered with, or systrap.
registered_platform() {
    python3 -c '
import json, sys
args = json.load(open(sys.argv[1]))["runtimes"]["runsc"]["runtimeArgs"]
print(next(a.split("=", 1)[1] for a in args if a.startswith("--platform=")))
' "$DAEMON_JSON" 2>/dev/null
}
if [ -n "${AGENTBOX_RUNSC_ARGS:-}" ]; then
    primary_args=$AGENTBOX_RUNSC_ARGS
    primary_how="AGENTBOX_RUNSC_ARGS: chosen by you"
elif recorded=$(platform_tool recorded --runsc "$runsc_path" 2>/dev/null) && [[ "$recorded" =~ ^(systrap|ptrace)$ ]]; then
    primary_args=$(args_for "$recorded")
    primary_how="measured for this host: $PLATFORM_RECORD"
elif current=$(registered_platform) && [[ "$current" =~ ^(systrap|ptrace)$ ]]; then
    primary_args=$(args_for "$current")
    primary_how="as registered, until measured"
else
    primary_args=$(args_for systrap)
    primary_how="systrap until measured"
fi

daemon_json_changed=0
# register_runtimes: write runsc (primary_args), runsc-ptrace, runsc-systrap and runsc-nonet into
# daemon.json, setting want_runtimes (what daemon.json and the live engine must say) and
# daemon_json_changed.
register_runtimes() {
    # {"runsc": {...}, "runsc-ptrace": {...}, "runsc-systrap": {...}, "runsc-nonet": {...}, "runsc-build": {...}}
    want_runtimes=$(python3 -c '
import json, sys
path, primary, ptrace, systrap = sys.argv[1:]
entry = lambda args: {"path": path, "runtimeArgs": args}
nonet = [a for a in primary.split() if not a.startswith("--network=")] + ["--network=none"]
# Template builds (providers/docker/gvisor_build.py): no network, and the root filesystem written through to the
# layer of the container (runsc keeps it in the sandbox by default), so that docker commit keeps what RUN wrote.
build = [a for a in nonet if not a.startswith("--overlay2=")] + ["--overlay2=none"]
print(json.dumps({"runsc": entry(primary.split()), "runsc-ptrace": entry(ptrace.split()),
                  "runsc-systrap": entry(systrap.split()), "runsc-nonet": entry(nonet),
                  "runsc-build": entry(build)}, sort_keys=True))
' "$runsc_path" "$primary_args" "$PTRACE_RUNSC_ARGS" "$SYSTRAP_RUNSC_ARGS")
    local result summary
    # Prints "changed" or "unchanged"; keeps every other key of the file.
    result=$(python3 - "$DAEMON_JSON" "$want_runtimes" <<'EOF'
import json, os, sys, tempfile
path, want = sys.argv[1], json.loads(sys.argv[2])
conf = {}
if os.path.exists(path):
    with open(path) as f:
        text = f.read()
    if text.strip():
        try:
            conf = json.loads(text)
        except ValueError as e:
            sys.exit(f"error: {path} is not valid JSON ({e}); fix or remove it")
    if not isinstance(conf, dict):
        sys.exit(f"error: {path} does not hold a JSON object")
runtimes = conf.get("runtimes")
if not isinstance(runtimes, dict):
    runtimes = {}
if all(runtimes.get(name) == entry for name, entry in want.items()) and conf.get("experimental") is True:
    print("unchanged")
    sys.exit(0)
runtimes.update(want)
conf["runtimes"] = runtimes
conf["experimental"] = True
os.makedirs(os.path.dirname(path), exist_ok=True)
fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".daemon.json.")
with os.fdopen(fd, "w") as f:
    json.dump(conf, f, indent=2)
    f.write("\n")
os.chmod(tmp, 0o644)
os.replace(tmp, path)
print("changed")
EOF
    )
    summary="runsc ($runsc_path $primary_args: $primary_how), runsc-ptrace, runsc-systrap, runsc-nonet, runsc-build; experimental"
    if [ "$result" = "changed" ]; then
        daemon_json_changed=1
        say "registered in $DAEMON_JSON: $summary"
    else
        daemon_json_changed=0
        say "already registered in $DAEMON_JSON: $summary"
    fi
}
if [ "${AGENTBOX_SKIP_RUNSC:-0}" = "1" ]; then
    say "AGENTBOX_SKIP_RUNSC=1: leaving runsc registration in $DAEMON_JSON alone"
else
    register_runtimes
fi

# --------------------------------------------------------- c. start dockerd
# The containerd shims alive, one per container the engine runs (zombies of dead ones left out).
live_shims() {
    { ps -eo pid=,stat=,comm= | awk '$2 !~ /^Z/ && $3 ~ /^containerd-shim/ {print $1}' | tr '\n' ' '; } 2>/dev/null || true
}

# What dockerd last logged (the msg="..." of its last line), to say what a slow start is busy with.
dockerd_last_words() {
    tail -n 1 "$DOCKERD_LOG" 2>/dev/null | sed -n 's/.*msg="\([^"]*\)".*/\1/p' | cut -c1-160
}

dump_log_and_die() {
    local shims
    echo "---- last 30 lines of $DOCKERD_LOG ----" >&2
    tail -n 30 "$DOCKERD_LOG" >&2 || true
    echo "----" >&2
    echo "hint: run 'dockerd' in the foreground to see why it fails; check $DAEMON_JSON" \
         "(runtimes), leftovers of a killed daemon ($DOCKER_PIDFILE, $CONTAINERD_PIDFILE)" \
         "and 'ps -ef | grep -E \"dockerd|containerd\"'" >&2
    shims=$(live_shims)
    if [ -n "$shims" ]; then
        echo "hint: containerd shims are running (pids: ${shims% }). A dockerd started after a killed one" \
             "restores every container they hold (\"Loading containers\" in its log), slowly with many gVisor" \
             "sandboxes, and waits on a shim that does not answer. Either give it longer" \
             "(AGENTBOX_DOCKERD_TIMEOUT=600 $0), or start clean: stop dockerd and its containerd" \
             "(kill \$(cat $DOCKER_PIDFILE) \$(cat $CONTAINERD_PIDFILE)), kill the leftover shims" \
             "(kill ${shims% }: the containers they run end; workspaces keep their files on their disks" \
             "and the agentbox server reconciles them), then run this again (make setup)" >&2
    fi
    die "$1"
}

wait_for_docker() {  # wait_for_docker PID_OR_EMPTY
    local pid=$1 started=$SECONDS deadline=$((SECONDS + START_TIMEOUT)) report=$((SECONDS + PROGRESS_EVERY))
    local shims
    while [ $SECONDS -lt $deadline ]; do
        if info=$(docker_query); then
            return 0
        fi
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
            dump_log_and_die "dockerd exited during start-up"
        fi
        if [ $SECONDS -ge $report ]; then
            shims=$(live_shims)
            echo "    still waiting for dockerd${pid:+ (pid $pid)} to answer 'docker info':" \
                 "$((SECONDS - started))s of ${START_TIMEOUT}s; $(wc -w <<<"$shims") containerd shims alive;" \
                 "its log's last words: $(dockerd_last_words)"
            report=$((SECONDS + PROGRESS_EVERY))
        fi
        sleep 0.5
    done
    dump_log_and_die "dockerd did not answer within ${START_TIMEOUT}s"
}

was_running=0
if info=$(docker_query); then
    was_running=1
    say "dockerd is running"
else
    old_pid=$(cat "$DOCKER_PIDFILE" 2>/dev/null || true)
    if proc_is "$old_pid" dockerd; then
        # A live daemon that does not answer yet (still starting or reloading).
        say "dockerd (pid $old_pid) is alive but not answering; waiting up to ${START_TIMEOUT}s"
        wait_for_docker "$old_pid"
        was_running=1
    else
        # Leftovers of a daemon killed with SIGKILL. dockerd refuses to start while
        # its pid file names *any* live process (PIDs get reused), and it adopts
        # (or later kills!) whatever process containerd.pid names, so drop both
        # unless they name the right program. Stale sockets are unlinked by the
        # daemons themselves.
        if [ -e "$DOCKER_PIDFILE" ]; then
            echo "    removing stale $DOCKER_PIDFILE (pid ${old_pid:-?} is gone or not a dockerd)"
            rm -f "$DOCKER_PIDFILE"
        fi
        ctd_pid=$(cat "$CONTAINERD_PIDFILE" 2>/dev/null || true)
        if [ -e "$CONTAINERD_PIDFILE" ] && ! proc_is "$ctd_pid" containerd; then
            echo "    removing stale $CONTAINERD_PIDFILE (pid ${ctd_pid:-?} is gone or not a containerd)"
            rm -f "$CONTAINERD_PIDFILE"
        fi
        say "starting dockerd (log: $DOCKERD_LOG); waiting up to ${START_TIMEOUT}s for it to answer"
        t0=$SECONDS
        setsid dockerd >"$DOCKERD_LOG" 2>&1 </dev/null &
        new_pid=$!
        wait_for_docker "$new_pid"
        say "dockerd (pid $new_pid) answering after $((SECONDS - t0))s"
    fi
fi

# ------------------------------------------------- d. reload if registration is stale
runtime_ok() {  # does the daemon's live configuration match daemon.json?
    python3 -c '
import json, sys
live = json.loads(sys.argv[1].split("|", 1)[1])
want = json.loads(sys.argv[2])
same = lambda rt, entry: rt and {"path": rt.get("path"), "runtimeArgs": rt.get("runtimeArgs") or []} == entry
sys.exit(0 if all(same(live.get(name), entry) for name, entry in want.items()) else 1)
' "$info" "$want_runtimes"
}
# sync_engine WAS_RUNNING: make the live engine use daemon.json's runtimes (a dockerd that this
# script started read them when it started).
sync_engine() {
    local pid deadline
    if [ "$1" = 1 ] && { [ "$daemon_json_changed" = 1 ] || ! runtime_ok; }; then
        pid=$(cat "$DOCKER_PIDFILE")
        say "reloading dockerd configuration (SIGHUP to pid $pid)"
        kill -HUP "$pid"
        deadline=$((SECONDS + RELOAD_TIMEOUT))
        until info=$(docker_query) && runtime_ok; do
            if [ $SECONDS -ge $deadline ]; then
                dump_log_and_die "dockerd did not pick up the runsc runtimes within ${RELOAD_TIMEOUT}s after SIGHUP"
            fi
            sleep 0.3
        done
    elif ! runtime_ok; then
        dump_log_and_die "dockerd does not report the runsc runtimes configured in $DAEMON_JSON"
    fi
}
if [ "${AGENTBOX_SKIP_RUNSC:-0}" != "1" ]; then
    sync_engine "$was_running"
    if [ "$(timeout 15 docker info --format '{{.ExperimentalBuild}}' 2>/dev/null)" != true ]; then
        echo "note: dockerd runs without \"experimental\": true (set in $DAEMON_JSON), so it cannot checkpoint:" \
             "a pause keeps a workspace's files, not its memory, until dockerd restarts" >&2
    fi
fi

# ------------------------------------------------------------- e. kernel.pid_max
WANT_PID_MAX=4194304
pid_max=$(cat /proc/sys/kernel/pid_max)
if [ "$pid_max" -lt "$WANT_PID_MAX" ]; then
    if echo "$WANT_PID_MAX" >/proc/sys/kernel/pid_max 2>/dev/null; then
        say "raised kernel.pid_max from $pid_max to $WANT_PID_MAX"
    else
        echo "warning: kernel.pid_max is $pid_max and could not be raised; busy gVisor workspaces may exhaust it" >&2
    fi
fi

# --------------------------------------------------- f. gVisor's platform, measured
# Never fails set-up: a platform that does not run here is not chosen, and a measurement that
# cannot be made leaves runsc as registered (the service's probe still falls back to runsc-ptrace).
if [ "${AGENTBOX_SKIP_RUNSC:-0}" = "1" ]; then
    :
elif [ -n "${AGENTBOX_RUNSC_ARGS:-}" ]; then
    platform_tool override --runsc "$runsc_path" --args "$AGENTBOX_RUNSC_ARGS" ||
        echo "warning: could not record in $PLATFORM_RECORD that AGENTBOX_RUNSC_ARGS chose runsc's platform" >&2
    say "gVisor platform: as AGENTBOX_RUNSC_ARGS says (chosen by you, not measured)"
elif chosen=$(platform_tool measure --runsc "$runsc_path") && [[ "$chosen" =~ ^(systrap|ptrace)$ ]]; then
    primary_how="measured for this host: $PLATFORM_RECORD"
    if [ "$primary_args" != "$(args_for "$chosen")" ]; then
        primary_args=$(args_for "$chosen")
        register_runtimes
        sync_engine 1
    fi
else
    echo "warning: gVisor's platform could not be chosen by measurement (above); runsc stays registered" \
         "with $primary_args. Run this script again to retry" >&2
fi

# ------------------------------------------------------------------ g. summary
version=${info%%|*}
runtimes=$(python3 -c 'import json,sys; print(" ".join(sorted(json.loads(sys.argv[1].split("|",1)[1]))))' "$info")
platform_said=""
if [ "${AGENTBOX_SKIP_RUNSC:-0}" != "1" ] && [[ "$primary_args" =~ --platform=([a-z]+) ]]; then
    platform_said="; runsc on ${BASH_REMATCH[1]} ($primary_how)"
fi
say "docker $version ready; runtimes: $runtimes$platform_said"
