//! The clients of a run: each issues one workload's requests until the budget is spent.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use chorus_proto::etcdserverpb as pb;
use chorus_proto::etcdserverpb::kv_client::KvClient;
use chorus_proto::etcdserverpb::lease_client::LeaseClient;
use chorus_proto::etcdserverpb::watch_client::WatchClient;
use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

use crate::conn::Connection;
use crate::{BenchArgs, Budget, KeyGen, Workload};

/// Latencies are recorded in microseconds, up to an hour, with 3 significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

fn record(histogram: &mut Histogram<u64>, elapsed: Duration) {
    let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    histogram.saturating_record(micros.max(1));
}

/// What the clients measured.
pub(crate) struct Stats {
    pub latency: Histogram<u64>,
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
    /// Compare-and-swap transactions whose compare held.
    pub cas_succeeded: u64,
    /// Watch workload: each event's delivery latency, and how many were expected.
    pub delivery: Option<Histogram<u64>>,
    pub deliveries_expected: u64,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            latency: histogram(),
            ok: 0,
            errors: BTreeMap::new(),
            cas_succeeded: 0,
            delivery: None,
            deliveries_expected: 0,
        }
    }

    fn error(&mut self, kind: String) {
        *self.errors.entry(kind).or_default() += 1;
    }

    fn merge(&mut self, other: Stats) {
        self.latency
            .add(&other.latency)
            .expect("histograms of one run have the same bounds");
        self.ok += other.ok;
        for (kind, n) in other.errors {
            *self.errors.entry(kind).or_default() += n;
        }
        self.cas_succeeded += other.cas_succeeded;
    }
}

/// A failed request, by gRPC code and message (etcd's error text).
fn kind(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

/// Writes keys `0..count` (with as many concurrent writers as there are connections).
pub(crate) async fn prefill(
    connections: &[Connection],
    keys: &Arc<KeyGen>,
    count: u64,
    val_size: usize,
) -> anyhow::Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let value = Bytes::from(vec![b'v'; val_size]);
    let mut tasks = tokio::task::JoinSet::new();
    for connection in connections.iter().cycle().take(connections.len() * 4) {
        let mut kv = KvClient::with_origin(connection.clone(), connection.origin());
        let (next, keys, value) = (next.clone(), keys.clone(), value.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return Ok::<(), tonic::Status>(());
                }
                kv.put(pb::PutRequest {
                    key: keys.key(i),
                    value: value.clone(),
                    ..Default::default()
                })
                .await?;
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.context("a prefill task failed")??;
    }
    Ok(())
}

struct Client {
    args: Arc<BenchArgs>,
    connection: Connection,
    keys: Arc<KeyGen>,
    budget: Arc<Budget>,
    start: Instant,
    rng: StdRng,
    stats: Stats,
}

/// The start of a run as a timestamp the watch workload writes into its values.
fn stamp(start: Instant, at: Instant, val_size: usize) -> Bytes {
    let nanos = at.saturating_duration_since(start).as_nanos() as u64;
    let mut value = vec![b'w'; val_size];
    value[..8].copy_from_slice(&nanos.to_be_bytes());
    Bytes::from(value)
}

impl Client {
    async fn run(mut self) -> Stats {
        match self.args.workload {
            Workload::Lease => self.run_lease().await,
            _ => self.run_kv().await,
        }
        self.stats
    }

    /// Waits for the next scheduled request; `None` when the run is over.
    async fn next_slot(&self) -> Option<Instant> {
        let scheduled = self.budget.claim()?;
        if scheduled > Instant::now() {
            tokio::time::sleep_until(scheduled.into()).await;
        }
        Some(scheduled)
    }

    fn done(&mut self, scheduled: Instant, result: Result<(), String>) {
        record(&mut self.stats.latency, scheduled.elapsed());
        match result {
            Ok(()) => self.stats.ok += 1,
            Err(kind) => self.stats.error(kind),
        }
        self.budget.completed.fetch_add(1, Ordering::Relaxed);
    }

