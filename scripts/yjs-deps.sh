#!/usr/bin/env bash
# Install the npm packages of the y-websocket compatibility tests (tests/yjs) from its
# package-lock.json, when node_modules is missing or older than the lock file.
set -euo pipefail
cd "$(dirname "$0")/../tests/yjs"

# A fresh Debian machine may lack them: install them where we may (root with apt-get).
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "yjs-deps: installing Node.js and npm (apt-get)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
  fi
fi
for tool in node npm; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "yjs-deps: '$tool' is not installed; the y-websocket tests (tests/yjs) need Node.js 18+ and npm" >&2
    echo "yjs-deps: on Debian: apt-get install -y nodejs npm" >&2
    exit 1
  fi
done

# npm writes node_modules/.package-lock.json on every install: its age is the install's.
stamp=node_modules/.package-lock.json
if [ -f "$stamp" ] && [ ! "package-lock.json" -nt "$stamp" ]; then
  echo "yjs-deps: tests/yjs/node_modules is up to date"
  exit 0
fi

echo "yjs-deps: installing tests/yjs packages (npm ci)"
npm ci --no-audit --no-fund
touch "$stamp"
