#!/usr/bin/env bash
# Prepare this host to run agentbox workspaces: Docker engine + gVisor (runsc).
#
#   a. install what is missing among dockerd, runsc, debootstrap, busybox (apt)
#   b. register runsc in /etc/docker/daemon.json (merged, rewritten only on change)
#   c. start dockerd if it is not answering (cleaning up after a killed one)
#   d. reload dockerd (SIGHUP) if it was running and its runsc registration is stale
#   e. raise kernel.pid_max if it is low (gVisor's ptrace platform spends ~15 host
#      threads per task in a sandbox: 32768 pids are a few busy workspaces)
#   f. print a one-line summary
#
# Idempotent; takes well under 2 s when everything is already in place.
#
# Environment:
#   AGENTBOX_RUNSC_ARGS   runsc runtimeArgs, space separated
#                         (default: "--platform=ptrace --network=host"; this Debian
#                         runsc build refuses systrap and its netstack fails here)
#   AGENTBOX_SKIP_RUNSC=1 do not register runsc (leave any registration alone)
set -euo pipefail

export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:${PATH}"

DAEMON_JSON=/etc/docker/daemon.json
DOCKER_PIDFILE=/var/run/docker.pid
CONTAINERD_PIDFILE=/var/run/docker/containerd/containerd.pid
DOCKERD_LOG=/var/log/dockerd.log
START_TIMEOUT=60
RELOAD_TIMEOUT=30
DEFAULT_RUNSC_ARGS="--platform=ptrace --network=host"

say() { echo "==> $*"; }
die() { echo "error: $*" >&2; exit 1; }

if [ "$(id -u)" -ne 0 ]; then
    echo "error: $0 must run as root (it installs packages and manages dockerd)" >&2
    exit 1
fi

command -v python3 >/dev/null 2>&1 || die "python3 is needed (Debian package python3)"

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
declare -A PKG_FOR=([dockerd]=docker.io [docker]=docker.io [runsc]=runsc
                    [debootstrap]=debootstrap [busybox]=busybox-static)
missing_pkgs=()
for cmd in dockerd docker runsc debootstrap busybox; do
    if ! command -v "$cmd" >/dev/null 2>&1; then
        pkg=${PKG_FOR[$cmd]}
        [[ " ${missing_pkgs[*]} " == *" $pkg "* ]] || missing_pkgs+=("$pkg")
    fi
done
if [ ${#missing_pkgs[@]} -eq 0 ]; then
    say "packages present: dockerd runsc debootstrap busybox"
else
    say "installing missing packages: ${missing_pkgs[*]}"
    if ! command -v apt-get >/dev/null 2>&1; then
        die "apt-get not found; install these by hand (Debian package names): ${missing_pkgs[*]}"
    fi
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing_pkgs[@]}"
    for cmd in dockerd docker runsc debootstrap busybox; do
        command -v "$cmd" >/dev/null 2>&1 || die "'$cmd' still missing after installing ${PKG_FOR[$cmd]}"
    done
fi

# ----------------------------------------------------- b. register runsc
runsc_path=$(command -v runsc)
read -r -a runsc_args <<<"${AGENTBOX_RUNSC_ARGS:-$DEFAULT_RUNSC_ARGS}"
daemon_json_changed=0
if [ "${AGENTBOX_SKIP_RUNSC:-0}" = "1" ]; then
    say "AGENTBOX_SKIP_RUNSC=1: leaving runsc registration in $DAEMON_JSON alone"
else
    # Prints "changed" or "unchanged"; keeps every other key of the file.
    result=$(python3 - "$DAEMON_JSON" "$runsc_path" "${runsc_args[@]}" <<'EOF'
import json, os, sys, tempfile
path, runsc, args = sys.argv[1], sys.argv[2], sys.argv[3:]
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
want = {"path": runsc, "runtimeArgs": args}
runtimes = conf.get("runtimes")
if not isinstance(runtimes, dict):
    runtimes = {}
if runtimes.get("runsc") == want and conf.get("runtimes") is runtimes:
    print("unchanged")
    sys.exit(0)
runtimes["runsc"] = want
conf["runtimes"] = runtimes
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
    if [ "$result" = "changed" ]; then
        daemon_json_changed=1
        say "registered runsc in $DAEMON_JSON: $runsc_path ${runsc_args[*]}"
    else
        say "runsc already registered in $DAEMON_JSON: $runsc_path ${runsc_args[*]}"
    fi
fi

# --------------------------------------------------------- c. start dockerd
dump_log_and_die() {
    echo "---- last 20 lines of $DOCKERD_LOG ----" >&2
    tail -n 20 "$DOCKERD_LOG" >&2 || true
    echo "----" >&2
    echo "hint: run 'dockerd' in the foreground to see why it fails; check $DAEMON_JSON" \
         "(runtimes), leftovers of a killed daemon ($DOCKER_PIDFILE, $CONTAINERD_PIDFILE)" \
         "and 'ps -ef | grep -E \"dockerd|containerd\"'" >&2
    die "$1"
}

wait_for_docker() {  # wait_for_docker PID_OR_EMPTY
    local pid=$1 deadline=$((SECONDS + START_TIMEOUT))
    while [ $SECONDS -lt $deadline ]; do
        if info=$(docker_query); then
            return 0
        fi
        if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
            dump_log_and_die "dockerd exited during start-up"
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
        say "starting dockerd (log: $DOCKERD_LOG)"
        t0=$SECONDS
        setsid dockerd >"$DOCKERD_LOG" 2>&1 </dev/null &
        new_pid=$!
        wait_for_docker "$new_pid"
        say "dockerd (pid $new_pid) answering after $((SECONDS - t0))s"
    fi
fi

# ------------------------------------------------- d. reload if registration is stale
if [ "${AGENTBOX_SKIP_RUNSC:-0}" != "1" ]; then
    want_runtime=$(python3 -c 'import json,sys; print(json.dumps({"path": sys.argv[1], "runtimeArgs": sys.argv[2:]}, sort_keys=True))' \
        "$runsc_path" "${runsc_args[@]}")
    runtime_ok() {  # does the daemon's live configuration match daemon.json?
        python3 -c '
import json, sys
rt = json.loads(sys.argv[1].split("|", 1)[1]).get("runsc")
want = json.loads(sys.argv[2])
sys.exit(0 if rt and {"path": rt.get("path"), "runtimeArgs": rt.get("runtimeArgs") or []} == want else 1)
' "$info" "$want_runtime"
    }
    if [ "$was_running" = 1 ] && { [ "$daemon_json_changed" = 1 ] || ! runtime_ok; }; then
        pid=$(cat "$DOCKER_PIDFILE")
        say "reloading dockerd configuration (SIGHUP to pid $pid)"
        kill -HUP "$pid"
        deadline=$((SECONDS + RELOAD_TIMEOUT))
        until info=$(docker_query) && runtime_ok; do
            if [ $SECONDS -ge $deadline ]; then
                dump_log_and_die "dockerd did not pick up the runsc runtime within ${RELOAD_TIMEOUT}s after SIGHUP"
            fi
            sleep 0.3
        done
    elif ! runtime_ok; then
        dump_log_and_die "dockerd does not report the runsc runtime configured in $DAEMON_JSON"
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

# ------------------------------------------------------------------ f. summary
version=${info%%|*}
runtimes=$(python3 -c 'import json,sys; print(" ".join(sorted(json.loads(sys.argv[1].split("|",1)[1]))))' "$info")
say "docker $version ready; runtimes: $runtimes"
