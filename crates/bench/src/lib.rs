//! `chorus bench`: a load generator that speaks the etcd v3 API, for Chorus and etcd alike.
//!
//! A run opens `--conns` HTTP/2 connections spread round-robin over `--endpoints`, starts
//! `--clients` concurrent clients spread over the connections, and issues one workload's
//! requests until `--total` requests were issued or `--duration` passed. Every request's latency
//! goes into an HDR histogram (microsecond resolution); failures are counted by gRPC code and
//! message. With `--rate` the clients together issue at most that many requests per second, and
//! latency is measured from each request's scheduled start, so a stalled server shows up in the
//! percentiles instead of silently lowering the offered load (coordinated omission).
//!
//! Workloads ([`Workload`]):
//! - `put`: puts of `--val-size` values to keys drawn from `--key-space`;
//! - `range` / `range-serializable`: single-key reads, linearizable or served locally;
//! - `txn-cas`: compare-and-swap transactions (compare the key's mod revision with the last one
//!   the client saw; put on success, read on failure);
//! - `txn-read`: transactions that only read (compare the key's version with zero; read the key
//!   and the next one on success, the key alone on failure), which etcd serves as reads;
//! - `mixed`: `--read-ratio` linearizable reads, the rest puts;
//! - `watch`: `--watchers` watch streams on one key while the clients put to it; reports the
//!   delivery latency from the put's start to each watcher's receipt;
//! - `lease`: each client grants a lease and keeps it alive over one KeepAlive stream; each
//!   request is one keep-alive round trip.
//!
//! Read workloads first write `--prefill` keys (default: the key space, at most 10,000) so that
//! reads find values.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! use clap::Parser as _;
//!
//! #[derive(clap::Parser)]
//! struct Cli {
//!     #[command(flatten)]
//!     bench: chorus_bench::BenchArgs,
//! }
//! let cli = Cli::parse_from(["bench", "put", "--clients", "10", "--total", "1000"]);
//! let report = chorus_bench::run(&cli.bench).await?;
//! println!("{report}");
//! # Ok(())
//! # }
//! ```

mod conn;
mod keys;
mod report;
mod workload;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;

pub use keys::KeyGen;
pub use report::{LatencySummary, Report};

/// What the clients do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    Put,
    Range,
    RangeSerializable,
    TxnCas,
    TxnRead,
    Mixed,
    Watch,
    Lease,
}

impl Workload {
    fn reads(self) -> bool {
        matches!(
            self,
            Workload::Range
                | Workload::RangeSerializable
                | Workload::Mixed
                | Workload::TxnCas
                | Workload::TxnRead
        )
    }
}

/// The options of `chorus bench`.
#[derive(clap::Args, Clone, Debug)]
pub struct BenchArgs {
    /// The workload to run
    #[arg(value_enum)]
    pub workload: Workload,
    /// Client endpoints, comma separated (http://host:port)
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    pub endpoints: Vec<String>,
    /// HTTP/2 connections, spread round-robin over the endpoints
    #[arg(long, default_value_t = 1)]
    pub conns: usize,
    /// Concurrent clients, spread round-robin over the connections
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// Requests to issue in all [default: 10000 unless --duration is given]
    #[arg(long)]
    pub total: Option<u64>,
    /// How long to run (for example 30s, 500ms, 2m) instead of a request count
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Requests per second for all clients together [default: as fast as possible]
    #[arg(long)]
    pub rate: Option<f64>,
    /// Bytes per key
    #[arg(long, default_value_t = 8)]
    pub key_size: usize,
    /// Bytes per value
    #[arg(long, default_value_t = 256)]
    pub val_size: usize,
    /// Distinct keys
    #[arg(long, default_value_t = 100_000)]
    pub key_space: u64,
    /// Keys in order (0, 1, 2, ...) instead of uniformly random
    #[arg(long)]
    pub sequential_keys: bool,
    /// Keys written before a read workload [default: the key space, at most 10000]
    #[arg(long)]
    pub prefill: Option<u64>,
    /// Share of reads in the mixed workload
    #[arg(long, default_value_t = 0.9)]
    pub read_ratio: f64,
    /// Watch streams of the watch workload
    #[arg(long, default_value_t = 100)]
    pub watchers: usize,
    /// TTL in seconds of the leases of the lease workload
    #[arg(long, default_value_t = 60)]
    pub lease_ttl: i64,
    /// Print the report as JSON
    #[arg(long)]
    pub json: bool,
    /// Never show a progress bar
    #[arg(long)]
    pub no_progress: bool,
}