    async fn run_kv(&mut self) {
        let mut kv = KvClient::with_origin(self.connection.clone(), self.connection.origin());
        let value = Bytes::from(vec![b'v'; self.args.val_size]);
        let watch_key = self.keys.key(0);
        let mut seen: HashMap<Bytes, i64> = HashMap::new();
        while let Some(scheduled) = self.next_slot().await {
            let key = self.keys.next(&mut self.rng);
            let read = match self.args.workload {
                Workload::Range => Some(false),
                Workload::RangeSerializable => Some(true),
                Workload::Mixed => {
                    Some(false).filter(|_| self.rng.random_bool(self.args.read_ratio))
                }
                _ => None,
            };
            let result = match (self.args.workload, read) {
                (_, Some(serializable)) => kv
                    .range(pb::RangeRequest {
                        key,
                        serializable,
                        ..Default::default()
                    })
                    .await
                    .map(drop),
                (Workload::TxnCas, _) => {
                    let last = seen.get(&key).copied().unwrap_or(0);
                    match kv.txn(cas(key.clone(), last, value.clone())).await {
                        Ok(response) => {
                            let response = response.into_inner();
                            if let Some(revision) = cas_outcome(&response) {
                                seen.insert(key, revision);
                            }
                            if response.succeeded {
                                self.stats.cas_succeeded += 1;
                            }
                            Ok(())
                        }
                        Err(status) => Err(status),
                    }
                }
                (Workload::TxnRead, _) => {
                    let next = self.keys.next(&mut self.rng);
                    match kv.txn(read_txn(key, next)).await {
                        Ok(response) if response.get_ref().responses.is_empty() => {
                            Err(tonic::Status::internal("a read transaction read nothing"))
                        }
                        Ok(_) => Ok(()),
                        Err(status) => Err(status),
                    }
                }
                (Workload::Watch, _) => kv
                    .put(pb::PutRequest {
                        key: watch_key.clone(),
                        value: stamp(self.start, scheduled, self.args.val_size),
                        ..Default::default()
                    })
                    .await
                    .map(drop),
                _ => kv
                    .put(pb::PutRequest {
                        key,
                        value: value.clone(),
                        ..Default::default()
                    })
                    .await
                    .map(drop),
            };
            self.done(scheduled, result.map_err(|s| kind(&s)));
        }
    }

    async fn run_lease(&mut self) {
        let mut lease = LeaseClient::with_origin(self.connection.clone(), self.connection.origin());
        let granted = lease
            .lease_grant(pb::LeaseGrantRequest {
                ttl: self.args.lease_ttl,
                id: 0,
            })
            .await;
        let id = match granted {
            Ok(response) => response.into_inner().id,
            Err(status) => {
                self.stats.error(format!("lease grant: {}", kind(&status)));
                return;
            }
        };
        let (tx, rx) = mpsc::channel(1);
        // A first renewal (not measured) goes in before the stream opens: a server may send
        // the stream's headers only with its first answer (etcd does), and the call waits for
        // them.
        let _ = tx.try_send(pb::LeaseKeepAliveRequest { id });
        let mut responses = match lease.lease_keep_alive(ReceiverStream::new(rx)).await {
            Ok(response) => response.into_inner(),
            Err(status) => {
                self.stats
                    .error(format!("lease keep-alive stream: {}", kind(&status)));
                return;
            }
        };
        if let Err(status) = responses.message().await {
            self.stats
                .error(format!("lease keep-alive stream: {}", kind(&status)));
            return;
        }
        while let Some(scheduled) = self.next_slot().await {
            let result = async {
                tx.send(pb::LeaseKeepAliveRequest { id })
                    .await
                    .map_err(|_| "keep-alive stream closed".to_string())?;
                match responses.message().await {
                    Ok(Some(answer)) if answer.ttl > 0 => Ok(()),
                    Ok(Some(_)) => Err("keep-alive: the lease expired or is unknown".to_string()),
                    Ok(None) => Err("keep-alive stream ended".to_string()),
                    Err(status) => Err(kind(&status)),
                }
            }
            .await;
            self.done(scheduled, result);
        }
        drop(tx);
        let _ = lease.lease_revoke(pb::LeaseRevokeRequest { id }).await;
    }
}

