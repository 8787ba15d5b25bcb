#!/usr/bin/env bash
# Chorus's /yjs/ endpoint against the reference y-websocket server (@y/websocket-server) and
# Hocuspocus (@hocuspocus/server, through its own provider protocol), with the same load tool
# (`chorus bench yjs`), the same steps and the same pinning, and a dated Markdown table in
# docs/bench/. See --help.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: benches/yjs-compare.sh [OPTIONS]

Co-editing one Yjs document: at each step of --clients, N clients open a fresh document, W of
them type (R small Y.Text inserts per second each), every client applies what it receives in
its own yrs document. Each load of --loads (W writers x R edits/s) runs every step: the first
is the issue's (1 writer typing 10/s), the second keeps the servers busier. Reported per step: latency from edit to every other client (p50, p99,
and the fastest reader's p99), updates delivered per second, lost edits, the server's CPU per
delivered update and RSS, the tool's CPU. Against:
  chorus       `chorus serve` (/yjs/<doc>?token=…, tokens minted, fresh temp data dir)
  y-websocket  the reference Node server, tests/yjs/node_modules/@y/websocket-server
               (in memory, defaults otherwise)
  hocuspocus   Hocuspocus, tests/yjs/hocuspocus-server.mjs (@hocuspocus/server: no
               extensions, in memory, defaults otherwise); the tool speaks its provider
               protocol (--yjs-server hocuspocus)
Each server runs alone, pinned to one core (taskset -c 0); the tool runs pinned to the other
(taskset -c 1 chorus bench yjs … --threads 1), both at a raised priority (nice -10, as root,
each in a session of its own whose autogroup gets it too).
After the servers, `chorus bench floor` measures at each load what one write() per delivery
costs on the servers' core: the floor each server's CPU per update is divided by.
Writes docs/bench/YYYY-MM-DD-yjs.md (table, ratios chorus / each peer and / the floor from this
same run, machine notes, exact commands, raw reports).

Installs nothing. Needs: taskset, jq, node, cargo (unless --chorus-bin), and tests/yjs's npm
packages (scripts/yjs-deps.sh installs them). Waits for a quiet machine first (no rustc
running and the CPUs at least 85% idle over 5 s), up to --wait-max, and notes what else ran.

Options:
  --out FILE             Markdown file [default: docs/bench/<today>-yjs.md]
  --clients LIST         Client counts, comma-separated [default: 10,50,200]
  --loads "LIST"         Loads, each WxR: W typing clients, R edits/s each
                         [default: "1x10 10x20"]
  --duration SECS        Measured seconds per step [default: 10]
  --warmup SECS          Warm-up seconds per step [default: 1]
  --servers "LIST"       Which servers [default: "chorus y-websocket hocuspocus"]
  --chorus-bin PATH      Use this chorus binary (server and tool) instead of building
                         target/dist/chorus with `cargo build --profile dist`
  --note TEXT            A line for the machine notes (repeatable)
  --server-core N        Core of the servers [default: 0]
  --tool-core N          Core of the tool [default: 1]
  --chorus-port P        HTTP/WebSocket port of chorus (QUIC on P+1) [default: 27710]
  --ref-port P           Port of the reference server [default: 27720]
  --hp-port P            Port of Hocuspocus [default: 27730]
  --wait-max SECS        Longest wait for a quiet machine (polled every minute) [default: 600]
  --nice N               Niceness of the servers and the tool [default: -10; 0 to leave it]
  --no-wait              Do not wait for a quiet machine
  --keep                 Keep the temp dir (server logs, data dir, raw output)
  -h, --help             This help
EOF
}

cd "$(dirname "$0")/.."

out="docs/bench/$(date +%F)-yjs.md"
clients="10,50,200"
loads="1x10 10x20"
duration=10
warmup=1
servers="chorus y-websocket hocuspocus"
chorus_bin=""
server_core=0
tool_core=1
chorus_port=27710
ref_port=27720
hp_port=27730
wait_max=600
nice_level=-10
wait_quiet=1
keep=0
notes=()

