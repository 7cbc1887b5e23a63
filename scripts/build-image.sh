#!/usr/bin/env bash
# Build the agentbox workspace image without any container registry:
# debootstrap a Debian bookworm minbase root filesystem and `docker import` it.
#
#   scripts/build-image.sh [IMAGE]
#
# IMAGE defaults to $WORKSPACE_IMAGE, else agentbox/workspace:bookworm.
# Does nothing (fast) if the image is already present.
#
# Environment:
#   AGENTBOX_DEBIAN_MIRROR  mirror for debootstrap (default http://deb.debian.org/debian)
#   AGENTBOX_ROOTFS_CACHE   development shortcut: a directory holding an already
#                           debootstrapped bookworm rootfs to copy instead of
#                           running debootstrap (never used unless set)
set -euo pipefail

export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:${PATH}"

IMAGE=${1:-${WORKSPACE_IMAGE:-agentbox/workspace:bookworm}}
SUITE=bookworm
MIRROR=${AGENTBOX_DEBIAN_MIRROR:-http://deb.debian.org/debian}
INCLUDE=python3,python-is-python3,git,ca-certificates,curl,bash,procps,ripgrep
# Changing this script changes the recipe label, so an image from an older recipe is rebuilt.
RECIPE=$(sha256sum "$0" | cut -c1-12)
LOCK=/var/tmp/agentbox-build-image.lock

say() { echo "==> $*"; }
die() { echo "error: $*" >&2; exit 1; }

# ------------------------------------------------------------- fast path
if labels=$(docker image inspect --format '{{index .Config.Labels "org.agentbox.image"}} {{index .Config.Labels "org.agentbox.recipe"}}' "$IMAGE" 2>/dev/null); then
    if [ "$labels" = "workspace $RECIPE" ] || [ "${labels%% *}" != "workspace" ]; then
        say "image $IMAGE present"
        exit 0
    fi
    say "image $IMAGE was built by an older recipe (${labels#* }); rebuilding it ($RECIPE)"
fi
err=$(docker version 2>&1 >/dev/null) || true
if ! docker version --format '{{.Server.Version}}' >/dev/null 2>&1; then
    echo "$err" >&2
    die "cannot reach the Docker daemon (error above); start it with scripts/setup-host.sh (as root)"
fi

# ------------------------------------------------------------- slow path
[ "$(id -u)" -eq 0 ] || die "building $IMAGE needs root (debootstrap, chroot); run as root"
for cmd in debootstrap chroot tar flock; do
    command -v "$cmd" >/dev/null 2>&1 || die "'$cmd' not found; run scripts/setup-host.sh first"
done

# One build at a time; a concurrent build of the same image makes ours unnecessary.
exec 9>"$LOCK"
if ! flock -n 9; then
    say "another build-image.sh is running; waiting for it"
    flock 9
    if docker image inspect "$IMAGE" >/dev/null 2>&1; then
        say "image $IMAGE present"
        exit 0
    fi
fi

start=$SECONDS
work=$(mktemp -d /var/tmp/agentbox-image.XXXXXX)
rootfs=$work/rootfs
log=$work/debootstrap.log
bootstrap_pid=

cleanup() {
    local rc=$? mnt
    trap - EXIT INT TERM HUP
    if [ -n "$bootstrap_pid" ] && kill -0 "$bootstrap_pid" 2>/dev/null; then
        # debootstrap runs in its own process group: stop it and its dpkg/chroot children.
        echo "    stopping debootstrap (process group $bootstrap_pid)" >&2
        kill -TERM -- "-$bootstrap_pid" 2>/dev/null || true
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            kill -0 -- "-$bootstrap_pid" 2>/dev/null || break
            sleep 0.5
        done
        kill -KILL -- "-$bootstrap_pid" 2>/dev/null || true
        wait "$bootstrap_pid" 2>/dev/null || true
    fi
    # debootstrap mounts /proc and /sys inside the target; never rm -rf through a mount.
    if [ -d "$work" ]; then
        while read -r mnt; do
            umount -l "$mnt" 2>/dev/null || true
        done < <(awk -v w="$work/" 'index($2, w) == 1 { print $2 }' /proc/self/mounts | sort -r)
        rm -rf --one-file-system "$work"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

say "building $IMAGE (no registry: debootstrap $SUITE + docker import); work dir $work"

if [ -n "${AGENTBOX_ROOTFS_CACHE:-}" ]; then
    [ -x "$AGENTBOX_ROOTFS_CACHE/bin/bash" ] || die "AGENTBOX_ROOTFS_CACHE=$AGENTBOX_ROOTFS_CACHE does not look like a root filesystem"
    say "copying cached rootfs from $AGENTBOX_ROOTFS_CACHE (AGENTBOX_ROOTFS_CACHE; development only)"
    mkdir -p "$rootfs"
    cp -a "$AGENTBOX_ROOTFS_CACHE/." "$rootfs/"
    for f in usr/bin/python3 usr/bin/git usr/bin/ps; do
        [ -e "$rootfs/$f" ] || echo "    warning: cached rootfs lacks /$f" >&2
    done
else
    say "debootstrap --variant=minbase --include=$INCLUDE $SUITE ($MIRROR); about a minute"
    t0=$SECONDS
    # setsid: own process group (it does not fork here: a background job of a
    # non-interactive shell is no group leader), so cleanup can stop all of it.
    setsid debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$rootfs" "$MIRROR" \
        >"$log" 2>&1 </dev/null &
    bootstrap_pid=$!
    next=$((SECONDS + 5))
    while kill -0 "$bootstrap_pid" 2>/dev/null; do
        if [ $SECONDS -ge $next ]; then
            last=$(tail -n 1 "$log" 2>/dev/null | tr -d '\r' | cut -c1-100)
            printf '   debootstrap: %3d s, last: %s\n' $((SECONDS - t0)) "$last"
            next=$((SECONDS + 5))
        fi
        sleep 1
    done
    if wait "$bootstrap_pid"; then rc=0; else rc=$?; fi
    bootstrap_pid=
    if [ "$rc" -ne 0 ]; then
        echo "---- last 30 lines of the debootstrap log ----" >&2
        tail -n 30 "$log" >&2 || true
        [ -f "$rootfs/debootstrap/debootstrap.log" ] && {
            echo "---- last 30 lines of $rootfs/debootstrap/debootstrap.log ----" >&2
            tail -n 30 "$rootfs/debootstrap/debootstrap.log" >&2
        }
        die "debootstrap failed (exit $rc); is $MIRROR reachable?"
    fi
    say "debootstrap done in $((SECONDS - t0)) s"
fi

say "configuring rootfs: user agent (1000:1000), /workspace, removing caches and docs"
chroot "$rootfs" /usr/sbin/groupadd --gid 1000 agent
chroot "$rootfs" /usr/sbin/useradd --uid 1000 --gid 1000 --home-dir /home/agent \
    --create-home --shell /bin/bash agent
install -d -o 1000 -g 1000 -m 0755 "$rootfs/workspace"
rm -rf "$rootfs"/var/lib/apt/lists/* \
       "$rootfs"/var/cache/apt/*.bin \
       "$rootfs"/var/cache/apt/archives/*.deb \
       "$rootfs"/usr/share/doc/* \
       "$rootfs"/usr/share/man/* \
       "$rootfs"/usr/share/locale/*
mkdir -p "$rootfs/var/lib/apt/lists/partial"

say "importing into docker as $IMAGE"
t0=$SECONDS
tar -C "$rootfs" --numeric-owner -c . |
    docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV HOME=/home/agent' \
        --change 'WORKDIR /workspace' \
        --change 'LABEL org.agentbox.image=workspace' \
        --change "LABEL org.agentbox.recipe=$RECIPE" \
        - "$IMAGE" >/dev/null
size=$(docker image inspect --format '{{.Size}}' "$IMAGE")
say "imported $IMAGE in $((SECONDS - t0)) s, size $((size / 1000000)) MB"
say "done in $((SECONDS - start)) s"
