#!/usr/bin/env bash
# Chorus against NATS over WebSocket, with the same load tool (`chorus bench`), the same ladder
# and the same pinning, and a dated Markdown table in docs/bench/. See --help.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: benches/compare.sh [OPTIONS]

Fan-out of one channel (1 publisher, 100-byte messages) at S = 100 and S = 1000 subscribers,
then N idle WebSocket connections (on a freshly started server), against:
  chorus  `chorus serve` (full protocol with tokens, rate limit lifted, fresh temp data dir)
  nats    nats-server's websocket listener (its own instance on its own ports, defaults otherwise)
Each server runs alone, pinned to one core (taskset -c 0); the tool runs pinned to the other
(taskset -c 1 chorus bench … --threads 1), both at a raised priority (nice -10, as root, each
in a session of its own whose autogroup gets it too) so other work on a shared machine disturbs
them less. Each ladder step is a 1 s warm-up and a 3 s measured
phase; saturation is the highest step with nothing lost, no duplicates and p99 <= 50 ms.
Writes docs/bench/YYYY-MM-DD-fanout.md (table, machine notes, exact commands) and the raw
reports next to it (.jsonl).

Installs nothing. Needs: nats-server (Debian: apt-get install nats-server), taskset, jq, cargo
(unless --chorus-bin). Waits for a quiet machine first (no rustc running and the CPUs at least
85% idle over 5 s), up to --wait-max, notes what else ran during every bench (other processes'
CPU time; how long the server's threads waited for its core) and runs a disturbed bench again.

Options:
  --out FILE             Markdown file [default: docs/bench/<today>-fanout.md]
  --subscribers "LIST"   Subscriber counts [default: "100 1000"]
  --ladder S=SPEC        Ladder for S subscribers (repeatable) [default: 100=10k*1.25,
                         1000=200*1.25, other S: <200000/S>*1.25]
  --size BYTES           Message size [default: 100]
  --duration SECS        Measured seconds per step [default: 3]
  --warmup SECS          Warm-up seconds per step [default: 1]
  --connections N        Idle connections for the memory test, 0 to skip [default: 10000]
  --servers "LIST"       Which servers [default: "chorus nats"]
  --chorus-bin PATH      Use this chorus binary (server and tool) instead of building
                         target/dist/chorus with `cargo build --profile dist`
  --note TEXT            A line for the machine notes, e.g. how --chorus-bin was built
                         (repeatable)
  --nats-server PATH     nats-server binary [default: from PATH, or /usr/sbin/nats-server]
  --server-core N        Core of the servers [default: 0]
  --tool-core N          Core of the tool [default: 1]
  --chorus-port P        HTTP/WebSocket port of chorus (QUIC on P+1) [default: 27700]
  --nats-port P          NATS client port [default: 24222]
  --nats-ws-port P       NATS websocket port [default: 28080]
  --wait-max SECS        Longest wait, in all, for a quiet machine (polled every minute)
                         [default: 1200]
  --busy-max PCT         Run a bench again (after waiting for quiet) when other processes used
                         more than PCT% of one core during it [default: 50]
  --nice N               Niceness of the servers and the tool [default: -10; 0 to leave it]
  --retries N            At most this many re-runs per bench [default: 2]
  --no-wait              Do not wait for a quiet machine, and re-run nothing
  --keep                 Keep the temp dir (server logs, data dir, raw output)
  -h, --help             This help
EOF
}

cd "$(dirname "$0")/.."

out="docs/bench/$(date +%F)-fanout.md"
subscribers="100 1000"
declare -A ladders=([100]="10k*1.25" [1000]="200*1.25")
size=100
duration=3
warmup=1
connections=10000
servers="chorus nats"
chorus_bin=""
nats_bin=""
server_core=0
tool_core=1
chorus_port=27700
nats_port=24222
nats_ws_port=28080
wait_max=1200
busy_max=50
nice_level=-10
retries=2
wait_quiet=1
keep=0
notes=()

