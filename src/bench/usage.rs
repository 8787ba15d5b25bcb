//! Resource usage from `/proc` (Linux): CPU time and memory of the tool itself and, given its
//! pid, of the server, so a report says which side was the limit. Elsewhere every figure is
//! simply absent.
//!
//! It also tells how long each side waited for a CPU while it had work (`schedstat`): on a
//! shared machine that, not the code, can be the limit. With autogroup scheduling
//! (`/proc/sys/kernel/sched_autogroup_enabled` = 1) `nice` ranks a process only within its own
//! session, so a niced server gets only its session's share of a core that another session's
//! build also runs on.

use serde::Serialize;
use std::time::Instant;

/// Kernel clock ticks per second (`getconf CLK_TCK`; 100 on every mainstream Linux).
const CLOCK_TICKS: f64 = 100.0;
/// A side counts as CPU-bound above this share of the cores it may use.
const BUSY: f64 = 0.9;
/// A side counts as held back by other work when its threads waited for a CPU this share of
/// the wall time (summed over threads).
const STARVED: f64 = 0.1;

/// One look at a process.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    /// utime + stime, in clock ticks.
    pub cpu_ticks: u64,
    pub rss_kib: u64,
    /// Peak resident set (`VmHWM`) since the process started.
    pub hwm_kib: u64,
    /// Time its threads were runnable but waited for a CPU, in nanoseconds, summed over the
    /// threads alive now (`/proc/<pid>/task/*/schedstat`, second field).
    pub wait_ns: u64,
}

fn proc_path(pid: Option<u32>, file: &str) -> String {
    match pid {
        Some(pid) => format!("/proc/{pid}/{file}"),
        None => format!("/proc/self/{file}"),
    }
}

/// Sample process `pid` (`None`: this process).
pub fn sample(pid: Option<u32>) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(proc_path(pid, "stat")).ok()?;
    // Fields after the command name (which may hold spaces), starting with field 3 (state):
    // utime is field 14, stime field 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(proc_path(pid, "status")).ok()?;
    Some(ProcSample {
        cpu_ticks: utime + stime,
        rss_kib: status_kib(&status, "VmRSS:").unwrap_or(0),
        hwm_kib: status_kib(&status, "VmHWM:").unwrap_or(0),
        wait_ns: wait_ns(pid).unwrap_or(0),
    })
}

/// Run-queue wait of every thread of `pid`, summed (absent without schedstats).
fn wait_ns(pid: Option<u32>) -> Option<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(proc_path(pid, "task")).ok()? {
        // A thread may end between the listing and the read: it simply counts no more.
        let Ok(stat) = std::fs::read_to_string(task.ok()?.path().join("schedstat")) else {
            continue;
        };
        total += stat.split_whitespace().nth(1)?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// Wait between two samples, in percent of `wall` seconds.
fn wait_pct(start: &ProcSample, end: &ProcSample, wall: f64) -> f64 {
    end.wait_ns.saturating_sub(start.wait_ns) as f64 / 1e7 / wall
}

fn status_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// How many CPUs process `pid` may run on (its affinity, e.g. after `taskset`).
pub fn cpus_allowed(pid: Option<u32>) -> Option<usize> {
    let status = std::fs::read_to_string(proc_path(pid, "status")).ok()?;
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?
        .trim();
    let mut count = 0;
    for part in list.split(',') {
        count += match part.split_once('-') {
            Some((a, b)) => b.parse::<usize>().ok()? - a.parse::<usize>().ok()? + 1,
            None => 1,
        };
    }
    Some(count)
}

/// The soft and hard limits on open files of this process.
pub fn open_files_limit() -> Option<(u64, u64)> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut values = line["Max open files".len()..]
        .split_whitespace()
        .map(|v| v.parse::<u64>().unwrap_or(u64::MAX));
    Some((values.next()?, values.next()?))
}

/// Make sure this process may open `needed` files: raise the soft limit to the hard limit
/// (with `prlimit`, from util-linux) if needed, or explain how.
pub fn ensure_open_files(needed: u64) -> anyhow::Result<()> {
    let Some((soft, hard)) = open_files_limit() else {
        return Ok(());
    };
    if soft >= needed {
        return Ok(());
    }
    if hard >= needed {
        let pid = std::process::id().to_string();
        let _ = std::process::Command::new("prlimit")
            .args(["--pid", &pid, &format!("--nofile={hard}:{hard}")])
            .stderr(std::process::Stdio::null())
            .status();
        if open_files_limit().is_some_and(|(soft, _)| soft >= needed) {
            return Ok(());
        }
    }
    anyhow::bail!(
        "this needs about {needed} open files but the limit is {soft} (hard limit {hard}): \
         run `ulimit -n {needed}` first (as root, or raise the hard limit in \
         /etc/security/limits.conf), and give the server as many"
    )
}

/// Measures one stretch of a run.
#[derive(Debug, Clone)]
pub struct Sampler {
    server_pid: Option<u32>,
    started: Instant,
    tool: Option<ProcSample>,
    server: Option<ProcSample>,
}