/// A compare-and-swap: put `value` if `key` was last modified at `mod_revision` (0: absent),
/// else read it.
fn cas(key: Bytes, mod_revision: i64, value: Bytes) -> pb::TxnRequest {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    use pb::request_op::Request as Op;
    pb::TxnRequest {
        compare: vec![pb::Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Mod as i32,
            key: key.clone(),
            target_union: Some(TargetUnion::ModRevision(mod_revision)),
            ..Default::default()
        }],
        success: vec![pb::RequestOp {
            request: Some(Op::RequestPut(pb::PutRequest {
                key: key.clone(),
                value,
                ..Default::default()
            })),
        }],
        failure: vec![pb::RequestOp {
            request: Some(Op::RequestRange(pb::RangeRequest {
                key,
                ..Default::default()
            })),
        }],
    }
}

/// A transaction that only reads: if `key` exists (its version is above zero), read it and
/// `other`; else read `key` alone.
fn read_txn(key: Bytes, other: Bytes) -> pb::TxnRequest {
    use pb::compare::{CompareResult, CompareTarget, TargetUnion};
    use pb::request_op::Request as Op;
    let read = |key: &Bytes| pb::RequestOp {
        request: Some(Op::RequestRange(pb::RangeRequest {
            key: key.clone(),
            ..Default::default()
        })),
    };
    pb::TxnRequest {
        compare: vec![pb::Compare {
            result: CompareResult::Greater as i32,
            target: CompareTarget::Version as i32,
            key: key.clone(),
            target_union: Some(TargetUnion::Version(0)),
            ..Default::default()
        }],
        success: vec![read(&key), read(&other)],
        failure: vec![read(&key)],
    }
}

/// The key's mod revision after a compare-and-swap: the put's revision, or the one read.
fn cas_outcome(response: &pb::TxnResponse) -> Option<i64> {
    use pb::response_op::Response as R;
    if response.succeeded {
        return response.header.as_ref().map(|h| h.revision);
    }
    match response.responses.first()?.response.as_ref()? {
        R::ResponseRange(range) => Some(range.kvs.first().map_or(0, |kv| kv.mod_revision)),
        _ => None,
    }
}

/// One watch stream on `key`: records each event's delivery latency until told to stop.
async fn watcher(
    connection: Connection,
    key: Bytes,
    start: Instant,
    delivered: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
    ready: mpsc::Sender<()>,
) -> anyhow::Result<Histogram<u64>> {
    let mut client = WatchClient::with_origin(connection.clone(), connection.origin());
    let (tx, rx) = mpsc::channel(1);
    tx.send(pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
            pb::WatchCreateRequest {
                key,
                ..Default::default()
            },
        )),
    })
    .await
    .context("send the watch request")?;
    let mut stream = client
        .watch(ReceiverStream::new(rx))
        .await
        .context("open a watch stream")?
        .into_inner();
    let created = stream.message().await.context("watch create")?;
    anyhow::ensure!(
        created.is_some_and(|c| c.created),
        "the server did not confirm the watch"
    );
    let _ = ready.send(()).await;
    let mut latency = histogram();
    loop {
        tokio::select! {
            message = stream.message() => {
                let Some(message) = message.context("watch stream")? else { break };
                let now = Instant::now();
                for event in &message.events {
                    let Some(kv) = &event.kv else { continue };
                    let Some(stamp) = kv.value.get(..8) else { continue };
                    let nanos = u64::from_be_bytes(stamp.try_into().expect("8 bytes"));
                    let sent = start + Duration::from_nanos(nanos);
                    record(&mut latency, now.saturating_duration_since(sent));
                    delivered.fetch_add(1, Ordering::Relaxed);
                }
            }
            _ = stop.changed() => break,
        }
    }
    drop(tx);
    Ok(latency)
}

/// How long the watch workload waits for the last events once no new one arrives.
const DELIVERY_GRACE: Duration = Duration::from_secs(10);