need_value() { [ $# -ge 2 ] || { echo "compare.sh: $1 needs a value" >&2; exit 2; }; }
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --out) need_value "$@"; out=$2; shift 2 ;;
    --subscribers) need_value "$@"; subscribers=$2; shift 2 ;;
    --ladder) need_value "$@"; ladders[${2%%=*}]=${2#*=}; shift 2 ;;
    --size) need_value "$@"; size=$2; shift 2 ;;
    --duration) need_value "$@"; duration=$2; shift 2 ;;
    --warmup) need_value "$@"; warmup=$2; shift 2 ;;
    --connections) need_value "$@"; connections=$2; shift 2 ;;
    --servers) need_value "$@"; servers=$2; shift 2 ;;
    --chorus-bin) need_value "$@"; chorus_bin=$2; shift 2 ;;
    --note) need_value "$@"; notes+=("$2"); shift 2 ;;
    --nats-server) need_value "$@"; nats_bin=$2; shift 2 ;;
    --server-core) need_value "$@"; server_core=$2; shift 2 ;;
    --tool-core) need_value "$@"; tool_core=$2; shift 2 ;;
    --chorus-port) need_value "$@"; chorus_port=$2; shift 2 ;;
    --nats-port) need_value "$@"; nats_port=$2; shift 2 ;;
    --nats-ws-port) need_value "$@"; nats_ws_port=$2; shift 2 ;;
    --wait-max) need_value "$@"; wait_max=$2; shift 2 ;;
    --busy-max) need_value "$@"; busy_max=$2; shift 2 ;;
    --nice) need_value "$@"; nice_level=$2; shift 2 ;;
    --retries) need_value "$@"; retries=$2; shift 2 ;;
    --no-wait) wait_quiet=0; shift ;;
    --keep) keep=1; shift ;;
    *) echo "compare.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

log() { echo "compare: $*" >&2; }
die() { echo "compare.sh: $*" >&2; exit 1; }
source "$(dirname "$0")/machine.sh"

# --- what is needed --------------------------------------------------------------------------
for cmd in taskset jq; do
  command -v "$cmd" >/dev/null || die "$cmd is missing (Debian: apt-get install $([ "$cmd" = taskset ] && echo util-linux || echo "$cmd"))"
done
if [[ " $servers " == *" nats "* ]]; then
  if [ -z "$nats_bin" ]; then
    nats_bin=$(command -v nats-server || true)
    [ -n "$nats_bin" ] || { [ -x /usr/sbin/nats-server ] && nats_bin=/usr/sbin/nats-server; }
  fi
  [ -n "$nats_bin" ] && [ -x "$nats_bin" ] ||
    die "nats-server is not installed: apt-get install nats-server (or pass --nats-server PATH, or --servers chorus)"
fi
check_cores
chorus_binary
fanout_help=$("$chorus_bin" bench fanout --help)
[[ $fanout_help == *--target* ]] || die "$chorus_bin has no \`bench fanout --target\`: rebuild it"

for port in $chorus_port $nats_port $nats_ws_port; do
  ! port_busy "$port" || die "port $port is in use (pick others: --chorus-port, --nats-port, --nats-ws-port)"
done

nice_note="nice $nice_level, each in a session of its own whose scheduling group has that niceness too (autogroup)"
if [ -n "$(nice -n "$nice_level" true 2>&1)" ]; then
  nice_note="nice $nice_level not permitted: default priority"
  nice_level=0
fi
set_prio

# Both servers and the tool inherit the highest open-file limit allowed.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# --- a quiet machine ---------------------------------------------------------------------------
wait_for_quiet
quiet_note="waited ${waited}s for no rustc and idle CPUs; ${idle}% idle over 5 s just before"
[ "$(rustc_count)" -eq 0 ] && [ "$idle" -ge 85 ] ||
  quiet_note="still busy after waiting ${waited}s (CPUs ${idle}% idle): figures may be low"
[ "$wait_quiet" = 1 ] || quiet_note="quiet machine not waited for (--no-wait)"

# --- machine notes -----------------------------------------------------------------------------
cpu_model=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || echo unknown)
kernel=$(uname -srm)
load_before=$(loadavg)
rustc_before=$(rustc_count)
started=$(date '+%Y-%m-%d %H:%M:%S %Z')
chorus_version=$("$chorus_bin" version 2>/dev/null || echo unknown)
nats_version=$([ -n "$nats_bin" ] && "$nats_bin" --version 2>/dev/null || echo "-")

