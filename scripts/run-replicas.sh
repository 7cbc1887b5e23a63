#!/usr/bin/env bash
# Serve one deployment as N replicas behind one address (`make run REPLICAS=N`).
#
#   scripts/run-replicas.sh N
#
# Every replica is an `agentbox serve --reuse-port` on $HOST:$PORT: the kernel (SO_REUSEPORT) spreads
# incoming connections between them, and a replica that stops or dies drops out of the spread on its
# own, so there is no proxy to run. They share a data directory ($DATA_DIR/replicas: the token
# secret, the workspaces' disks) and a PostgreSQL database ($DATABASE, on the cluster of
# scripts/start-postgres.sh) and a Docker network ($NETWORK_replicas), all their own: a deployment of
# its own beside the one-server `make run` (whose SQLite and disks are in $DATA_DIR and whose network
# is $NETWORK), which they never take for theirs (a network's firewall belongs to one deployment). They are named
# r1..rN (WORKSPACE_REPLICA_ID). r1 starts first and migrates the database; the others follow.
# Ctrl-C (or SIGTERM) stops them all; the last one out removes the warm pool. Each replica's log is
# $DATA_DIR/replicas/replica-rK.log.
#
# Environment (the Makefile sets it): DATA_DIR, HOST, PORT, NETWORK, API_KEY, and optionally
# DATABASE (default agentbox_replicas) and any WORKSPACE_* setting, passed on to every replica.
set -euo pipefail

COUNT=${1:?usage: $0 REPLICAS}
[[ "$COUNT" =~ ^[1-9][0-9]*$ ]] || { echo "error: REPLICAS must be a positive number, not '$COUNT'" >&2; exit 2; }
: "${DATA_DIR:?}" "${HOST:?}" "${PORT:?}" "${API_KEY:?}"
DATABASE=${DATABASE:-agentbox_replicas}
[[ "$DATABASE" =~ ^[a-z_][a-z0-9_]*$ ]] || { echo "error: DATABASE must be a plain name, not '$DATABASE'" >&2; exit 2; }
HERE=$(cd "$(dirname "$0")/.." && pwd)
DATA_DIR="$DATA_DIR/replicas"
NETWORK="${NETWORK:+${NETWORK}_replicas}"
mkdir -p "$DATA_DIR" && chmod 700 "$DATA_DIR"
PYTHON="$HERE/.venv/bin/python"

echo "==> PostgreSQL (scripts/start-postgres.sh), database $DATABASE" >&2
admin=$(bash "$HERE/scripts/start-postgres.sh")
url=$("$PYTHON" - "$admin" "$DATABASE" <<'PY'
import sys
import sqlalchemy

admin, name = sys.argv[1], sys.argv[2]
engine = sqlalchemy.create_engine(admin, isolation_level="AUTOCOMMIT")
with engine.connect() as connection:
    if not connection.scalar(sqlalchemy.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}):
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
engine.dispose()
print(admin.rsplit("/", 1)[0] + "/" + name)
PY
)

pids=()
stop() {
    trap - INT TERM EXIT
    echo "==> stopping ${#pids[@]} replica(s)" >&2
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap 'stop; exit 0' INT TERM
trap stop EXIT

# With the key (`leader` and `replicas` are shown only to callers with one), on stdin: not in `ps`.
health() {
    curl -fsS --max-time 2 -H @- "http://$HOST:$PORT/api/v1/health" 2>/dev/null <<<"Authorization: Bearer $API_KEY"
}

# The egress proxy (egress by name) is one per network, on its gateway: replicas sharing a network would each
# start their own there. Until one replica serves it for all, it is off here, and a workspace asking for
# name rules is refused (400); plain allow lists still work, pinned by address.
start_replica() {
    local n=$1
    ENABLE_AGENT_WORKSPACES=true WORKSPACE_DATA_DIR="$DATA_DIR" WORKSPACE_NETWORK_NAME="${NETWORK:-}" \
        WORKSPACE_EGRESS_PROXY=false \
        WORKSPACE_API_KEYS="admin:$API_KEY" WORKSPACE_DATABASE_URL="$url" WORKSPACE_REPLICA_ID="r$n" \
        "$HERE/.venv/bin/agentbox" serve --host "$HOST" --port "$PORT" --reuse-port \
        >>"$DATA_DIR/replica-r$n.log" 2>&1 &
    pids+=($!)
}

start_replica 1
for _ in $(seq 600); do
    health >/dev/null && break
    kill -0 "${pids[0]}" 2>/dev/null || { tail -n 30 "$DATA_DIR/replica-r1.log" >&2; exit 1; }
    sleep 0.2
done
for n in $(seq 2 "$COUNT"); do start_replica "$n"; done
# Up when the replicas see each other (any of them answers: the kernel picks).
seen=""
for _ in $(seq 600); do
    seen=$(health | "$PYTHON" -c 'import json, sys; h = json.load(sys.stdin); print(h["leader"], len(h["replicas"]))' \
        2>/dev/null || echo "none 0")
    [ "${seen#* }" -ge "$COUNT" ] && break
    sleep 0.2
done
echo "==> $COUNT replicas (r1..r$COUNT) on http://$HOST:$PORT, ${seen#* } seen alive, led by ${seen% *}" >&2
echo "    logs: $DATA_DIR/replica-r*.log; Ctrl-C stops them all" >&2
# Until Ctrl-C; a replica that exits is said, and the others go on serving (that is the point).
left=$COUNT
while [ "$left" -gt 0 ]; do
    status=0
    wait -n || status=$?
    left=$((left - 1))
    echo "==> a replica exited (status $status); $left left: see $DATA_DIR/replica-r*.log" >&2
done
