//! Automatic compaction (`--auto-compaction-mode`, `--auto-compaction-retention`), with etcd
//! 3.4's schedule. Only the leader compacts; a compaction is an ordinary Raft write, so every
//! member compacts at the same revision.
//!
//! - **periodic** (retention `R`, a duration; a plain number is hours): every `R/10` (at most
//!   6 minutes) the current revision is sampled; every `R` (at most 1 hour) the store is
//!   compacted at the oldest sample still within the window, i.e. the revision of about `R`
//!   ago. History younger than the retention is always kept.
//! - **revision** (retention `N`): every 5 minutes, compact at `current - N` if that moved.
//!
//! A member that stops leading forgets its samples and starts again when it leads (as etcd
//! pauses and resumes its compactor).

use std::collections::VecDeque;
use std::time::Duration;

use chorus_proto::etcdserverpb as pb;
use chorus_proto::internal as ipb;
use chorus_raft::Role;
use tokio::sync::watch;

use crate::config::AutoCompaction;
use crate::service::Edge;

/// How often revision mode checks (etcd's `revInterval`).
pub const REVISION_CHECK_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// What the compactor needs from the node: whether it leads, the current revision, and a way
/// to compact (a trait so that the schedule is tested on a paused clock).
pub trait Target: Send + Sync {
    fn leads(&self) -> bool;
    fn revision(&self) -> i64;
    fn compact(&self, revision: i64) -> impl Future<Output = Result<(), String>> + Send;
}

impl Target for Edge {
    fn leads(&self) -> bool {
        self.node.status().role == Some(Role::Leader)
    }

    fn revision(&self) -> i64 {
        self.node.read_store(|store| store.current_revision().get())
    }

    async fn compact(&self, revision: i64) -> Result<(), String> {
        let request = ipb::forward_request::Request::Compaction(pb::CompactionRequest {
            revision,
            physical: false,
        });
        self.write(request)
            .await
            .map(drop)
            .map_err(|status| status.message().to_string())
    }
}

/// The periodic schedule: the sampling interval and how many samples span the retention.
fn periodic_schedule(retention: Duration) -> (Duration, Duration, usize) {
    let compact_every = retention.min(Duration::from_secs(3600));
    let sample_every = compact_every / 10;
    let samples = (retention.as_nanos() / sample_every.as_nanos().max(1)) as usize + 1;
    (sample_every, compact_every, samples)
}

/// Runs the compactor until `stop` turns true.
pub async fn run<T: Target>(target: T, mode: AutoCompaction, mut stop: watch::Receiver<bool>) {
    let work = async {
        match mode {
            AutoCompaction::Disabled => std::future::pending().await,
            AutoCompaction::Periodic(retention) => periodic(&target, retention).await,
            AutoCompaction::Revision(keep) => revision(&target, keep).await,
        }
    };
    tokio::select! {
        () = work => {}
        _ = stop.wait_for(|s| *s) => {}
    }
}

async fn compact<T: Target>(target: &T, revision: i64) -> bool {
    match target.compact(revision).await {
        Ok(()) => {
            tracing::info!(revision, "auto-compacted");
            true
        }
        Err(error) => {
            // Already compacted further (by a client) or leadership moved: try again later.
            tracing::debug!(revision, %error, "auto-compaction skipped");
            false
        }
    }
}

async fn periodic<T: Target>(target: &T, retention: Duration) {
    let (sample_every, compact_every, keep) = periodic_schedule(retention);
    let mut samples: VecDeque<i64> = VecDeque::with_capacity(keep + 1);
    let mut since_compaction = Duration::ZERO;
    let mut last = 0;
    loop {
        if target.leads() {
            samples.push_back(target.revision());
            if samples.len() > keep {
                samples.pop_front();
            }
        } else {
            samples.clear();
            since_compaction = Duration::ZERO;
        }
        tokio::time::sleep(sample_every).await;
        since_compaction += sample_every;
        // Compact once the window is full (the oldest sample is a whole retention old).
        if since_compaction >= compact_every && samples.len() >= keep {
            let oldest = samples[0];
            if oldest > last && target.leads() && compact(target, oldest).await {
                last = oldest;
            }
            since_compaction = Duration::ZERO;
        }
    }
}