tmp=$(mktemp -d /tmp/chorus-compare.XXXXXX)
jsonl="${out%.md}.jsonl"
mkdir -p "$(dirname "$out")"
: >"$tmp/reports.jsonl"
: >"$tmp/commands"
: >"$tmp/loads"
server_pid=""
sampler_pid=""
chorus_data=""
starts=0
cleanup() {
  if [ -n "$sampler_pid" ]; then kill "$sampler_pid" 2>/dev/null || true; fi
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  if [ "$keep" = 1 ]; then log "kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT

wait_port() {
  for _ in $(seq 100); do port_busy "$1" && return 0; sleep 0.1; done
  die "nothing listens on port $1 (see $tmp/*.log; --keep keeps them)"
}

start_server() {
  case "$1" in
    chorus)
      starts=$((starts + 1))
      chorus_data="$tmp/chorus-data-$starts"
      mkdir -p "$chorus_data"
      local cmd="CHORUS_RATE_PER_SEC=1000000 CHORUS_RATE_BURST=1000000 CHORUS_MAX_CONNECTIONS=200000 nice -n $nice_level taskset -c $server_core $chorus_bin serve --data-dir $chorus_data --listen 127.0.0.1:$chorus_port --quic-listen 127.0.0.1:$((chorus_port + 1))"
      CHORUS_RATE_PER_SEC=1000000 CHORUS_RATE_BURST=1000000 CHORUS_MAX_CONNECTIONS=200000 \
        "${prio[@]}" taskset -c "$server_core" "$chorus_bin" serve --data-dir "$chorus_data" \
        --listen "127.0.0.1:$chorus_port" --quic-listen "127.0.0.1:$((chorus_port + 1))" \
        >>"$tmp/chorus.log" 2>&1 &
      server_pid=$!
      wait_port "$chorus_port"
      ;;
    nats)
      cat >"$tmp/nats.conf" <<EOF
listen: "127.0.0.1:$nats_port"
websocket {
  listen: "127.0.0.1:$nats_ws_port"
  no_tls: true
}
EOF
      local cmd="nice -n $nice_level taskset -c $server_core $nats_bin -c $tmp/nats.conf   # nats.conf: listen 127.0.0.1:$nats_port; websocket { listen: \"127.0.0.1:$nats_ws_port\", no_tls: true }"
      "${prio[@]}" taskset -c "$server_core" "$nats_bin" -c "$tmp/nats.conf" >>"$tmp/nats.log" 2>&1 &
      server_pid=$!
      wait_port "$nats_ws_port"
      ;;
  esac
  echo "$cmd" >>"$tmp/commands"
  log "$1 running as pid $server_pid"
}

stop_server() {
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
}

# Run `chorus bench` pinned to the tool core; append its report (tagged) to reports.jsonl.
# Re-run it (after waiting for quiet) while other processes took more than --busy-max.
bench() {
  local attempt=1 busy_note=""
  while :; do
    bench_once "$@"
    if [ "$wait_quiet" = 0 ] || [ "$last_others_pct" -le "$busy_max" ] || [ "$attempt" -gt "$retries" ] ||
      [ "$waited" -ge "$wait_max" ]; then
      break
    fi
    busy_note+="attempt $attempt: other processes took ${last_others_pct}% of a core; "
    log "$1 $2: other processes took ${last_others_pct}% of a core: waiting for quiet, then again"
    attempt=$((attempt + 1))
    wait_for_quiet
    if [ "$2" = connections ]; then
      # Memory per connection needs a fresh server.
      stop_server
      start_server "$1"
    fi
  done
  [ -z "$busy_note" ] || echo "  ($busy_note""kept attempt $attempt)" >>"$tmp/loads"
  echo "$last_runq_pct $last_others_pct" >"$tmp/disturbed-$1-$2"
  echo "$last_report" >>"$tmp/reports.jsonl"
  echo "$last_command" >>"$tmp/commands"
}

