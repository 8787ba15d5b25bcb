#!/usr/bin/env bash
# Install what the browser tests (tests/browser) need: Debian's Chromium at /usr/bin/chromium,
# and the npm packages of tests/browser from its package-lock.json (only when node_modules is
# missing or older than the lock file). Never downloads a browser build of its own.
set -euo pipefail
source "$(dirname "$0")/npm-lib.sh"
cd "$(dirname "$0")/../tests/browser"

if [ ! -x /usr/bin/chromium ] && can_apt; then
  echo "browser-deps: installing Chromium (apt-get)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq chromium >/dev/null
fi
if [ ! -x /usr/bin/chromium ]; then
  echo "browser-deps: /usr/bin/chromium is missing; the browser tests (tests/browser) need it" >&2
  echo "browser-deps: on Debian: apt-get install -y chromium" >&2
  exit 1
fi

require_node browser-deps "the browser tests (tests/browser)"
npm_install browser-deps tests/browser