need_value() { [ $# -ge 2 ] || { echo "yjs-compare.sh: $1 needs a value" >&2; exit 2; }; }
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --out) need_value "$@"; out=$2; shift 2 ;;
    --clients) need_value "$@"; clients=$2; shift 2 ;;
    --loads) need_value "$@"; loads=$2; shift 2 ;;
    --duration) need_value "$@"; duration=$2; shift 2 ;;
    --warmup) need_value "$@"; warmup=$2; shift 2 ;;
    --servers) need_value "$@"; servers=$2; shift 2 ;;
    --chorus-bin) need_value "$@"; chorus_bin=$2; shift 2 ;;
    --note) need_value "$@"; notes+=("$2"); shift 2 ;;
    --server-core) need_value "$@"; server_core=$2; shift 2 ;;
    --tool-core) need_value "$@"; tool_core=$2; shift 2 ;;
    --chorus-port) need_value "$@"; chorus_port=$2; shift 2 ;;
    --ref-port) need_value "$@"; ref_port=$2; shift 2 ;;
    --hp-port) need_value "$@"; hp_port=$2; shift 2 ;;
    --wait-max) need_value "$@"; wait_max=$2; shift 2 ;;
    --nice) need_value "$@"; nice_level=$2; shift 2 ;;
    --no-wait) wait_quiet=0; shift ;;
    --keep) keep=1; shift ;;
    *) echo "yjs-compare.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

log() { echo "yjs-compare: $*" >&2; }
die() { echo "yjs-compare.sh: $*" >&2; exit 1; }
source "$(dirname "$0")/machine.sh"

# --- what is needed --------------------------------------------------------------------------
for cmd in taskset jq; do
  command -v "$cmd" >/dev/null || die "$cmd is missing (Debian: apt-get install $([ "$cmd" = taskset ] && echo util-linux || echo "$cmd"))"
done
for server in $servers; do
  case "$server" in
    chorus|y-websocket|hocuspocus) ;;
    *) die "--servers: unknown server \`$server\` (chorus, y-websocket, hocuspocus)" ;;
  esac
done
ref_server=tests/yjs/node_modules/@y/websocket-server/src/server.js
hp_server=tests/yjs/hocuspocus-server.mjs
hp_package=tests/yjs/node_modules/@hocuspocus/server/package.json
if [[ " $servers " == *" y-websocket "* || " $servers " == *" hocuspocus "* ]]; then
  command -v node >/dev/null || die "node is missing (Debian: apt-get install nodejs), or pass --servers chorus"
fi
if [[ " $servers " == *" y-websocket "* ]]; then
  [ -f "$ref_server" ] || die "$ref_server is missing: install tests/yjs's packages first (scripts/yjs-deps.sh)"
fi
if [[ " $servers " == *" hocuspocus "* ]]; then
  [ -f "$hp_package" ] || die "$hp_package is missing: install tests/yjs's packages first (scripts/yjs-deps.sh)"
fi
check_cores
chorus_binary
"$chorus_bin" bench yjs --help >/dev/null 2>&1 || die "$chorus_bin has no \`bench yjs\`: rebuild it"

for port in $chorus_port $ref_port $hp_port; do
  ! port_busy "$port" || die "port $port is in use (pick others: --chorus-port, --ref-port, --hp-port)"
done

nice_note="nice $nice_level, each in a session of its own whose scheduling group has that niceness too (autogroup)"
if [ -n "$(nice -n "$nice_level" true 2>&1)" ]; then
  nice_note="nice $nice_level not permitted: default priority"
  nice_level=0
fi
set_prio
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
for load in $loads; do
  [[ $load =~ ^[0-9]+x[0-9.]+$ ]] || die "--loads: \`$load\` is not WxR (e.g. 1x10)"
done