/// CPU and memory over one stretch of a run.
#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    pub wall_s: f64,
    /// The tool's CPU time (all its threads).
    pub tool_cpu_s: f64,
    /// The tool's CPU time per wall time, in percent of one core.
    pub tool_cpu_pct: f64,
    /// Cores the tool may use.
    pub tool_cores: usize,
    pub tool_rss_kib: u64,
    /// How long the tool's threads waited for a CPU while runnable, in percent of wall time.
    pub tool_wait_pct: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerUsage>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerUsage {
    pub pid: u32,
    pub cpu_s: f64,
    /// Percent of one core.
    pub cpu_pct: f64,
    /// Cores the server may use.
    pub cores: usize,
    pub rss_start_kib: u64,
    pub rss_end_kib: u64,
    /// Peak RSS of the server process since it started (`VmHWM`).
    pub peak_rss_kib: u64,
    /// How long the server's threads waited for a CPU while runnable, in percent of wall time.
    pub wait_pct: f64,
}

impl Sampler {
    pub fn start(server_pid: Option<u32>) -> Sampler {
        Sampler {
            server_pid,
            started: Instant::now(),
            tool: sample(None),
            server: server_pid.and_then(|pid| sample(Some(pid))),
        }
    }

    pub fn finish(&self) -> Usage {
        let wall = self.started.elapsed().as_secs_f64().max(1e-9);
        let tool_end = sample(None);
        let (tool_cpu_s, tool_wait_pct) = match (self.tool, tool_end) {
            (Some(a), Some(b)) => (
                (b.cpu_ticks.saturating_sub(a.cpu_ticks)) as f64 / CLOCK_TICKS,
                wait_pct(&a, &b, wall),
            ),
            _ => (0.0, 0.0),
        };
        let server = match (self.server_pid, self.server) {
            (Some(pid), Some(start)) => sample(Some(pid)).map(|end| {
                let cpu_s = end.cpu_ticks.saturating_sub(start.cpu_ticks) as f64 / CLOCK_TICKS;
                ServerUsage {
                    pid,
                    cpu_s,
                    cpu_pct: 100.0 * cpu_s / wall,
                    cores: cpus_allowed(Some(pid)).unwrap_or(1),
                    rss_start_kib: start.rss_kib,
                    rss_end_kib: end.rss_kib,
                    peak_rss_kib: end.hwm_kib,
                    wait_pct: wait_pct(&start, &end, wall),
                }
            }),
            _ => None,
        };
        Usage {
            wall_s: wall,
            tool_cpu_s,
            tool_cpu_pct: 100.0 * tool_cpu_s / wall,
            tool_cores: cpus_allowed(None).unwrap_or(1),
            tool_rss_kib: tool_end.map_or(0, |s| s.rss_kib),
            tool_wait_pct,
            server,
        }
    }
}

impl Usage {
    /// Which side ran out of CPU, as far as the figures tell, and which side other work held
    /// back. `tool_threads` is how many worker threads the tool ran.
    pub fn limit(&self, tool_threads: usize) -> String {
        let mut limit = self.cpu_limit(tool_threads);
        let waits = [
            ("server", self.server.as_ref().map(|s| s.wait_pct)),
            ("tool", Some(self.tool_wait_pct)),
        ];
        for (side, wait) in waits {
            if let Some(wait) = wait.filter(|w| *w >= STARVED * 100.0) {
                limit += &format!("; the {side} waited for a CPU {wait:.0}% of the time");
            }
        }
        limit
    }

    fn cpu_limit(&self, tool_threads: usize) -> String {
        let tool_busy =
            self.tool_cpu_pct >= BUSY * 100.0 * tool_threads.min(self.tool_cores).max(1) as f64;
        let server_busy = self
            .server
            .as_ref()
            .map(|s| s.cpu_pct >= BUSY * 100.0 * s.cores as f64);
        match (server_busy, tool_busy) {
            (Some(true), true) => "both CPUs".into(),
            (Some(true), false) => "server CPU".into(),
            (_, true) => "tool CPU".into(),
            (Some(false), false) => "neither CPU".into(),
            (None, false) => "tool not CPU-bound (server unknown: --server-pid)".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let Some(s) = sample(None) else { return };
        assert!(s.rss_kib > 0 && s.hwm_kib >= s.rss_kib);
        assert!(cpus_allowed(None).unwrap() >= 1);
        let (soft, hard) = open_files_limit().unwrap();
        assert!(soft <= hard);
    }

    #[test]
    fn the_limit_tells_which_side_waited_for_a_cpu() {
        let mut usage = Sampler::start(None).finish();
        (usage.tool_cpu_pct, usage.tool_cores, usage.tool_wait_pct) = (40.0, 1, 5.0);
        usage.server = Some(ServerUsage {
            pid: 1,
            cpu_s: 0.4,
            cpu_pct: 40.0,
            cores: 1,
            rss_start_kib: 0,
            rss_end_kib: 0,
            peak_rss_kib: 0,
            wait_pct: 55.0,
        });
        assert_eq!(
            usage.limit(1),
            "neither CPU; the server waited for a CPU 55% of the time"
        );
    }
}