/// Runs the clients (and the watchers of the watch workload) and merges what they measured.
pub(crate) async fn run(
    args: &BenchArgs,
    connections: &[Connection],
    keys: Arc<KeyGen>,
    budget: Arc<Budget>,
    start: Instant,
) -> anyhow::Result<Stats> {
    let args = Arc::new(args.clone());
    let delivered = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut watchers = tokio::task::JoinSet::new();
    if args.workload == Workload::Watch {
        let (ready_tx, mut ready_rx) = mpsc::channel(args.watchers);
        for i in 0..args.watchers {
            watchers.spawn(watcher(
                connections[i % connections.len()].clone(),
                keys.key(0),
                start,
                delivered.clone(),
                stop_rx.clone(),
                ready_tx.clone(),
            ));
        }
        drop(ready_tx);
        let mut confirmed = 0;
        while confirmed < args.watchers && ready_rx.recv().await.is_some() {
            confirmed += 1;
        }
        if confirmed < args.watchers {
            // A watcher ended before its watch was confirmed: the run cannot measure delivery.
            while let Some(joined) = watchers.join_next().await {
                if let Ok(Err(error)) = joined {
                    return Err(error.context("start the watchers"));
                }
            }
            anyhow::bail!(
                "start the watchers: only {confirmed} of {} confirmed",
                args.watchers
            );
        }
    }
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..args.clients {
        let client = Client {
            args: args.clone(),
            connection: connections[i % connections.len()].clone(),
            keys: keys.clone(),
            budget: budget.clone(),
            start,
            rng: StdRng::from_os_rng(),
            stats: Stats::new(),
        };
        clients.spawn(client.run());
    }
    let mut stats = Stats::new();
    while let Some(joined) = clients.join_next().await {
        stats.merge(joined.context("a client task failed")?);
    }
    if args.workload == Workload::Watch {
        let expected = stats.ok * args.watchers as u64;
        let mut last = (delivered.load(Ordering::Relaxed), Instant::now());
        while last.0 < expected && last.1.elapsed() < DELIVERY_GRACE {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = delivered.load(Ordering::Relaxed);
            if now != last.0 {
                last = (now, Instant::now());
            }
        }
        stop_tx.send_replace(true);
        let mut delivery = histogram();
        while let Some(joined) = watchers.join_next().await {
            match joined.context("a watcher task failed")? {
                Ok(latency) => delivery.add(&latency).expect("same bounds"),
                Err(error) => stats.error(format!("watcher: {error:#}")),
            }
        }
        stats.delivery = Some(delivery);
        stats.deliveries_expected = expected;
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: the compare-and-swap follows the key's revision whichever branch ran.
    #[test]
    fn cas_outcome_tracks_the_mod_revision() {
        let success = pb::TxnResponse {
            header: Some(pb::ResponseHeader {
                revision: 42,
                ..Default::default()
            }),
            succeeded: true,
            ..Default::default()
        };
        assert_eq!(cas_outcome(&success), Some(42));
        let failure = pb::TxnResponse {
            succeeded: false,
            responses: vec![pb::ResponseOp {
                response: Some(pb::response_op::Response::ResponseRange(
                    pb::RangeResponse {
                        kvs: vec![chorus_proto::mvccpb::KeyValue {
                            mod_revision: 7,
                            ..Default::default()
                        }],
                        ..Default::default()
                    },
                )),
            }],
            ..Default::default()
        };
        assert_eq!(cas_outcome(&failure), Some(7));
        let request = cas(Bytes::from_static(b"k"), 7, Bytes::from_static(b"v"));
        assert_eq!(request.compare.len(), 1);
        assert_eq!(request.success.len(), 1);
        assert_eq!(request.failure.len(), 1);
    }

    /// Goal: a watch value carries the instant it was scheduled, read back exactly.
    #[test]
    fn stamps_round_trip() {
        let start = Instant::now();
        let at = start + Duration::from_millis(1234);
        let value = stamp(start, at, 16);
        assert_eq!(value.len(), 16);
        let nanos = u64::from_be_bytes(value[..8].try_into().unwrap());
        assert_eq!(nanos, 1_234_000_000);
    }
}