bench_once() {
  local server=$1 tag=$2
  shift 2
  local target_args
  case "$server" in
    chorus) target_args=(--url "ws://127.0.0.1:$chorus_port/ws" --data-dir "$chorus_data") ;;
    nats) target_args=(--target nats --url "ws://127.0.0.1:$nats_ws_port") ;;
  esac
  local args=("$@" "${target_args[@]}" --server-pid "$server_pid" --threads 1 --json)
  last_command="nice -n $nice_level taskset -c $tool_core $chorus_bin bench$(printf ' %q' "${args[@]}")"
  log "$server $tag: chorus bench ${args[*]}"
  # Watch the machine once a second while the bench runs (on the tool's core).
  local samples="$tmp/load-$server-$tag"
  taskset -c "$tool_core" bash -c 'while :; do
      echo "$(cut -d" " -f1 /proc/loadavg) $(pgrep -c -x rustc || true)"; sleep 1; done' >"$samples" &
  sampler_pid=$!
  local t0 busy0 server0 children0 runq0
  t0=$(date +%s.%N) busy0=$(busy_ticks) server0=$(proc_ticks "$server_pid") children0=$(children_ticks)
  runq0=$(runq_ns "$server_pid")
  local report
  if report=$("${prio[@]}" taskset -c "$tool_core" "$chorus_bin" bench "${args[@]}" 2>"$tmp/bench.err"); then
    last_report=$(jq -c --arg server "$server" --arg tag "$tag" '{server: $server, tag: $tag, report: .}' \
      <<<"$report")
  else
    local why
    why=$(tail -3 "$tmp/bench.err" | tr '\n' ' ')
    log "$server $tag failed: $why"
    last_report=$(jq -nc --arg server "$server" --arg tag "$tag" --arg why "$why" \
      '{server: $server, tag: $tag, error: $why}')
  fi
  local wall busy server_ticks children runq
  wall=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')
  runq=$(($(runq_ns "$server_pid") - runq0))
  last_runq_pct=$(awk -v wall="$wall" -v runq="$runq" 'BEGIN { printf "%d", runq / 1e7 / wall }')
  busy=$(($(busy_ticks) - busy0)) server_ticks=$(($(proc_ticks "$server_pid") - server0))
  children=$(($(children_ticks) - children0))
  kill "$sampler_pid" 2>/dev/null || true
  wait "$sampler_pid" 2>/dev/null || true
  sampler_pid=""
  # What the rest of the machine used meanwhile: all busy CPU time less the server's and the tool's.
  last_others_pct=$(awk -v wall="$wall" -v others="$((busy - server_ticks - children))" \
    'BEGIN { printf "%d", (others > 0 ? others / wall : 0) }')
  awk -v name="$server $tag" -v wall="$wall" -v others="$((busy - server_ticks - children))" \
    -v runq_pct="$last_runq_pct" \
    'NR == 1 || $1 < lo { lo = $1 } $1 > hi { hi = $1 } $2 > rc { rc = $2 }
    END { o = others > 0 ? others / 100 : 0
          printf "%s (%.0f s): 1-min load %s to %s, at most %d rustc running; other processes used %.1f CPU-s (%.0f%% of one core); the server waited for its core %d%% of the time\n",
            name, wall, lo, hi, rc + 0, o, 100 * o / wall, runq_pct }' "$samples" >>"$tmp/loads"
}

ladder_for() {
  if [ -n "${ladders[$1]:-}" ]; then echo "${ladders[$1]}"; else echo "$((200000 / $1 > 0 ? 200000 / $1 : 1))*1.25"; fi
}

t0=$(date +%s)
for server in $servers; do
  start_server "$server"
  for s in $subscribers; do
    bench "$server" "fanout-$s" fanout -s "$s" -p 1 -b "$size" --ladder "$(ladder_for "$s")" \
      -d "$duration" --warmup "$warmup"
  done
  stop_server
  if [ "$connections" -gt 0 ]; then
    # A fresh server, so its RSS before is a baseline, not what the fan-out left behind.
    start_server "$server"
    bench "$server" "connections" connections -n "$connections" --hold 2
    stop_server
  fi
done
elapsed=$(($(date +%s) - t0))
load_after=$(loadavg)
cp "$tmp/reports.jsonl" "$jsonl"