# --- a quiet machine ---------------------------------------------------------------------------
wait_for_quiet
quiet_note="waited ${waited}s for no rustc and idle CPUs; ${idle}% idle over 5 s just before"
[ "$(rustc_count)" -eq 0 ] && [ "$idle" -ge 85 ] ||
  quiet_note="still busy after waiting ${waited}s (CPUs ${idle}% idle): figures are indicative only"
[ "$wait_quiet" = 1 ] || quiet_note="quiet machine not waited for (--no-wait); CPUs ${idle}% idle over 5 s just before"

# --- machine notes -----------------------------------------------------------------------------
cpu_model=$(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || echo unknown)
kernel=$(uname -srm)
load_before=$(loadavg)
rustc_before=$(rustc_count)
started=$(date '+%Y-%m-%d %H:%M:%S %Z')
chorus_version=$("$chorus_bin" version 2>/dev/null || echo unknown)
node_version=$(command -v node >/dev/null && node --version || echo "-")
ref_version=$(jq -r .version tests/yjs/node_modules/@y/websocket-server/package.json 2>/dev/null || echo "-")
hp_version=$(jq -r .version "$hp_package" 2>/dev/null || echo "-")
yjs_version=$(jq -r .version tests/yjs/node_modules/yjs/package.json 2>/dev/null || echo "-")

tmp=$(mktemp -d /tmp/chorus-yjs-compare.XXXXXX)
mkdir -p "$(dirname "$out")"
: >"$tmp/reports.jsonl"
: >"$tmp/commands"
: >"$tmp/loads"
server_pid=""
chorus_data=""
others_max=0
cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  if [ "$keep" = 1 ]; then log "kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT

wait_port() {
  for _ in $(seq 100); do port_busy "$1" && return 0; sleep 0.1; done
  die "nothing listens on port $1 (see $tmp/*.log; --keep keeps them)"
}

start_server() {
  local cmd
  case "$1" in
    chorus)
      chorus_data="$tmp/chorus-data"
      rm -rf "$chorus_data"
      mkdir -p "$chorus_data"
      cmd="nice -n $nice_level taskset -c $server_core $chorus_bin serve --data-dir $chorus_data --listen 127.0.0.1:$chorus_port --quic-listen 127.0.0.1:$((chorus_port + 1))"
      "${prio[@]}" taskset -c "$server_core" "$chorus_bin" serve --data-dir "$chorus_data" \
        --listen "127.0.0.1:$chorus_port" --quic-listen "127.0.0.1:$((chorus_port + 1))" \
        >>"$tmp/chorus.log" 2>&1 &
      server_pid=$!
      wait_port "$chorus_port"
      ;;
    y-websocket)
      cmd="HOST=127.0.0.1 PORT=$ref_port nice -n $nice_level taskset -c $server_core node $ref_server"
      HOST=127.0.0.1 PORT=$ref_port "${prio[@]}" taskset -c "$server_core" node "$ref_server" \
        >>"$tmp/y-websocket.log" 2>&1 &
      server_pid=$!
      wait_port "$ref_port"
      ;;
    hocuspocus)
      cmd="nice -n $nice_level taskset -c $server_core node $hp_server --port $hp_port"
      "${prio[@]}" taskset -c "$server_core" node "$hp_server" --port "$hp_port" \
        >>"$tmp/hocuspocus.log" 2>&1 &
      server_pid=$!
      wait_port "$hp_port"
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

