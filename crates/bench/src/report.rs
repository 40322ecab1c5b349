//! What a run reports: throughput, latency percentiles, errors by kind; as text or JSON; and
//! the progress bar shown meanwhile on a terminal.

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};

use crate::workload::Stats;
use crate::{BenchArgs, Budget, Workload};

/// Latency percentiles in milliseconds.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl LatencySummary {
    pub(crate) fn of(histogram: &Histogram<u64>) -> LatencySummary {
        let ms = |micros: u64| micros as f64 / 1000.0;
        LatencySummary {
            count: histogram.len(),
            mean_ms: histogram.mean() / 1000.0,
            p50_ms: ms(histogram.value_at_quantile(0.50)),
            p90_ms: ms(histogram.value_at_quantile(0.90)),
            p99_ms: ms(histogram.value_at_quantile(0.99)),
            p999_ms: ms(histogram.value_at_quantile(0.999)),
            max_ms: ms(histogram.max()),
        }
    }
}

/// The result of a run.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Report {
    pub workload: Workload,
    pub endpoints: Vec<String>,
    pub conns: usize,
    pub clients: usize,
    pub key_size: usize,
    pub val_size: usize,
    pub key_space: u64,
    pub rate_limit: Option<f64>,
    pub elapsed_s: f64,
    pub requests_ok: u64,
    pub requests_failed: u64,
    /// Successful requests per second.
    pub throughput: f64,
    /// Latency of every request, successful or not.
    pub latency: LatencySummary,
    /// Failed requests by gRPC code and message.
    pub errors: BTreeMap<String, u64>,
    /// txn-cas: transactions whose compare held.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cas_succeeded: Option<u64>,
    /// watch: delivery latency from a put's start to a watcher's receipt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery: Option<LatencySummary>,
    /// watch: events expected (acknowledged puts times watchers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliveries_expected: Option<u64>,
}

impl Report {
    pub(crate) fn new(args: &BenchArgs, stats: Stats, elapsed: Duration) -> Report {
        let seconds = elapsed.as_secs_f64().max(f64::MIN_POSITIVE);
        let failed = stats.errors.values().sum();
        Report {
            workload: args.workload,
            endpoints: args.endpoints.clone(),
            conns: args.conns,
            clients: args.clients,
            key_size: args.key_size,
            val_size: args.val_size,
            key_space: args.key_space,
            rate_limit: args.rate,
            elapsed_s: seconds,
            requests_ok: stats.ok,
            requests_failed: failed,
            throughput: stats.ok as f64 / seconds,
            latency: LatencySummary::of(&stats.latency),
            errors: stats.errors,
            cas_succeeded: (args.workload == Workload::TxnCas).then_some(stats.cas_succeeded),
            delivery: stats.delivery.as_ref().map(LatencySummary::of),
            deliveries_expected: stats.delivery.as_ref().map(|_| stats.deliveries_expected),
        }
    }

    /// The report as one JSON object.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report serialises")
    }
}

fn latency_line(name: &str, l: &LatencySummary) -> String {
    format!(
        "{name} (ms): p50 {:.2}  p90 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}  mean {:.2}",
        l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms, l.mean_ms
    )
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let workload = serde_json::to_value(self.workload).expect("serialises");
        writeln!(
            f,
            "workload {}  endpoints {}  conns {}  clients {}  key {} B  value {} B  key space {}",
            workload.as_str().unwrap_or("?"),
            self.endpoints.len(),
            self.conns,
            self.clients,
            self.key_size,
            self.val_size,
            self.key_space
        )?;
        if let Some(rate) = self.rate_limit {
            writeln!(f, "offered rate: {rate:.0} req/s")?;
        }
        writeln!(
            f,
            "requests: {} ok, {} failed in {:.2} s",
            self.requests_ok, self.requests_failed, self.elapsed_s
        )?;
        writeln!(f, "throughput: {:.1} req/s", self.throughput)?;
        writeln!(f, "{}", latency_line("latency", &self.latency))?;
        if let Some(n) = self.cas_succeeded {
            writeln!(f, "compare-and-swap: {n} succeeded")?;
        }
        if let (Some(delivery), Some(expected)) = (&self.delivery, self.deliveries_expected) {
            writeln!(f, "events delivered: {} of {expected}", delivery.count)?;
            writeln!(f, "{}", latency_line("delivery", delivery))?;
        }
        for (kind, n) in &self.errors {
            writeln!(f, "error x{n}: {kind}")?;
        }
        Ok(())
    }
}

/// A progress bar on stderr while the run lasts, when stderr is a terminal.
pub(crate) struct Progress {
    bar: Option<ProgressBar>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    pub(crate) fn start(args: &BenchArgs, total: Option<u64>, budget: Arc<Budget>) -> Progress {
        if args.no_progress || !std::io::stderr().is_terminal() {
            return Progress {
                bar: None,
                task: None,
            };
        }
        let (bar, by_time) = match (total, args.duration) {
            (Some(total), _) => (ProgressBar::new(total), false),
            (None, Some(duration)) => (ProgressBar::new(duration.as_secs().max(1)), true),
            (None, None) => (ProgressBar::new_spinner(), false),
        };
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} {msg} [{elapsed_precise}]")
                .expect("a valid template"),
        );
        let shown = bar.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                let done = budget.completed.load(Ordering::Relaxed);
                if by_time {
                    shown.set_position(budget.start.elapsed().as_secs());
                    shown.set_message(format!("{done} requests"));
                } else {
                    shown.set_position(done);
                }
            }
        });
        Progress {
            bar: Some(bar),
            task: Some(task),
        }
    }

    pub(crate) fn finish(self) {
        if let Some(task) = self.task {
            task.abort();
        }
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: percentiles come out in milliseconds from microsecond samples. Method: 1..=1000
    /// ms recorded once each.
    #[test]
    fn percentiles_are_in_milliseconds() {
        let mut histogram = crate::workload::histogram();
        for ms in 1..=1000u64 {
            histogram.record(ms * 1000).unwrap();
        }
        let summary = LatencySummary::of(&histogram);
        assert_eq!(summary.count, 1000);
        assert!((summary.p50_ms - 500.0).abs() < 1.0, "{summary:?}");
        assert!((summary.p99_ms - 990.0).abs() < 1.0, "{summary:?}");
        assert!((summary.max_ms - 1000.0).abs() < 1.0, "{summary:?}");
    }
}
