//! Watches that survive disconnects: a [`Watcher`] yields batches of events in revision order
//! and, when its stream breaks, reopens it on another endpoint from the last delivered revision
//! plus one, so no event is lost or repeated. Compaction of the revisions it still needs is
//! reported as [`Error::Compacted`] and ends the watch; events are never skipped silently.

use std::time::Duration;

use bytes::Bytes;
use chorus_proto::etcdserverpb as pb;
use chorus_proto::mvccpb;
use pb::watch_client::WatchClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::client::Client;
use crate::error::{Error, Failure, Result, classify};
use crate::kv::prefix_end;

/// Options of [`Client::watch`].
#[derive(Debug, Clone, Default)]
pub struct WatchOptions {
    /// Every key starting with the given key.
    pub prefix: bool,
    /// An explicit range end (exclusive); ignored when `prefix` is set.
    pub range_end: Option<Vec<u8>>,
    /// First revision to deliver (0: changes after the watch is created).
    pub start_revision: i64,
    /// Include each event's previous key-value.
    pub prev_kv: bool,
    /// Ask the server for periodic progress notifications (empty batches).
    pub progress_notify: bool,
    /// Leave out puts.
    pub no_put: bool,
    /// Leave out deletes.
    pub no_delete: bool,
}

impl WatchOptions {
    /// Every key with the given prefix, from now.
    pub fn prefix() -> WatchOptions {
        WatchOptions {
            prefix: true,
            ..Default::default()
        }
    }

    /// Starting at `revision`.
    pub fn from_revision(mut self, revision: i64) -> WatchOptions {
        self.start_revision = revision;
        self
    }
}

/// Events of one revision range, in order. An empty batch is a progress notification: every
/// event up to `revision` has been delivered.
#[derive(Debug, Clone, PartialEq)]
pub struct WatchBatch {
    /// The store's revision when the server sent the batch.
    pub revision: i64,
    /// The events.
    pub events: Vec<mvccpb::Event>,
}

/// A resuming watch. Dropping it cancels the watch.
#[derive(Debug)]
pub struct Watcher {
    batches: mpsc::Receiver<Result<WatchBatch>>,
    task: tokio::task::JoinHandle<()>,
}

impl Watcher {
    /// The next batch; `None` after a final error has been returned.
    pub async fn next(&mut self) -> Option<Result<WatchBatch>> {
        self.batches.recv().await
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Batches waiting for the caller; the server's stream is not read while this is full, which
/// pushes back through HTTP/2 flow control rather than growing memory.
const BATCHES_QUEUED_MAX: usize = 64;

impl Client {
    /// Watches a key or range.
    pub fn watch(&self, key: impl AsRef<[u8]>, options: WatchOptions) -> Watcher {
        let (sender, batches) = mpsc::channel(BATCHES_QUEUED_MAX);
        let key = Bytes::copy_from_slice(key.as_ref());
        let task = tokio::spawn(watch_loop(self.clone(), key, options, sender));
        Watcher { batches, task }
    }
}

/// How one stream ended.
enum End {
    /// Nobody listens any more.
    Gone,
    /// A final error, already sent.
    Final,
    /// The stream broke; reconnect.
    Broken(tonic::Status),
}

async fn watch_loop(
    client: Client,
    key: Bytes,
    options: WatchOptions,
    sender: mpsc::Sender<Result<WatchBatch>>,
) {
    let mut next_revision = options.start_revision;
    let mut avoid = None;
    let mut backoff = Duration::from_millis(50);
    loop {
        if let Some((index, channel)) = client.stream_endpoint(avoid) {
            let request = create_request(&key, &options, next_revision);
            match watch_on(channel, request, &sender, &mut next_revision).await {
                End::Gone | End::Final => return,
                End::Broken(status) => {
                    tracing::debug!(%status, next_revision, "watch stream broke; resuming");
                    client.report(index, false);
                    avoid = Some(index);
                }
            }
        }
        tokio::select! {
            () = sender.closed() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

fn create_request(key: &Bytes, options: &WatchOptions, start_revision: i64) -> pb::WatchRequest {
    let range_end = if options.prefix {
        prefix_end(key)
    } else {
        options.range_end.clone().unwrap_or_default()
    };
    let mut filters = Vec::new();
    if options.no_put {
        filters.push(pb::watch_create_request::FilterType::Noput as i32);
    }
    if options.no_delete {
        filters.push(pb::watch_create_request::FilterType::Nodelete as i32);
    }
    pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
            pb::WatchCreateRequest {
                key: key.clone(),
                range_end: range_end.into(),
                start_revision,
                progress_notify: options.progress_notify,
                filters,
                prev_kv: options.prev_kv,
                ..Default::default()
            },
        )),
    }
}

/// Runs one watch stream, advancing `next_revision` past every delivered event.
async fn watch_on(
    channel: tonic::transport::Channel,
    request: pb::WatchRequest,
    sender: &mpsc::Sender<Result<WatchBatch>>,
    next_revision: &mut i64,
) -> End {
    // The request side stays open for the stream's life: closing it ends the watch on etcd.
    let (requests, receiver) = mpsc::channel(1);
    if requests.send(request).await.is_err() {
        return End::Broken(tonic::Status::cancelled("request stream closed"));
    }
    let mut responses = match WatchClient::new(channel)
        .watch(ReceiverStream::new(receiver))
        .await
    {
        Ok(response) => response.into_inner(),
        Err(status) => return fail(status, sender).await,
    };
    loop {
        let message = tokio::select! {
            () = sender.closed() => return End::Gone,
            message = responses.message() => message,
        };
        let response = match message {
            Ok(Some(response)) => response,
            Ok(None) => return End::Broken(tonic::Status::unavailable("watch stream ended")),
            Err(status) => return fail(status, sender).await,
        };
        if let Some(end) = handle_response(response, sender, next_revision).await {
            drop(requests);
            return end;
        }
    }
}

/// Broken streams are resumed; definite errors (unimplemented, permission denied) end the watch.
async fn fail(status: tonic::Status, sender: &mpsc::Sender<Result<WatchBatch>>) -> End {
    if classify(&status) == Failure::Definite {
        let _ = sender.send(Err(Error::from_status(&status))).await;
        End::Final
    } else {
        End::Broken(status)
    }
}

async fn handle_response(
    response: pb::WatchResponse,
    sender: &mpsc::Sender<Result<WatchBatch>>,
    next_revision: &mut i64,
) -> Option<End> {
    let revision = response.header.as_ref().map(|h| h.revision).unwrap_or(0);
    if response.compact_revision != 0 {
        let error = Error::Compacted {
            compact_revision: response.compact_revision,
        };
        let _ = sender.send(Err(error)).await;
        return Some(End::Final);
    }
    if response.canceled {
        let reason = response.cancel_reason;
        let _ = sender.send(Err(Error::WatchCanceled { reason })).await;
        return Some(End::Final);
    }
    if response.created {
        // A watch "from now" is pinned to the creation revision, so a resumed stream starts
        // right after it even if no event came before the disconnect.
        if *next_revision == 0 {
            *next_revision = revision + 1;
        }
        return None;
    }
    match response.events.last().and_then(|e| e.kv.as_ref()) {
        Some(kv) => *next_revision = kv.mod_revision + 1,
        // A progress notification: everything up to `revision` was delivered.
        None => *next_revision = (*next_revision).max(revision + 1),
    }
    let batch = WatchBatch {
        revision,
        events: response.events,
    };
    if sender.send(Ok(batch)).await.is_err() {
        return Some(End::Gone);
    }
    None
}
