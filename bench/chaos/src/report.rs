//! Turns the records of a run into per-phase figures and a Markdown table.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::cpu;
use crate::load::Record;
use crate::metrics::Sample;

/// When things happened, as offsets from the start of the measured run.
#[derive(Debug, Clone, Copy)]
pub struct Timeline {
    /// The endpoint's task was aborted (its connections closed).
    pub kill: Duration,
    /// The endpoint was listening again on its port.
    pub restart: Duration,
    /// The last request was due before this.
    pub end: Duration,
}

/// Which phase a request belongs to. The fault phase takes every request
/// that was *in progress* at some moment between the kill and the restart,
/// so the requests caught in flight by the kill count against the fault,
/// not against the healthy run they were sent in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Healthy,
    Down,
    Recovered,
}

impl Phase {
    pub fn of(record: &Record, t: &Timeline) -> Phase {
        if record.due + record.latency < t.kill {
            Phase::Healthy
        } else if record.due < t.restart {
            Phase::Down
        } else {
            Phase::Recovered
        }
    }
}

/// Figures for one set of requests.
#[derive(Debug, Clone)]
pub struct Row {
    pub name: String,
    pub requests: u64,
    pub ok: u64,
    /// Microseconds.
    pub p50: u64,
    pub p99: u64,
    pub max: u64,
    /// Failure label (`503 connect-failed`, `client timeout`, ...) → count.
    pub failures: BTreeMap<String, u64>,
}

impl Row {
    /// Latency covers every request, failed ones too: a failure is an
    /// answer the caller waited for.
    pub fn of<'a>(name: &str, records: impl Iterator<Item = &'a Record>) -> anyhow::Result<Row> {
        // 1 µs to 10 min at 3 significant digits; longer values saturate.
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)
            .map_err(|e| anyhow::anyhow!("latency histogram: {e:?}"))?;
        let mut row = Row {
            name: name.to_owned(),
            requests: 0,
            ok: 0,
            p50: 0,
            p99: 0,
            max: 0,
            failures: BTreeMap::new(),
        };
        for record in records {
            row.requests += 1;
            let micros = u64::try_from(record.latency.as_micros()).unwrap_or(u64::MAX);
            histogram.saturating_record(micros.max(1));
            if record.outcome.is_ok() {
                row.ok += 1;
            } else {
                *row.failures.entry(record.outcome.label()).or_default() += 1;
            }
        }
        if row.requests > 0 {
            row.p50 = histogram.value_at_quantile(0.50);
            row.p99 = histogram.value_at_quantile(0.99);
            row.max = histogram.max();
        }
        Ok(row)
    }

    pub fn success(&self) -> f64 {
        if self.requests == 0 {
            return 100.0;
        }
        100.0 * self.ok as f64 / self.requests as f64
    }

    fn failure_text(&self) -> String {
        if self.failures.is_empty() {
            return "none".to_owned();
        }
        self.failures
            .iter()
            .map(|(label, n)| format!("{n} × {label}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Everything the report says about one run.
pub struct Report {
    pub rate: f64,
    pub lb: String,
    pub phase_secs: f64,
    pub recovered_secs: f64,
    pub killed: usize,
    pub rows: Vec<Row>,
    pub healthy_p99: u64,
    pub down_p99: u64,
    pub down_success: f64,
    /// Requests answered by each endpoint in each phase (healthy, down, recovered).
    pub served: [[u64; 3]; 3],
    /// `/metrics` at the end of the run, less its value before it.
    pub retries: f64,
    pub ejections: f64,
    /// CPU cores used by other processes in each phase (healthy, down, recovered).
    pub others: [f64; 3],
}

/// Milliseconds with two decimals, from microseconds.
fn ms(micros: u64) -> String {
    format!("{:.2} ms", micros as f64 / 1000.0)
}

impl Report {
    pub fn ratio(&self) -> f64 {
        if self.healthy_p99 == 0 {
            return f64::INFINITY;
        }
        self.down_p99 as f64 / self.healthy_p99 as f64
    }

    pub fn goal_met(&self) -> bool {
        self.down_success >= 100.0 && self.ratio() <= 2.0
    }

    /// The Markdown table and the lines under it.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "| phase | requests | success | p50 | p99 | max | failures |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---|");
        for row in &self.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {:.3} % | {} | {} | {} | {} |",
                row.name,
                row.requests,
                row.success(),
                ms(row.p50),
                ms(row.p99),
                ms(row.max),
                row.failure_text()
            );
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "Fault-phase p99 / healthy p99: **{:.2}×** (goal ≤ 2×); fault-phase success: **{:.3} %** (goal 100 %): goal **{}**.",
            self.ratio(),
            self.down_success,
            if self.goal_met() { "met" } else { "missed" }
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "Skiff's counters over the run: `skiff_retries_total` {}, `skiff_outlier_ejections_total` {}.",
            self.retries, self.ejections
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "Other processes on the machine used {:.2} / {:.2} / {:.2} CPU cores on average in the healthy / down / recovered phases.",
            self.others[0], self.others[1], self.others[2]
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "Requests answered by each endpoint (endpoint #{} is the one killed):",
            self.killed
        );
        let _ = writeln!(out);
        let _ = writeln!(out, "| phase | #1 | #2 | #3 |");
        let _ = writeln!(out, "|---|---:|---:|---:|");
        for (name, served) in ["healthy", "down", "recovered"].iter().zip(&self.served) {
            let _ = writeln!(
                out,
                "| {name} | {} | {} | {} |",
                served[0], served[1], served[2]
            );
        }
        out
    }
}