# Run `chorus bench yjs` pinned to the tool core against server $1 with load $2 (WxR); append
# its report (tagged) to reports.jsonl and a line on what else ran to loads.
bench() {
  local server=$1 load=$2 target_args
  case "$server" in
    chorus) target_args=(--url "ws://127.0.0.1:$chorus_port/ws" --data-dir "$chorus_data") ;;
    y-websocket) target_args=(--yjs-server y-websocket --url "ws://127.0.0.1:$ref_port") ;;
    hocuspocus) target_args=(--yjs-server hocuspocus --url "ws://127.0.0.1:$hp_port") ;;
  esac
  local args=(yjs --clients "$clients" --writers "${load%x*}" --rate "${load#*x}" --duration "$duration"
    --warmup "$warmup" "${target_args[@]}" --server-pid "$server_pid" --threads 1 --json)
  echo "nice -n $nice_level taskset -c $tool_core $chorus_bin bench$(printf ' %q' "${args[@]}")" >>"$tmp/commands"
  log "$server $load: chorus bench ${args[*]}"
  local t0 busy0 server0 children0 rustc_max=0 report
  t0=$(date +%s.%N) busy0=$(busy_ticks) server0=$(proc_ticks "$server_pid") children0=$(children_ticks)
  if report=$("${prio[@]}" taskset -c "$tool_core" "$chorus_bin" bench "${args[@]}" 2>"$tmp/bench.err"); then
    jq -c --arg server "$server" --arg load "$load" '{server: $server, load: $load, report: .}' \
      <<<"$report" >>"$tmp/reports.jsonl"
  else
    local why
    why=$(tail -3 "$tmp/bench.err" | tr '\n' ' ')
    log "$server $load failed: $why"
    jq -nc --arg server "$server" --arg load "$load" --arg why "$why" \
      '{server: $server, load: $load, error: $why}' >>"$tmp/reports.jsonl"
  fi
  rustc_max=$(rustc_count)
  local wall others
  wall=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')
  others=$(($(busy_ticks) - busy0 - ($(proc_ticks "$server_pid") - server0) - ($(children_ticks) - children0)))
  local pct
  pct=$(awk -v wall="$wall" -v others="$others" 'BEGIN { printf "%d", (others > 0 ? others / wall : 0) }')
  [ "$pct" -le "$others_max" ] || others_max=$pct
  awk -v name="$server, load $load" -v wall="$wall" -v others="$others" -v rc="$rustc_max" -v la="$(loadavg)" \
    'BEGIN { o = others > 0 ? others / 100 : 0
      printf "%s (%.0f s): other processes used %.1f CPU-s (%.0f%% of one core); %d rustc running at the end; load after: %s\n",
        name, wall, o, 100 * o / wall, rc, la }' >>"$tmp/loads"
}

# The floor of one load: `chorus bench floor` writes one small frame per update to each of N
# loopback sockets from a thread on the servers' core, at the load's update rate; appended to
# reports.jsonl as server "floor".
floor() {
  local load=$1 report
  local args=(floor -n "$clients" -r "$(awk -v l="$load" 'BEGIN { split(l, p, "x"); print p[1] * p[2] }')"
    -d "$duration" --writer-cpu "$server_core" --json)
  echo "nice -n $nice_level taskset -c $tool_core $chorus_bin bench$(printf ' %q' "${args[@]}")" >>"$tmp/commands"
  log "floor $load: chorus bench ${args[*]}"
  if report=$("${prio[@]}" taskset -c "$tool_core" "$chorus_bin" bench "${args[@]}" 2>"$tmp/bench.err"); then
    jq -c --arg load "$load" '{server: "floor", load: $load, report: .}' <<<"$report" >>"$tmp/reports.jsonl"
  else
    log "floor $load failed: $(tail -3 "$tmp/bench.err" | tr '\n' ' ')"
  fi
}

t0=$(date +%s)
for server in $servers; do
  for load in $loads; do
    # A fresh server per load, so its RSS is this load's.
    start_server "$server"
    bench "$server" "$load"
    stop_server
  done
done
for load in $loads; do floor "$load"; done
elapsed=$(($(date +%s) - t0))
load_after=$(loadavg)

# --- the table -----------------------------------------------------------------------------------
# One field of the summary row of step N (clients) of server S under load L:
# row S L N JQ-FILTER.
row() {
  jq -r --arg s "$1" --arg l "$2" --argjson n "$3" \
    "select(.server == \$s and .load == \$l and .report != null) | .report.summary.steps[] | select(.clients == \$n) | $4" \
    "$tmp/reports.jsonl" | head -1
}
err() { jq -r --arg s "$1" --arg l "$2" 'select(.server == $s and .load == $l) | .error // empty' "$tmp/reports.jsonl" | head -1; }
ms='if . == null then "-" else (. / 1000 * 100 | round / 100 | tostring) end'
num='if . == null then "-" else (. | round | tostring) end'
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.2f", a / b; else printf "-" }'; }
name() { case "$1" in chorus) echo "chorus" ;; y-websocket) echo "y-websocket (reference)" ;; hocuspocus) echo "hocuspocus" ;; esac; }
peers=""
for server in $servers; do [ "$server" = chorus ] || peers+=" $server"; done

