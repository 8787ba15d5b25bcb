#!/usr/bin/env bash
# Install the npm packages of the y-websocket compatibility tests (tests/yjs) from its
# package-lock.json, when node_modules is missing or older than the lock file.
set -euo pipefail
source "$(dirname "$0")/npm-lib.sh"
cd "$(dirname "$0")/../tests/yjs"

require_node yjs-deps "the y-websocket tests (tests/yjs)"
npm_install yjs-deps tests/yjs