# --- the table -----------------------------------------------------------------------------------
# One field of one report: get SERVER TAG JQ-FILTER.
get() {
  jq -r --arg s "$1" --arg t "$2" "select(.server == \$s and .tag == \$t) | $3" "$tmp/reports.jsonl" | head -1
}
# The saturation step (the one named in summary.saturation) of a fan-out report.
sat='(.report.summary.saturation.step) as $st | (.report.steps[] | select(.label == $st))'
ms='if . == null then "-" else (. / 1000 * 100 | round / 100 | tostring) end'
num='if . == null then "-" else (. | round | tostring | (if length > 3 then .[:-3] + "," + .[-3:] else . end) | (if length > 7 then .[:-7] + "," + .[-7:] else . end)) end'
name() { case "$1" in chorus) echo "chorus" ;; nats) echo "NATS (ws)" ;; esac; }
# How much else ran during a bench: the server's run-queue wait and other processes' CPU.
disturbed() {
  if [ -f "$tmp/disturbed-$1-$2" ]; then
    read -r runq others <"$tmp/disturbed-$1-$2"
    echo "server waited ${runq}%; others ${others}% of a core"
  else
    echo "-"
  fi
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0 && b > 0) printf "%.2f", a / b; else printf "-" }'; }

rustc_during=$(cat "$tmp"/load-* | awk '$2 > m { m = $2 } END { print m + 0 }')

