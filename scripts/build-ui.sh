#!/usr/bin/env bash
# The dashboard's front-end libraries (xterm.js), from the npm registry into the package's ui/vendor.
set -euo pipefail
cd "$(dirname "$0")/.."
VENDOR=src/agentbox/ui/vendor
if ! command -v npm >/dev/null; then
    echo "warning: npm is not installed: the dashboard works without its terminal; install Node.js 18+ and run make ui" >&2
    exit 0
fi
echo "==> the dashboard's libraries (npm ci in ui/)"
npm ci --prefix ui --no-audit --no-fund --loglevel=error
mkdir -p "$VENDOR"
modules=ui/node_modules/@xterm
cp "$modules/xterm/lib/xterm.mjs" "$modules/xterm/css/xterm.css" "$modules/addon-fit/lib/addon-fit.mjs" "$VENDOR/"
cp "$modules/xterm/LICENSE" "$VENDOR/xterm.LICENSE"
touch "$VENDOR/xterm.mjs"
