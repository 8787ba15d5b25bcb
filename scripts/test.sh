#!/usr/bin/env bash
# The whole Chorus test suite: unit, property and integration tests of every workspace crate.
# Later suites (JS clients, headless Chromium, NATS/PostgreSQL) are added here, installing what
# they need from the project's own files.
set -euo pipefail
cd "$(dirname "$0")/.."

# Local services the scale-out tests will use; say clearly what is missing.
# Format: name host port required(yes/no)
services=(
  "PostgreSQL 127.0.0.1 5432 no"
  "NATS 127.0.0.1 4222 no"
)
missing_required=0
for entry in "${services[@]}"; do
  read -r name host port required <<<"$entry"
  if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
    echo "service: $name on $host:$port is up"
  elif [ "$required" = yes ]; then
    echo "service: $name on $host:$port is MISSING and the tests need it" >&2
    missing_required=1
  else
    echo "service: $name on $host:$port is missing (no test needs it yet)"
  fi
done
[ "$missing_required" = 0 ] || exit 1

# Many connections per test: make room for their file descriptors.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true

scripts/yjs-deps.sh
scripts/browser-deps.sh
cargo test --workspace