async fn revision<T: Target>(target: &T, keep: u64) {
    let mut last = 0;
    loop {
        tokio::time::sleep(REVISION_CHECK_INTERVAL).await;
        if !target.leads() {
            continue;
        }
        let at = target.revision() - i64::try_from(keep).unwrap_or(i64::MAX);
        if at > 0 && at != last && compact(target, at).await {
            last = at;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A node whose revision grows by one per second of (paused) time.
    #[derive(Clone, Default)]
    struct Fake {
        start: Arc<Mutex<Option<tokio::time::Instant>>>,
        follower: Arc<AtomicBool>,
        compacted: Arc<Mutex<Vec<(u64, i64)>>>,
        floor: Arc<AtomicI64>,
    }

    impl Fake {
        fn elapsed_secs(&self) -> u64 {
            let mut start = self.start.lock().unwrap();
            start
                .get_or_insert_with(tokio::time::Instant::now)
                .elapsed()
                .as_secs()
        }
    }

    impl Target for Fake {
        fn leads(&self) -> bool {
            !self.follower.load(Ordering::SeqCst)
        }
        fn revision(&self) -> i64 {
            1 + self.elapsed_secs() as i64
        }
        async fn compact(&self, revision: i64) -> Result<(), String> {
            if revision <= self.floor.load(Ordering::SeqCst) {
                return Err("etcdserver: mvcc: required revision has been compacted".into());
            }
            self.floor.store(revision, Ordering::SeqCst);
            let at = self.elapsed_secs();
            self.compacted.lock().unwrap().push((at, revision));
            Ok(())
        }
    }

    /// Goal: periodic mode keeps a whole retention of history and compacts once per retention,
    /// as etcd 3.4. Method: a 100 s retention on a paused clock with one revision per second;
    /// each compaction must be at a revision about 100 s old, never younger.
    #[tokio::test(start_paused = true)]
    async fn periodic_keeps_one_retention_of_history() {
        let fake = Fake::default();
        fake.revision();
        let (_stop_tx, stop) = watch::channel(false);
        let task = tokio::spawn(run(
            fake.clone(),
            AutoCompaction::Periodic(Duration::from_secs(100)),
            stop,
        ));
        tokio::time::sleep(Duration::from_secs(450)).await;
        task.abort();
        let compacted = fake.compacted.lock().unwrap().clone();
        assert!(compacted.len() >= 3, "{compacted:?}");
        for (at, revision) in &compacted {
            let current = 1 + *at as i64;
            let age = current - revision;
            assert!(
                (100..=110).contains(&age),
                "compacted at {revision} when at {current}"
            );
        }
        assert!(compacted.windows(2).all(|w| w[1].0 - w[0].0 >= 100));
    }

    /// Goal: revision mode compacts to `current - N` every 5 minutes, and not as a follower.
    #[tokio::test(start_paused = true)]
    async fn revision_mode_keeps_n_revisions_and_only_on_the_leader() {
        let fake = Fake::default();
        fake.revision();
        let (stop_tx, stop) = watch::channel(false);
        let task = tokio::spawn(run(fake.clone(), AutoCompaction::Revision(50), stop));
        tokio::time::sleep(Duration::from_secs(301)).await;
        assert_eq!(fake.compacted.lock().unwrap().clone(), vec![(300, 251)]);
        fake.follower.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert_eq!(
            fake.compacted.lock().unwrap().len(),
            1,
            "a follower does not compact"
        );
        stop_tx.send_replace(true);
        task.await.unwrap();
    }

    #[test]
    fn periodic_schedule_matches_etcd() {
        assert_eq!(
            periodic_schedule(Duration::from_secs(3600)),
            (Duration::from_secs(360), Duration::from_secs(3600), 11)
        );
        // Above an hour: compact hourly, sample every 6 minutes, keep the whole retention.
        assert_eq!(
            periodic_schedule(Duration::from_secs(5 * 3600)),
            (Duration::from_secs(360), Duration::from_secs(3600), 51)
        );
    }
}
