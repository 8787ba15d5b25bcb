# Shared by the scripts that install a test folder's npm packages (sourced, not run).

# Root with apt-get may install system packages on a fresh Debian machine.
can_apt() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; }

# Make sure Node.js and npm are there (installed with apt-get where we may), or fail clearly.
# $1: the log prefix, $2: who needs them.
require_node() {
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    if can_apt; then
      echo "$1: installing Node.js and npm (apt-get)"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
    fi
  fi
  for tool in node npm; do
    if ! command -v "$tool" >/dev/null 2>&1; then
      echo "$1: '$tool' is not installed; $2 need Node.js 18+ and npm" >&2
      echo "$1: on Debian: apt-get install -y nodejs npm" >&2
      exit 1
    fi
  done
}

# Install the current folder's packages from its package-lock.json, unless node_modules is
# newer than the lock file. $1: the log prefix, $2: the folder's name for the log.
npm_install() {
  # npm writes node_modules/.package-lock.json on every install: its age is the install's.
  local stamp=node_modules/.package-lock.json
  if [ -f "$stamp" ] && [ ! "package-lock.json" -nt "$stamp" ]; then
    echo "$1: $2/node_modules is up to date"
    return
  fi
  echo "$1: installing $2 packages (npm ci)"
  npm ci --no-audit --no-fund
  touch "$stamp"
}