{
  echo "# Fan-out and idle connections: chorus vs NATS over WebSocket ($(date +%F))"
  echo
  echo "Generated by \`benches/compare.sh\` in ${elapsed} s. Same load tool (\`chorus bench\`), same scenario code, same"
  echo "ladder for both servers; each server alone on core $server_core, the tool on core $tool_core (\`--threads 1\`)."
  echo "One channel, 1 publisher, ${size}-byte messages; ladder steps of ${warmup} s warm-up + ${duration} s measured;"
  echo "servers and tool at $nice_note."
  echo "Saturation = highest step with nothing lost, no duplicates, no errors and p99 <= 50 ms."
  echo "\"Disturbed\": during that bench, the share of time the server's threads waited for a CPU"
  echo "(/proc/<pid>/task/*/schedstat; its own threads competing count too), and other processes' CPU time."
  echo
  echo "## Machine"
  echo
  echo "- started: $started"
  echo "- \`nproc\`: $cores; CPU: $cpu_model; kernel: $kernel"
  echo "- load average before the run: $load_before ($rustc_before rustc running; $quiet_note)"
  echo "- during each bench (load and rustc sampled every second; the server and the tool themselves"
  echo "  add up to ~2 to the load; at most $rustc_during rustc seen in all). \"Other processes\" is the"
  echo "  machine's busy CPU time (/proc/stat) less the server's and the tool's:"
  sed 's/^/  - /' "$tmp/loads"
  echo "- load average after: $load_after"
  echo "- chorus: \`$chorus_version\`, $chorus_bin ($chorus_source)"
  for note in "${notes[@]}"; do echo "- $note"; done
  echo "- NATS: $nats_version, default settings but for the listeners (no TLS on the websocket)"
  echo
  echo "## Fan-out"
  echo
  echo "| server | S | saturation (published/s) | deliveries/s | p50 ms | p99 ms | server CPU | tool CPU | limit | next step | disturbed |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|"
  for s in $subscribers; do
    for server in $servers; do
      err=$(get "$server" "fanout-$s" '.error // empty')
      if [ -n "$err" ]; then
        echo "| $(name "$server") | $s | - | - | - | - | - | - | - | error: $err | $(disturbed "$server" "fanout-$s") |"
        continue
      fi
      if [ "$(get "$server" "fanout-$s" '.report.summary.saturation // "none"')" = none ]; then
        echo "| $(name "$server") | $s | none | - | - | - | - | - | - | $(get "$server" "fanout-$s" '.report.summary.first_failure | "\(.step): \(.why)"') | $(disturbed "$server" "fanout-$s") |"
        continue
      fi
      next=$(get "$server" "fanout-$s" '.report.summary.first_failure | if . == null then "every step passed (extend the ladder)" else "\(.step): \(.why)" end')
      echo "| $(name "$server") | $s | $(get "$server" "fanout-$s" ".report.summary.saturation.step") \
| $(get "$server" "fanout-$s" ".report.summary.saturation.deliveries_per_s | $num") \
| $(get "$server" "fanout-$s" "$sat | .latency.p50_us | $ms") \
| $(get "$server" "fanout-$s" "$sat | .latency.p99_us | $ms") \
| $(get "$server" "fanout-$s" "$sat | .usage.server.cpu_pct // null | if . == null then \"-\" else (round | tostring) + \"%\" end") \
| $(get "$server" "fanout-$s" "$sat | .usage.tool_cpu_pct | round | tostring")% \
| $(get "$server" "fanout-$s" ".report.summary.saturation.limit") \
| ${next//|//} | $(disturbed "$server" "fanout-$s") |"
    done
  done
  if [[ " $servers " == *" chorus "* && " $servers " == *" nats "* ]]; then
    echo
    echo "Ratio chorus / NATS at saturation (deliveries/s; > 1: chorus delivers more):"
    echo
    for s in $subscribers; do
      a=$(get chorus "fanout-$s" '.report.summary.saturation.deliveries_per_s // 0')
      b=$(get nats "fanout-$s" '.report.summary.saturation.deliveries_per_s // 0')
      pa=$(get chorus "fanout-$s" '.report.summary.saturation.p99_us // 0')
      pb=$(get nats "fanout-$s" '.report.summary.saturation.p99_us // 0')
      echo "- S = $s: **$(ratio "${a:-0}" "${b:-0}")×** deliveries/s (p99 at saturation: chorus/NATS = $(ratio "${pa:-0}" "${pb:-0}"))"
    done
  fi
  echo
  echo "Every step of every ladder (deliveries/s, p99 ms, server CPU, tool CPU, result):"
  echo
  for s in $subscribers; do
    for server in $servers; do
      [ -z "$(get "$server" "fanout-$s" '.error // empty')" ] || continue
      echo "- $(name "$server"), S = $s: $(jq -r --arg s "$server" --arg t "fanout-$s" \
        "select(.server == \$s and .tag == \$t) | [.report.steps[] | \"\(.label) \(.throughput | $num) \(.latency.p99_us | $ms) \(.usage.server.cpu_pct // 0 | round)% \(.usage.tool_cpu_pct | round)% \(if .pass then \"ok\" else \"FAIL\" end)\"] | join(\"; \")" \
        "$tmp/reports.jsonl")"
    done
  done
  if [ "$connections" -gt 0 ]; then
    echo
    echo "## Idle WebSocket connections"
    echo
    echo "| server | connected | server RSS before → after (KiB) | server KiB per idle connection | tool KiB per connection | connect rate (/s) | disturbed |"
    echo "|---|---:|---:|---:|---:|---:|---|"
    for server in $servers; do
      err=$(get "$server" connections '.error // empty')
      if [ -n "$err" ]; then
        echo "| $(name "$server") | error: $err | | | | | |"
        continue
      fi
      echo "| $(name "$server") | $(get "$server" connections '.report.summary.connected') of $connections \
| $(get "$server" connections ".report.summary.server_rss_before_kib | $num") → $(get "$server" connections ".report.summary.server_rss_after_kib | $num") \
| $(get "$server" connections '.report.summary.server_rss_per_connection_kib // null | if . == null then "-" else (. * 10 | round / 10 | tostring) end') \
| $(get "$server" connections '.report.summary.tool_rss_per_connection_kib // null | if . == null then "-" else (. * 10 | round / 10 | tostring) end') \
| $(get "$server" connections ".report.steps[0].throughput | $num") | $(disturbed "$server" connections) |"
    done
    if [[ " $servers " == *" chorus "* && " $servers " == *" nats "* ]]; then
      a=$(get chorus connections '.report.summary.server_rss_per_connection_kib // 0')
      b=$(get nats connections '.report.summary.server_rss_per_connection_kib // 0')
      echo
      echo "Ratio chorus / NATS, RSS per idle connection: **$(ratio "${a:-0}" "${b:-0}")×** (< 1: chorus uses less)."
    fi
  fi
  echo
  echo "## Commands"
  echo
  echo "Reproduce: \`benches/compare.sh\` (see \`--help\`). The exact commands of this run (the tool's stdout is"
  echo "one JSON report each, kept in \`$(basename "$jsonl")\`):"
  echo
  echo '```sh'
  echo "ulimit -n $(ulimit -n)"
  cat "$tmp/commands"
  echo '```'
} >"$out"

log "wrote $out and $jsonl"
cat "$out"