/// Parses `30s`, `500ms`, `2m`, or a number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| c.is_ascii_alphabetic()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected e.g. 30s, 500ms, 2m"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("invalid duration unit {unit:?}: use ms, s, m or h")),
    };
    if !seconds.is_finite() || seconds <= 0.0 {
        return Err(format!("invalid duration {text:?}: must be positive"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

impl BenchArgs {
    /// Checks the options against each other.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.endpoints.is_empty(), "--endpoints: give at least one");
        anyhow::ensure!(self.conns >= 1, "--conns must be at least 1");
        anyhow::ensure!(self.clients >= 1, "--clients must be at least 1");
        anyhow::ensure!(self.key_size >= 1, "--key-size must be at least 1");
        anyhow::ensure!(self.key_space >= 1, "--key-space must be at least 1");
        anyhow::ensure!(
            KeyGen::fits(self.key_size, self.key_space),
            "--key-size {} cannot name {} distinct keys: raise --key-size or lower --key-space",
            self.key_size,
            self.key_space
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.read_ratio),
            "--read-ratio must be between 0 and 1"
        );
        if let Some(rate) = self.rate {
            anyhow::ensure!(rate > 0.0 && rate.is_finite(), "--rate must be positive");
        }
        anyhow::ensure!(
            self.total != Some(0),
            "--total must be at least 1 (or use --duration)"
        );
        anyhow::ensure!(
            self.total.is_none() || self.duration.is_none(),
            "give --total or --duration, not both"
        );
        if self.workload == Workload::Watch {
            anyhow::ensure!(self.watchers >= 1, "--watchers must be at least 1");
            anyhow::ensure!(
                self.val_size >= 8,
                "the watch workload carries a timestamp in each value: --val-size must be at least 8"
            );
        }
        if self.workload == Workload::Lease {
            anyhow::ensure!(self.lease_ttl >= 1, "--lease-ttl must be at least 1");
        }
        Ok(())
    }

    fn prefill_count(&self) -> u64 {
        match self.prefill {
            Some(n) => n,
            None if self.workload.reads() => self.key_space.min(10_000),
            None => 0,
        }
    }
}

/// When the run stops, and the pacing of a rate-limited run.
pub(crate) struct Budget {
    total: Option<u64>,
    deadline: Option<Instant>,
    issued: AtomicU64,
    pub(crate) completed: AtomicU64,
    start: Instant,
    /// Nanoseconds between two requests under `--rate`.
    period_nanos: Option<f64>,
}

impl Budget {
    /// Claims the next request: `None` when the run is over, else the instant it is scheduled
    /// for (now when there is no rate limit).
    pub(crate) fn claim(&self) -> Option<Instant> {
        let n = self.issued.fetch_add(1, Ordering::Relaxed);
        if self.total.is_some_and(|total| n >= total) {
            return None;
        }
        let now = Instant::now();
        if self.deadline.is_some_and(|deadline| now >= deadline) {
            return None;
        }
        Some(match self.period_nanos {
            Some(period) => self.start + Duration::from_nanos((n as f64 * period) as u64),
            None => now,
        })
    }
}

async fn connect(args: &BenchArgs) -> anyhow::Result<Vec<conn::Connection>> {
    let mut connections = Vec::with_capacity(args.conns);
    for i in 0..args.conns {
        let url = &args.endpoints[i % args.endpoints.len()];
        connections.push(conn::Connection::open(url).await?);
    }
    Ok(connections)
}

/// Runs the benchmark the arguments describe and reports what it measured.
pub async fn run(args: &BenchArgs) -> anyhow::Result<Report> {
    args.validate()?;
    let connections = connect(args).await?;
    let keys = Arc::new(KeyGen::new(
        args.key_size,
        args.key_space,
        args.sequential_keys,
    ));
    let prefill = args.prefill_count();
    if prefill > 0 {
        workload::prefill(&connections, &keys, prefill, args.val_size)
            .await
            .context("prefill the keys read by the workload")?;
    }
    let total = match (args.total, args.duration) {
        (None, None) => Some(10_000),
        (total, _) => total,
    };
    let start = Instant::now();
    let budget = Arc::new(Budget {
        total,
        deadline: args.duration.map(|d| start + d),
        issued: AtomicU64::new(0),
        completed: AtomicU64::new(0),
        start,
        period_nanos: args.rate.map(|rate| 1e9 / rate),
    });
    let progress = report::Progress::start(args, total, budget.clone());
    let outcome = workload::run(args, &connections, keys, budget.clone(), start).await;
    progress.finish();
    let outcome = outcome?;
    Ok(Report::new(args, outcome, start.elapsed()))
}
