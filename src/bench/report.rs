//! What every scenario reports: steps, each with a latency histogram summary, counters, errors
//! and resource usage; then the scenario's own key figures. Printed as a table, or as one JSON
//! object with `--json`.

use super::usage::Usage;
use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write;

/// Latencies are recorded in microseconds, with 3 significant figures, up to one minute.
pub const LATENCY_MAX_US: u64 = 60_000_000;

/// An empty latency histogram (microseconds, 3 significant figures).
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_MAX_US, 3).expect("valid histogram bounds")
}

/// The figures of a latency histogram, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Option<Latency> {
        (!h.is_empty()).then(|| Latency {
            count: h.len(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        })
    }
}

/// One measured stretch: a rate step of a ladder, or a scenario's one run.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// What was run, e.g. `20000/s` or `connect`.
    pub label: String,
    /// What `throughput` counts, e.g. `deliveries/s`.
    pub unit: String,
    pub throughput: f64,
    /// Named counts (published, expected, received, lost, duplicates, …).
    pub counters: BTreeMap<String, u64>,
    /// Errors and disconnects by code (`rate_limited`, `slow_consumer`, …).
    pub errors: BTreeMap<String, u64>,
    pub latency: Option<Latency>,
    pub usage: Usage,
    /// Which side ran out of CPU.
    pub limit: String,
    pub pass: bool,
    /// Why the step failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

impl Step {
    pub fn counter(&self, name: &str) -> u64 {
        self.counters.get(name).copied().unwrap_or(0)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    /// `ws://…` or `quic://…`.
    pub target: String,
    pub encoding: String,
    /// The scenario's parameters.
    pub params: Value,
    pub steps: Vec<Step>,
    /// The scenario's key figures (saturation point, RSS per connection, …).
    pub summary: Value,
    /// Human-readable lines for the summary, in the order to print them.
    #[serde(skip)]
    pub summary_lines: Vec<String>,
    /// Warnings met during the run.
    pub notes: Vec<String>,
}

fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

/// `1234567.8` → `1,234,568`.
pub fn thousands(v: f64) -> String {
    let n = v.round() as u64;
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl Report {
    /// The human summary: parameters, one table row per step, the key figures, the notes.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "chorus bench {}: {} ({})",
            self.scenario, self.target, self.encoding
        );
        if let Value::Object(params) = &self.params {
            let line: Vec<String> = params.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let _ = writeln!(out, "  {}", line.join(" "));
        }
        let unit = self.steps.first().map_or("ops/s", |s| s.unit.as_str());
        let header = [
            "step", unit, "lost", "dup", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms",
            "srv CPU", "tool CPU", "result",
        ];
        let mut rows = vec![header.map(String::from).to_vec()];
        for s in &self.steps {
            let lat = s.latency.as_ref();
            let lat_cell = |f: fn(&Latency) -> u64| lat.map_or("-".into(), |l| ms(f(l)));
            let counter = |name: &str| {
                s.counters
                    .get(name)
                    .map_or("-".into(), |v| thousands(*v as f64))
            };
            let srv = s
                .usage
                .server
                .as_ref()
                .map_or("-".into(), |u| format!("{:.0}%", u.cpu_pct));
            let result = match &s.failure {
                None => "ok".to_string(),
                Some(why) => format!("FAIL: {why}"),
            };
            rows.push(vec![
                s.label.clone(),
                thousands(s.throughput),
                counter("lost"),
                counter("duplicates"),
                lat_cell(|l| l.p50_us),
                lat_cell(|l| l.p90_us),
                lat_cell(|l| l.p99_us),
                lat_cell(|l| l.p999_us),
                lat_cell(|l| l.max_us),
                srv,
                format!("{:.0}%", s.usage.tool_cpu_pct),
                result,
            ]);
        }
        let widths: Vec<usize> = (0..header.len())
            .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
            .collect();
        for (i, row) in rows.iter().enumerate() {
            let mut line = String::from(" ");
            for (c, cell) in row.iter().enumerate() {
                if c == 0 || c == row.len() - 1 {
                    let _ = write!(line, " {cell:<w$}", w = widths[c]);
                } else {
                    let _ = write!(line, " {cell:>w$}", w = widths[c]);
                }
            }
            let _ = writeln!(out, "{}", line.trim_end());
            if i == 0 {
                let _ = writeln!(
                    out,
                    "  {}",
                    "-".repeat(widths.iter().sum::<usize>() + widths.len() - 1)
                );
            }
        }
        for s in &self.steps {
            let mut extra: Vec<String> = s
                .counters
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "lost" | "duplicates"))
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            extra.extend(s.errors.iter().map(|(k, v)| format!("{k}={v}")));
            let _ = writeln!(
                out,
                "  {}: {}; limit: {}",
                s.label,
                extra.join(" "),
                s.limit
            );
        }
        for line in &self.summary_lines {
            let _ = writeln!(out, "{line}");
        }
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        out
    }

    /// Print the report: JSON on one line, or the human summary.
    pub fn print(&self, json: bool) {
        if json {
            println!(
                "{}",
                serde_json::to_string(self).expect("reports serialize")
            );
        } else {
            print!("{}", self.render());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1_234_567.8), "1,234,568");
    }

    #[test]
    fn latency_summary() {
        let mut h = histogram();
        assert!(Latency::of(&h).is_none());
        for v in 1..=1000 {
            h.record(v).unwrap();
        }
        let l = Latency::of(&h).unwrap();
        assert_eq!((l.count, l.p50_us, l.max_us), (1000, 500, 1000));
        assert!((989..=991).contains(&l.p99_us));
    }
}
