#!/usr/bin/env bash
# E2B's `base` template as an agentbox image: the workspace image with E2B's user (`user`,
# uid 1000, group `user`, HOME and working directory /home/user). Everything else, the
# hardening included, is the workspace image's: no sudo, no setuid escalation.
#
# Usage: scripts/build-e2b-image.sh [WORKSPACE_IMAGE] [E2B_IMAGE]
set -euo pipefail

BASE=${1:-${WORKSPACE_IMAGE:-agentbox/workspace:bookworm}}
IMAGE=${2:-${WORKSPACE_E2B_BASE_IMAGE:-agentbox/e2b-base:bookworm}}
RECIPE=$(sha256sum "$0" | cut -c1-12)

say() { echo "==> $*"; }
die() { echo "error: $*" >&2; exit 1; }

base_id=$(docker image inspect --format '{{.Id}}' "$BASE" 2>/dev/null) ||
    die "image $BASE is missing: build it first (make image)"
if [ "$(docker image inspect --format '{{index .Config.Labels "org.agentbox.recipe"}} {{index .Config.Labels "org.agentbox.base"}}' "$IMAGE" 2>/dev/null)" = "$RECIPE $base_id" ]; then
    say "image $IMAGE present"
    exit 0
fi

say "deriving $IMAGE (E2B's base template) from $BASE"
name=agentbox-e2b-image-$$
trap 'docker rm -f "$name" >/dev/null 2>&1 || true' EXIT
# runc and root only for these renames, in a container with no network; workspaces run it under
# gVisor as uid 1000 like every other image.
docker run --name "$name" --runtime runc --user 0 --network none "$BASE" /bin/sh -c '
    set -e
    groupmod --new-name user agent
    usermod --login user --home /home/user --move-home agent
    test "$(id -u user):$(id -g user)" = 1000:1000' >/dev/null
docker commit \
    --change 'ENV HOME=/home/user' \
    --change 'WORKDIR /home/user' \
    --change 'LABEL org.agentbox.image=e2b-base' \
    --change "LABEL org.agentbox.recipe=$RECIPE" \
    --change "LABEL org.agentbox.base=$base_id" \
    "$name" "$IMAGE" >/dev/null
say "built $IMAGE"