{
  echo "# Yjs co-editing: $(for server in $servers; do name "$server"; done | paste -sd, - | sed 's/,/ vs /g') ($(date +%F))"
  echo
  echo "Generated by \`benches/yjs-compare.sh\` in ${elapsed} s. Same load tool (\`chorus bench yjs\`), same"
  echo "steps for every server ($servers); each server alone on core $server_core, the tool on core $tool_core (\`--threads 1\`),"
  echo "all at $nice_note, a fresh server per load. One fresh document per step; load WxR: W writers typing"
  echo "R small Y.Text inserts/s each; ${warmup} s warm-up + ${duration} s measured per step. Latency: from an edit's send to"
  echo "its appearance in another client's own yrs document, over every (edit, reader) pair; the fastest"
  echo "reader's p99 is the best p99 of any one client (free of the tool's queueing across its"
  echo "readers; goal: <= 5 ms at 200 clients). Writers type out of step (phases spread over one interval)."
  echo "Server CPU per update: the server's CPU time over the measured phase (its threads' run time from"
  echo "/proc/<pid>/task/*/schedstat) divided by the edits delivered in it. Server CPU %: of one core, same source."
  echo "The reference server and Hocuspocus also echo each update to its sender; echoes are not counted."
  echo "Hocuspocus is reached through its own provider protocol (each frame prefixed with the document's"
  echo "name, a token handshake first; \`chorus bench yjs --yjs-server hocuspocus\`): the same y-websocket"
  echo "messages in another envelope. It answers each update with a sync status to its sender, and its"
  echo "clients that type nothing for 20 s send an awareness query to stay connected (it drops a socket silent"
  echo "for 60 s); the other servers are kept alive with WebSocket pings."
  echo "One run per server and load, on a machine that may run other work: the figures are indicative;"
  echo "compare the servers within one run, and see the machine notes for what else ran."
  echo
  echo "## Machine"
  echo
  echo "- started: $started"
  echo "- \`nproc\`: $cores; CPU: $cpu_model; kernel: $kernel"
  echo "- load average before the run: $load_before ($rustc_before rustc running; $quiet_note)"
  echo "- during each bench (\"other processes\": the machine's busy CPU time less the server's and the tool's):"
  sed 's/^/  - /' "$tmp/loads"
  echo "- load average after: $load_after"
  if [ "$others_max" -gt 50 ]; then
    echo "- **Other processes used up to ${others_max}% of a core during a bench: the figures are indicative"
    echo "  only** (both the server and the tool shared their cores); compare within this run, and re-run on a"
    echo "  quiet machine before quoting them."
  fi
  echo "- chorus: \`$chorus_version\`, $chorus_bin ($chorus_source)"
  echo "- reference: @y/websocket-server $ref_version (yjs $yjs_version) on node $node_version, in memory"
  echo "- hocuspocus: @hocuspocus/server $hp_version (yjs $yjs_version) on node $node_version, no extensions, in memory"
  for note in "${notes[@]}"; do echo "- $note"; done
  echo
  echo "## Steps"
  echo
  echo "| load | server | clients | updates/s | lost | p50 ms | p99 ms | fastest reader p99 ms | slowest reader p99 ms | server µs CPU / update | server CPU | server RSS MiB | tool CPU | result |"
  echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
  for load in $loads; do
    for n in ${clients//,/ }; do
      for server in $servers; do
        f() { row "$server" "$load" "$n" "$1"; }
        e=$(err "$server" "$load")
        if [ -n "$e" ]; then
          echo "| $load | $(name "$server") | $n | error: ${e//|//} | | | | | | | | | | |"
          continue
        fi
        [ -n "$(f '.clients')" ] || { echo "| $load | $(name "$server") | $n | not run | | | | | | | | | | |"; continue; }
        echo "| $load | $(name "$server") | $n | $(f ".updates_per_s | $num") | $(f '.lost') \
| $(f ".p50_us | $ms") | $(f ".p99_us | $ms") | $(f ".fastest_reader_p99_us | $ms") | $(f ".slowest_reader_p99_us | $ms") \
| $(f ".server_cpu_us_per_update | $num") \
| $(f '.server_cpu_pct // null | if . == null then "-" else (round | tostring) + "%" end') \
| $(f '.server_rss_kib // null | if . == null then "-" else (. / 1024 * 10 | round / 10 | tostring) end') \
| $(f '.tool_cpu_pct | round | tostring')% | $(f 'if .pass then "ok" else "FAIL" end') |"
      done
    done
  done
  if [[ " $servers " == *" chorus "* && -n "$peers" ]]; then
    echo
    echo "Ratios chorus / peer, measured in this run (< 1: chorus is faster or leaner):"
    echo
    echo "| load | clients | peer | fastest reader p99 | p99 | p50 | server CPU per update | server RSS |"
    echo "|---|---:|---|---:|---:|---:|---:|---:|"
    for load in $loads; do
      for n in ${clients//,/ }; do
        for peer in $peers; do
          r() { ratio "$(row chorus "$load" "$n" "$1 // 0")" "$(row "$peer" "$load" "$n" "$1 // 0")"; }
          echo "| $load | $n | $(name "$peer") | $(r .fastest_reader_p99_us)× | $(r .p99_us)× | $(r .p50_us)× | $(r .server_cpu_us_per_update)× | $(r .server_rss_kib)× |"
        done
      done
    done
  fi
  echo
  echo "## The floor: one write() per delivery"
  echo
  echo "\`chorus bench floor\` (same run, after the servers): a thread pinned to core $server_core writes one"
  echo "32-byte frame per update to each of N loopback TCP sockets, read on core $tool_core, at the load's update"
  echo "rate, and does nothing else. Its CPU per write is the least a delivery can cost here (on loopback a"
  echo "write also runs the receiver's TCP processing). A server's CPU per update divided by it says what the"
  echo "server spends beyond that write; below 1 needs several updates coalesced into one write."
  echo
  echo "| load | clients | floor µs CPU / write |$(for server in $servers; do printf ' %s / floor |' "$(name "$server")"; done)"
  echo "|---|---:|---:|$(for _ in $servers; do printf -- '---:|'; done)"
  for load in $loads; do
    for n in ${clients//,/ }; do
      fl=$(jq -r --arg l "$load" --argjson n "$n" \
        'select(.server == "floor" and .load == $l) | .report.steps[] | select(.counters.connections == $n) | .counters.cpu_ns_per_write / 1000' \
        "$tmp/reports.jsonl" | head -1)
      line="| $load | $n | $(awk -v f="${fl:-0}" 'BEGIN { if (f > 0) printf "%.2f", f; else printf "-" }') |"
      for server in $servers; do
        line+=" $(ratio "$(row "$server" "$load" "$n" '.server_cpu_us_per_update // 0')" "${fl:-0}")× |"
      done
      echo "$line"
    done
  done
  echo
  echo "## Commands"
  echo
  echo "Reproduce: \`benches/yjs-compare.sh\` (see \`--help\`). The exact commands of this run:"
  echo
  echo '```sh'
  echo "ulimit -n $(ulimit -n)"
  cat "$tmp/commands"
  echo '```'
  echo
  echo "<details><summary>Raw reports (one JSON object per server and load)</summary>"
  echo
  echo '```json'
  cat "$tmp/reports.jsonl"
  echo '```'
  echo
  echo "</details>"
} >"$out"

log "wrote $out"
cat "$out"
