#!/usr/bin/env bash
# Install what the browser tests (tests/browser) need: Debian's Chromium at /usr/bin/chromium,
# and the npm packages of tests/browser from its package-lock.json (only when node_modules is
# missing or older than the lock file). Never downloads a browser build of its own.
set -euo pipefail
cd "$(dirname "$0")/../tests/browser"

can_apt() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; }

if [ ! -x /usr/bin/chromium ]; then
  if can_apt; then
    echo "browser-deps: installing Chromium (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq chromium >/dev/null
  fi
fi
if [ ! -x /usr/bin/chromium ]; then
  echo "browser-deps: /usr/bin/chromium is missing; the browser tests (tests/browser) need it" >&2
  echo "browser-deps: on Debian: apt-get install -y chromium" >&2
  exit 1
fi

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  if can_apt; then
    echo "browser-deps: installing Node.js and npm (apt-get)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
  fi
fi
for tool in node npm; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "browser-deps: '$tool' is not installed; the browser tests (tests/browser) need Node.js 18+ and npm" >&2
    echo "browser-deps: on Debian: apt-get install -y nodejs npm" >&2
    exit 1
  fi
done

# npm writes node_modules/.package-lock.json on every install: its age is the install's.
stamp=node_modules/.package-lock.json
if [ -f "$stamp" ] && [ ! "package-lock.json" -nt "$stamp" ]; then
  echo "browser-deps: tests/browser/node_modules is up to date"
  exit 0
fi

echo "browser-deps: installing tests/browser packages (npm ci)"
npm ci --no-audit --no-fund
touch "$stamp"
