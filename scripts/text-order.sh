#!/usr/bin/env bash
# Remake scripts/text-order.txt, the functions the linker places first in the `chorus` binary
# (see build.rs): run a chorus binary's server under valgrind's callgrind through a few
# workloads, each in its own server (y-websocket documents first, then publish/subscribe
# fan-out over WebSocket sessions, then chat), and list every function it ran, in that order,
# by its symbol name in the binary. Workloads are small: callgrind only has to see each
# function once.
#
# Usage: scripts/text-order.sh [BIN [OUT]]   (default: target/dist/chorus and
#        scripts/text-order.txt; build BIN first with `cargo build --profile dist --bin chorus`,
#        then build again to link with the list)
# Needs: valgrind, nm. Takes a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${1:-target/dist/chorus}
out=${2:-scripts/text-order.txt}
port=27870
[ -x "$bin" ] || { echo "text-order.sh: $bin is missing (cargo build --profile dist --bin chorus)" >&2; exit 1; }
command -v valgrind >/dev/null || { echo "text-order.sh: valgrind is missing (apt-get install valgrind)" >&2; exit 1; }

tmp=$(mktemp -d)
server_pid=""
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

# profile NAME BENCH-ARGS...: a fresh server under callgrind, one bench run against it, then
# SIGTERM (so shutdown is profiled too) and its callgrind output in $tmp/NAME.out.
profile() {
  local name=$1; shift
  local data="$tmp/$name-data"
  valgrind --tool=callgrind --demangle=no --dump-instr=no --callgrind-out-file="$tmp/$name.out" \
    "$bin" serve --data-dir "$data" --listen "127.0.0.1:$port" --quic-listen "127.0.0.1:$((port + 1))" \
    >"$tmp/$name.log" 2>&1 &
  server_pid=$!
  # The port opens before the data dir (and its token secret) is made.
  for _ in $(seq 240); do
    [ -f "$data/token-secret" ] && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.5
  done
  sleep 2
  echo "text-order.sh: $name: chorus bench $*" >&2
  "$bin" bench "$@" --url "ws://127.0.0.1:$port/ws" --data-dir "$data" --threads 1 --json \
    >"$tmp/$name.json" 2>"$tmp/$name.err" || { cat "$tmp/$name.err" >&2; exit 1; }
  kill -TERM "$server_pid"
  wait "$server_pid" || true
  server_pid=""
}

profile yjs yjs --clients 5,40 --writers 2 --rate 5 --duration 5 --warmup 1
profile fanout fanout -s 20 -p 2 -r 50 -d 5 --warmup 1
profile chat chat -c 4 -d 5 --warmup 1

# Function names (mangled) in the order callgrind first lists them, kept if the binary
# defines them as text symbols.
nm --defined-only "$bin" | awk '$2 ~ /^[tTwW]$/ { print $3 }' | sort -u >"$tmp/defined"
cat "$tmp/yjs.out" "$tmp/fanout.out" "$tmp/chat.out" \
  | sed -n 's/^c\{0,1\}fn=([0-9]*) \(.*\)$/\1/p' \
  | awk '!seen[$0]++' \
  | awk 'NR == FNR { defined[$0] = 1; next } defined[$0]' "$tmp/defined" - >"$out"
echo "text-order.sh: $(wc -l <"$out") functions in $out" >&2