/// One line per second of the run: requests due, failures, p99 and max,
/// the retries and ejections Skiff counted in that second, the requests
/// each endpoint answered, and the CPU cores other processes used (a
/// latency bump with `others` near 1 or more is the machine, not Skiff).
/// For reading a run, not for the docs.
pub fn per_second(records: &[Record], samples: &[Sample], t: &Timeline) -> anyhow::Result<String> {
    let seconds = (t.end.as_secs_f64().ceil() as usize).max(1);
    let mut buckets: Vec<Vec<&Record>> = vec![Vec::new(); seconds];
    for record in records {
        if let Some(bucket) = buckets.get_mut(record.due.as_secs() as usize) {
            bucket.push(record);
        }
    }
    // The sample taken at second `s`: samples are taken once a second from
    // the start, and the last one just as the run ends, so round to the
    // nearest second. Zero before the first.
    let at = |s: usize| {
        samples
            .iter()
            .rev()
            .find(|x| x.at.as_secs_f64().round() as usize <= s)
            .copied()
            .unwrap_or_default()
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "  t(s)  requests  failed      p99      max  retries  ejections     #1     #2     #3  others"
    );
    for (second, bucket) in buckets.iter().enumerate() {
        let row = Row::of("", bucket.iter().copied())?;
        let (from, to) = (at(second), at(second + 1));
        let served = |i: usize| to.served[i].saturating_sub(from.served[i]);
        let mark = if second as u64 == t.kill.as_secs() {
            "  <- kill"
        } else if second as u64 == t.restart.as_secs() {
            "  <- restart"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "{second:>6}  {:>8}  {:>6}  {:>6.1}ms {:>6.1}ms {:>7}  {:>9} {:>6} {:>6} {:>6}  {:>4.2}{mark}",
            row.requests,
            row.requests - row.ok,
            row.p99 as f64 / 1000.0,
            row.max as f64 / 1000.0,
            to.retries - from.retries,
            to.ejections - from.ejections,
            served(0),
            served(1),
            served(2),
            to.others_cpu.saturating_sub(from.others_cpu) as f64 / cpu::TICKS_PER_SECOND,
        );
    }
    Ok(out)
}
