//! Disk latency histograms, under etcd's metric names and buckets so that the dashboards and
//! alerts operators built for etcd read them unchanged. They live in the process's default
//! Prometheus registry; a server exposes them with `prometheus::gather`.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus::{Histogram, HistogramOpts};

/// A WAL fsync slower than this is logged, as etcd logs a "slow fdatasync".
pub const SLOW_FSYNC: Duration = Duration::from_secs(1);

/// etcd's disk buckets: 1 ms doubling up to about 8 s.
fn disk_histogram(name: &str, help: &str) -> Histogram {
    let buckets = prometheus::exponential_buckets(0.001, 2.0, 14).expect("valid buckets");
    let histogram = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("a valid histogram");
    // Registered once per process (the statics are lazy); a clash would be a programming error
    // in this module, which the tests would show, so it is not fatal at run time.
    if let Err(error) = prometheus::register(Box::new(histogram.clone())) {
        tracing::warn!(%error, metric = name, "could not register a metric");
    }
    histogram
}

/// The time of each fsync of the write-ahead log.
pub static WAL_FSYNC_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    disk_histogram(
        "etcd_disk_wal_fsync_duration_seconds",
        "The latency distributions of fsync called by WAL.",
    )
});

/// The time of each commit of the MVCC store's engine (with its fsync when durable).
pub static BACKEND_COMMIT_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    disk_histogram(
        "etcd_disk_backend_commit_duration_seconds",
        "The latency distributions of commit called by backend.",
    )
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histograms_are_gathered_under_etcds_names() {
        WAL_FSYNC_SECONDS.observe(0.003);
        BACKEND_COMMIT_SECONDS.observe(0.02);
        let families = prometheus::gather();
        for name in [
            "etcd_disk_wal_fsync_duration_seconds",
            "etcd_disk_backend_commit_duration_seconds",
        ] {
            let family = families
                .iter()
                .find(|f| f.name() == name)
                .unwrap_or_else(|| panic!("{name} is not gathered"));
            let histogram = family.get_metric()[0].get_histogram();
            assert!(histogram.get_sample_count() >= 1, "{name} has no sample");
            assert_eq!(histogram.get_bucket().len(), 14, "{name}'s buckets");
            assert_eq!(histogram.get_bucket()[0].upper_bound(), 0.001);
        }
    }
}
