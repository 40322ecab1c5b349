//! etcd's v3 `Watch` service: bidirectional streams that multiplex watchers of keys and ranges,
//! served by any member from its own store (as etcd), so a watch on a follower sees the writes
//! made through the leader once this member has applied them.
//!
//! - [`select`]: what one watcher wants (key range, NOPUT/NODELETE filters, prev_kv) and
//!   etcd's fragmenting of large responses; pure functions.
//! - [`hub`]: the watchers of this member and the one task that follows the applied revision,
//!   reads each new revision's events once and fans them out to synced watchers through bounded
//!   per-stream buffers. A slow stream never blocks the hub, writers or other streams: its
//!   watchers become unsynced and catch up from the history later.
//! - [`stream`]: the task of one client stream (requests, forwarding, catch-up, progress).
//!
//! What etcd 3.4 clients see: a created response (header revision: the member's revision) before
//! any event of the watcher; events grouped per revision with that revision in the header (a
//! catch-up from history groups several revisions, as etcd); a start revision below the
//! compacted one gets the created response, then one with `compact_revision` set and `canceled`;
//! a cancel gets `canceled`; `WatchProgressRequest` gets a response with watch id -1 and the
//! current revision once every watcher of the stream is synced; `progress_notify` watchers get
//! an empty response every `--experimental-watch-progress-notify-interval` when they received
//! no events meanwhile. Refused creates (empty range, duplicate id) get a created and canceled
//! response with etcd's `cancel_reason`.
//!
//! Not here: authentication (Chorus has none yet).

pub mod hub;
pub mod select;
pub mod stream;

use std::sync::Arc;
use std::time::Duration;

use chorus_proto::etcdserverpb as pb;
use pb::watch_server::WatchServer;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::config::ServerConfig;
use crate::error::ServerError;
use crate::node::NodeHandle;
use hub::Hub;
use stream::StreamTask;

/// The limits of the watch service. `validate` rejects zeros.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchConfig {
    /// Responses the hub may queue for one stream before its watchers become unsynced (etcd's
    /// per-stream channel holds 128).
    pub stream_buffer_max: usize,
    /// Responses waiting in gRPC for the client to read them.
    pub out_buffer_max: usize,
    /// Events the hub reads from the store at once (a revision is never split).
    pub hub_events_max: usize,
    /// Events an unsynced watcher reads from the history at once.
    pub catch_up_events_max: usize,
    /// The size from which a watcher that asked for fragments gets its responses split: etcd's
    /// `--max-request-bytes`.
    pub response_bytes_max: usize,
    /// etcd's `--experimental-watch-progress-notify-interval`.
    pub progress_notify_interval: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            stream_buffer_max: 128,
            out_buffer_max: 16,
            hub_events_max: 1000,
            catch_up_events_max: 1000,
            response_bytes_max: 1_572_864,
            progress_notify_interval: Duration::from_secs(600),
        }
    }
}

/// A watch limit that cannot work.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WatchConfigError {
    #[error("watch limit {name} must be above zero")]
    Zero { name: &'static str },
}

impl WatchConfig {
    /// The watch limits of a member's configuration.
    pub fn from_server(config: &ServerConfig) -> WatchConfig {
        WatchConfig {
            response_bytes_max: usize::try_from(config.request_bytes_max).unwrap_or(usize::MAX),
            progress_notify_interval: config.watch_progress_notify_interval,
            ..WatchConfig::default()
        }
    }

    pub fn validate(&self) -> Result<(), WatchConfigError> {
        let limits = [
            ("stream_buffer_max", self.stream_buffer_max),
            ("out_buffer_max", self.out_buffer_max),
            ("hub_events_max", self.hub_events_max),
            ("catch_up_events_max", self.catch_up_events_max),
            ("response_bytes_max", self.response_bytes_max),
        ];
        if let Some((name, _)) = limits.iter().find(|(_, v)| *v == 0) {
            return Err(WatchConfigError::Zero { name });
        }
        if self.progress_notify_interval.is_zero() {
            return Err(WatchConfigError::Zero {
                name: "progress_notify_interval",
            });
        }
        Ok(())
    }
}

/// etcd's `Watch` service. Cheap to clone.
#[derive(Clone)]
pub struct WatchService {
    hub: Arc<Hub>,
}

impl WatchService {
    /// Starts the hub's task (it ends when the node stops) and returns the service.
    pub fn start(node: NodeHandle, config: WatchConfig) -> Result<WatchService, WatchConfigError> {
        config.validate()?;
        let hub = Hub::new(node, config);
        tokio::spawn(hub.clone().run());
        Ok(WatchService { hub })
    }
}

/// The gRPC server of a member's watch service, from its configuration.
pub fn server(
    node: NodeHandle,
    config: &ServerConfig,
) -> Result<WatchServer<WatchService>, WatchConfigError> {
    let service = WatchService::start(node, WatchConfig::from_server(config))?;
    Ok(WatchServer::new(service)
        .max_decoding_message_size(
            (config.request_bytes_max + crate::member::GRPC_OVERHEAD_BYTES) as usize,
        )
        .max_encoding_message_size(usize::MAX))
}

#[tonic::async_trait]
impl pb::watch_server::Watch for WatchService {
    type WatchStream = ReceiverStream<Result<pb::WatchResponse, Status>>;

    async fn watch(
        &self,
        request: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        if self.hub.node().is_learner() {
            return Err(ServerError::NotSupportedForLearner.into());
        }
        let inbound = request.into_inner();
        let (out_tx, out_rx) = mpsc::channel(self.hub.config().out_buffer_max);
        let task = StreamTask::new(self.hub.clone(), out_tx);
        tokio::spawn(task.run(inbound));
        Ok(Response::new(ReceiverStream::new(out_rx)))
    }
}
