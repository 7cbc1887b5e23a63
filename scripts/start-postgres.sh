#!/usr/bin/env bash
# Start a throwaway PostgreSQL cluster for agentbox's tests (loopback only).
#
#   url=$(scripts/start-postgres.sh)
#
# Installs Debian's postgresql if missing, runs a cluster from /var/tmp/agentbox-pg
# on 127.0.0.1:$AGENTBOX_PG_PORT (default 54329, unix socket in /tmp), creates role
# and database "agentbox" (password "agentbox"), and prints
#   postgresql+psycopg://agentbox:agentbox@127.0.0.1:PORT/agentbox
# as the last (only) line of stdout; progress goes to stderr.
# Idempotent and fast when the cluster already runs; copes with a cluster that
# was killed with SIGKILL (stale postmaster.pid / socket lock file).
set -euo pipefail

export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:${PATH}"

PORT=${AGENTBOX_PG_PORT:-54329}
DATA=/var/tmp/agentbox-pg
LOG=/var/tmp/agentbox-pg.log
SOCKDIR=/tmp
URL="postgresql+psycopg://agentbox:agentbox@127.0.0.1:${PORT}/agentbox"

say() { echo "==> $*" >&2; }
die() { echo "error: $*" >&2; exit 1; }

[[ "$PORT" =~ ^[0-9]+$ ]] || die "AGENTBOX_PG_PORT must be a port number, not '$PORT'"
cd /   # commands run as user postgres must not start in a directory it cannot read

# Pick the binaries: the version the data dir was made with, else the newest installed.
find_bindir() {
    local v
    if [ -f "$DATA/PG_VERSION" ]; then
        v=$(cat "$DATA/PG_VERSION")
        if [ -x "/usr/lib/postgresql/$v/bin/pg_ctl" ]; then
            echo "/usr/lib/postgresql/$v/bin"
            return 0
        fi
    fi
    # shellcheck disable=SC2012  # names are plain version numbers
    v=$(ls -1 /usr/lib/postgresql/*/bin/pg_ctl 2>/dev/null | sort -V | tail -n 1)
    [ -n "$v" ] && dirname "$v"
}

# ------------------------------------------------------------- fast path
# Accepting connections and the agentbox role/database work: nothing to do.
agentbox_login_ok() {
    PGPASSWORD=agentbox PGCONNECT_TIMEOUT=5 "$BIN/psql" -X -q -h 127.0.0.1 -p "$PORT" \
        -U agentbox -d agentbox -tAc 'select 1' >/dev/null 2>&1
}
BIN=$(find_bindir || true)
if [ -n "$BIN" ] && "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" && agentbox_login_ok; then
    say "postgres already running on 127.0.0.1:$PORT"
    echo "$URL"
    exit 0
fi

[ "$(id -u)" -eq 0 ] || die "$0 must run as root to install/start PostgreSQL"

# ------------------------------------------------------------- install
if [ -z "$BIN" ]; then
    say "installing postgresql (Debian package)"
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install PostgreSQL by hand"
    apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql >&2
    BIN=$(find_bindir || true)
    [ -n "$BIN" ] || die "no /usr/lib/postgresql/*/bin/pg_ctl after installing postgresql"
fi
id postgres >/dev/null 2>&1 || die "user 'postgres' does not exist (it comes with Debian's postgresql-common)"
as_pg() { runuser -u postgres -- "$@"; }

# ------------------------------------------------------------- cluster
if [ ! -f "$DATA/PG_VERSION" ]; then
    if [ -e "$DATA" ]; then
        say "removing incomplete cluster directory $DATA (no PG_VERSION)"
        rm -rf --one-file-system "$DATA"
    fi
    say "initdb $DATA ($("$BIN/postgres" --version))"
    install -d -o postgres -g postgres -m 0700 "$DATA"
    as_pg "$BIN/initdb" -D "$DATA" -U postgres -E UTF8 --locale=C.UTF-8 \
        --auth-local=peer --auth-host=scram-sha-256 >/dev/null
fi

# proc_is_postgres PID: alive (not a zombie) "postgres" process of this cluster
# (a postmaster's working directory is its data directory).
proc_is_postgres() {
    local pid=$1 stat
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    [[ "$stat" == "$pid (postgres) "* ]] || return 1
    [[ "${stat#*) }" != Z* && "${stat#*) }" != X* ]] || return 1
    [ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" = "$DATA" ]
}

if ! "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT"; then
    pm_pid=$(head -n 1 "$DATA/postmaster.pid" 2>/dev/null || true)
    if proc_is_postgres "$pm_pid"; then
        # Our postmaster is alive but not ready (starting up or recovering).
        say "postgres (pid $pm_pid) is starting; waiting"
    else
        # After SIGKILL, postmaster.pid and the socket lock file remain. Postgres
        # ignores them only if their PID is gone; a reused PID blocks start-up.
        for f in "$DATA/postmaster.pid" "$SOCKDIR/.s.PGSQL.$PORT.lock"; do
            [ -e "$f" ] || continue
            pid=$(head -n 1 "$f" 2>/dev/null || true)
            if ! proc_is_postgres "${pid#-}"; then
                echo "    removing stale $f (pid ${pid:-?} is gone or not postgres)" >&2
                rm -f "$f"
            fi
        done
        say "starting postgres on 127.0.0.1:$PORT (data $DATA, log $LOG)"
        touch "$LOG"
        chown postgres:postgres "$LOG"
        if ! as_pg "$BIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 \
                -o "-p $PORT -k $SOCKDIR -c listen_addresses=127.0.0.1" start >/dev/null; then
            echo "---- last 20 lines of $LOG ----" >&2
            tail -n 20 "$LOG" >&2 || true
            die "postgres did not start (is port $PORT taken by something else?)"
        fi
    fi
    for _ in $(seq 1 120); do
        "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" && break
        sleep 0.5
    done
    "$BIN/pg_isready" -q -h 127.0.0.1 -p "$PORT" || {
        tail -n 20 "$LOG" >&2 || true
        die "postgres on 127.0.0.1:$PORT does not accept connections"
    }
fi

# ------------------------------------------------------------- role and database
if ! agentbox_login_ok; then
    say "creating role and database agentbox"
    as_pg "$BIN/psql" -X -q -h "$SOCKDIR" -p "$PORT" -d postgres -v ON_ERROR_STOP=1 >/dev/null <<'SQL'
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'agentbox') THEN
    CREATE ROLE agentbox LOGIN CREATEDB PASSWORD 'agentbox';
  ELSE
    ALTER ROLE agentbox LOGIN PASSWORD 'agentbox';
  END IF;
END
$$;
SELECT 'CREATE DATABASE agentbox OWNER agentbox'
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'agentbox')\gexec
SQL
    agentbox_login_ok || die "cannot log in as agentbox on 127.0.0.1:$PORT"
fi

say "postgres ready on 127.0.0.1:$PORT"
echo "$URL"
