#!/usr/bin/env bash
# The browser the dashboard's tests drive: Debian's Chromium (a test tool cannot download its own here).
set -euo pipefail
CHROMIUM=${AGENTBOX_CHROMIUM:-/usr/bin/chromium}
if [[ -x "$CHROMIUM" ]]; then
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "error: $CHROMIUM is missing and there is no apt-get: install Chromium and set AGENTBOX_CHROMIUM to it" >&2
    exit 1
fi
echo "==> installing Debian's chromium for the dashboard's browser tests (a minute or two)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
"$CHROMIUM" --version
