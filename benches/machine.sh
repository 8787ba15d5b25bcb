# Shared by the comparison scripts (compare.sh, yjs-compare.sh), sourced after they define
# `log` and `die`; the functions use `tmp` (a scratch dir), `wait_quiet` (1: wait for a quiet
# machine), `wait_max` (s), `server_core`, `tool_core` and `chorus_bin` once those are set.
# Functions only: nothing runs on sourcing but the two variables wait_for_quiet keeps.

# The prefix that runs a command at niceness $nice_level: "${prio[@]}" cmd args… (set by
# set_prio once $nice_level is known). With autogroup scheduling
# (/proc/sys/kernel/sched_autogroup_enabled = 1) nice ranks a process only against its own
# session, and every session's group gets an equal share of a core, so a build or a browser in
# another session takes half the server's core whatever its nice. So the command runs in a
# session of its own (setsid, which does not fork a process that leads no group, so `$!` of a
# background "${prio[@]}" … & is the command itself) whose group gets the same niceness, which
# counts against every other session. It then no longer gets the terminal's Ctrl-C: the scripts'
# EXIT trap stops what they started.
set_prio() {
  # shellcheck disable=SC2016 # expanded by the inner shell
  prio=(setsid --wait bash -c 'echo "$0" >/proc/self/autogroup 2>/dev/null; exec nice -n "$0" "$@"'
    "$nice_level")
}

# Pinning works on $server_core and $tool_core (and they differ on a machine of 2 or more).
check_cores() {
  cores=$(nproc)
  [ "$cores" -ge 2 ] || log "warning: $cores core(s): server and tool will share a core"
  local core
  for core in "$server_core" "$tool_core"; do
    taskset -c "$core" true 2>/dev/null || die "cannot pin to core $core (nproc: $cores)"
  done
}

# $chorus_bin as an absolute path: the one given, or a release build of this tree; and
# $chorus_source, which says which.
chorus_binary() {
  chorus_source="given with --chorus-bin"
  if [ -z "$chorus_bin" ]; then
    log "building chorus (profile dist)"
    cargo build --profile dist --bin chorus >&2
    chorus_bin=target/dist/chorus
    chorus_source="built from this tree: commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    local dirty
    dirty=$(git status --porcelain 2>/dev/null | awk '{print $2}' | paste -sd' ' - || true)
    [ -z "$dirty" ] || chorus_source+=", uncommitted changes in: $dirty"
  fi
  [ -x "$chorus_bin" ] || die "no chorus binary at $chorus_bin"
  chorus_bin=$(realpath "$chorus_bin")
}

# Whether something listens on 127.0.0.1:$1.
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

rustc_count() { pgrep -c -x rustc 2>/dev/null || true; }
# CPU time in clock ticks (1/100 s): of the whole machine (busy), of process $1, of this shell's
# finished children (the tool among them).
busy_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }
proc_ticks() { awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
# Nanoseconds the threads of process $1 have waited on a run queue (runnable, not running).
runq_ns() { cat "/proc/$1"/task/*/schedstat 2>/dev/null | awk '{ s += $2 } END { printf "%d\n", s }'; }
children_ticks() {
  times >"$tmp/times"
  tail -1 "$tmp/times" | awk '{ t = 0; for (i = 1; i <= 2; i++) { split($i, a, "m"); t += a[1] * 60 + a[2] }
    printf "%d\n", t * 100 }'
}
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
# Percent of all CPUs idle over 5 s.
idle_pct() {
  local a b
  read -r -a a < <(grep '^cpu ' /proc/stat)
  sleep 5
  read -r -a b < <(grep '^cpu ' /proc/stat)
  local total=0 i
  for i in 1 2 3 4 5 6 7 8; do total=$((total + b[i] - a[i])); done
  echo $(((b[4] + b[5] - a[4] - a[5]) * 100 / (total > 0 ? total : 1)))
}
# Wait (within the --wait-max budget) until no rustc runs and the CPUs are >= 85% idle.
waited=0
idle=100
wait_for_quiet() {
  idle=$(idle_pct)
  [ "$wait_quiet" = 1 ] || return 0
  while { [ "$(rustc_count)" -gt 0 ] || [ "$idle" -lt 85 ]; } && [ "$waited" -lt "$wait_max" ]; do
    log "$(rustc_count) rustc running, CPUs ${idle}% idle, load $(loadavg): waiting for a quiet moment (${waited}s of ${wait_max}s)"
    sleep 55
    waited=$((waited + 60))
    idle=$(idle_pct)
  done
}
