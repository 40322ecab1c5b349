//! One client stream of `Watch.Watch`: a task that reads the client's requests, forwards what
//! the hub queued for the stream's watchers, catches unsynced watchers up from the history, and
//! sends progress notifications.
//!
//! Ordering per watcher: the hub queues a watcher's events only while it is synced, and a
//! watcher becomes unsynced only when its events stop being queued. So once the task has seen a
//! watcher unsynced, it forwards everything queued (`drain`) before sending the history it read
//! from the watcher's `next` revision; the
//! created response is sent before the new watcher is synced, and a canceled response after the
//! watcher's queued events. Progress responses go through the same queue as events, under the hub
//! lock, so that their revision never runs ahead of the events queued before them.

use std::collections::HashMap;
use std::sync::Arc;

use chorus_proto::etcdserverpb as pb;
use chorus_storage::mvcc::Revision;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use super::hub::{CatchUp, Hub, Outbound, StreamHandle};
use super::select::{WatchSpec, fragments, pack};

/// The client is gone (its response stream was dropped).
#[derive(Debug)]
pub struct Closed;

/// What woke the task.
enum Step {
    Queued(Outbound),
    Request(pb::WatchRequest),
    ClientDone,
    Wake,
    Tick,
    Stopped,
}

/// The state of one stream's task.
pub struct StreamTask {
    hub: Arc<Hub>,
    handle: StreamHandle,
    out: mpsc::Sender<Result<pb::WatchResponse, Status>>,
    /// The watchers that asked for progress notifications, and whether they got no events since
    /// the last tick (etcd sends them a notification only then).
    quiet: HashMap<i64, bool>,
    /// A `WatchProgressRequest` waits until every watcher of the stream is synced.
    progress_pending: bool,
}

impl StreamTask {
    pub fn new(hub: Arc<Hub>, out: mpsc::Sender<Result<pb::WatchResponse, Status>>) -> StreamTask {
        let handle = hub.open_stream();
        StreamTask {
            hub,
            handle,
            out,
            quiet: HashMap::new(),
            progress_pending: false,
        }
    }

    /// Serves the stream until the client closes it or the node stops; dropping the task then
    /// removes every watcher of the stream.
    pub async fn run(mut self, mut inbound: Streaming<pb::WatchRequest>) {
        let interval = self.hub.config().progress_notify_interval;
        let start = tokio::time::Instant::now() + interval;
        let mut ticker = tokio::time::interval_at(start, interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let wake = self.handle.wake.clone();
        let mut stopped = self.hub.stopped();
        loop {
            if self.progress_pending {
                self.progress_pending = !self.hub.queue_progress(self.handle.id, -1);
            }
            let step = tokio::select! {
                Some(outbound) = self.handle.rx.recv() => Step::Queued(outbound),
                request = inbound.message() => match request {
                    Ok(Some(request)) => Step::Request(request),
                    Ok(None) => Step::ClientDone,
                    Err(status) => {
                        tracing::debug!(%status, "watch stream ended by the client");
                        Step::ClientDone
                    }
                },
                () = wake.notified() => Step::Wake,
                _ = ticker.tick() => Step::Tick,
                _ = stopped.wait_for(|s| *s) => Step::Stopped,
            };
            let result = match step {
                Step::Queued(outbound) => self.forward(outbound).await,
                Step::Request(request) => self.handle_request(request).await,
                Step::Wake => self.catch_up().await,
                Step::Tick => {
                    self.progress_tick();
                    Ok(())
                }
                Step::ClientDone | Step::Stopped => return,
            };
            if result.is_err() {
                return;
            }
        }
    }

    /// A response header as etcd fills it for watch responses.
    fn header(&self, revision: Revision) -> Option<pb::ResponseHeader> {
        let node = self.hub.node();
        Some(pb::ResponseHeader {
            cluster_id: node.cluster_id,
            member_id: node.member_id.get(),
            revision: revision.get(),
            raft_term: node.status().term.get(),
        })
    }

    async fn send(&self, response: pb::WatchResponse, fragment: bool) -> Result<(), Closed> {
        let parts = if fragment {
            fragments(response, self.hub.config().response_bytes_max)
        } else {
            vec![response]
        };
        for part in parts {
            self.out.send(Ok(part)).await.map_err(|_| Closed)?;
        }
        Ok(())
    }

    async fn forward(&mut self, outbound: Outbound) -> Result<(), Closed> {
        match outbound {
            Outbound::Events {
                watch_id,
                revision,
                events,
                fragment,
            } => {
                self.mark_sent(watch_id);
                let response = pb::WatchResponse {
                    header: self.header(revision),
                    watch_id,
                    events,
                    ..Default::default()
                };
                self.send(response, fragment).await
            }
            Outbound::Progress { watch_id, revision } => {
                let response = pb::WatchResponse {
                    header: self.header(revision),
                    watch_id,
                    ..Default::default()
                };
                self.send(response, false).await
            }
        }
    }

    fn mark_sent(&mut self, watch_id: i64) {
        if let Some(quiet) = self.quiet.get_mut(&watch_id) {
            *quiet = false;
        }
    }

    /// Forwards everything queued so far.
    async fn drain(&mut self) -> Result<(), Closed> {
        while let Ok(outbound) = self.handle.rx.try_recv() {
            self.forward(outbound).await?;
        }
        Ok(())
    }

    async fn handle_request(&mut self, request: pb::WatchRequest) -> Result<(), Closed> {
        use pb::watch_request::RequestUnion as R;
        match request.request_union {
            Some(R::CreateRequest(create)) => self.create(create).await,
            Some(R::CancelRequest(cancel)) => self.cancel(cancel.watch_id).await,
            Some(R::ProgressRequest(_)) => {
                self.progress_pending = !self.hub.queue_progress(self.handle.id, -1);
                Ok(())
            }
            // etcd ignores a request without a body rather than ending the stream.
            None => Ok(()),
        }
    }

    async fn create(&mut self, create: pb::WatchCreateRequest) -> Result<(), Closed> {
        let added = WatchSpec::from_request(&create).and_then(|spec| {
            self.hub
                .add_watcher(self.handle.id, create.watch_id, create.start_revision, spec)
        });
        match added {
            Ok((watch_id, revision)) => {
                if create.progress_notify {
                    self.quiet.insert(watch_id, true);
                }
                let created = pb::WatchResponse {
                    header: self.header(revision),
                    watch_id,
                    created: true,
                    ..Default::default()
                };
                self.send(created, false).await?;
                self.catch_up().await
            }
            Err(error) => {
                // etcd answers with a created response that is already canceled, id -1.
                let refused = pb::WatchResponse {
                    header: self.header(self.hub.revision()),
                    watch_id: -1,
                    created: true,
                    canceled: true,
                    cancel_reason: error.to_string(),
                    ..Default::default()
                };
                self.send(refused, false).await
            }
        }
    }

    async fn cancel(&mut self, watch_id: i64) -> Result<(), Closed> {
        let (removed, revision) = self.hub.remove_watcher(self.handle.id, watch_id);
        self.quiet.remove(&watch_id);
        if !removed {
            // etcd sends nothing for an unknown id.
            return Ok(());
        }
        self.drain().await?;
        let canceled = pb::WatchResponse {
            header: self.header(revision),
            watch_id,
            canceled: true,
            ..Default::default()
        };
        self.send(canceled, false).await
    }

    /// Reads the history for every unsynced watcher of the stream until all are synced.
    async fn catch_up(&mut self) -> Result<(), Closed> {
        loop {
            let step = self.hub.catch_up_read(self.handle.id);
            // The watcher read was unsynced under the hub lock, so everything the hub queued
            // for it is in the buffer now: forward that before its history.
            self.drain().await?;
            match step {
                CatchUp::AllSynced => return Ok(()),
                CatchUp::Compacted {
                    watch_id,
                    compact_revision,
                } => {
                    self.quiet.remove(&watch_id);
                    // As etcd: the header carries no revision, the response is canceled.
                    let compacted = pb::WatchResponse {
                        header: self.header(Revision(0)),
                        watch_id,
                        compact_revision: compact_revision.get(),
                        canceled: true,
                        ..Default::default()
                    };
                    self.send(compacted, false).await?;
                }
                CatchUp::Read {
                    watch_id,
                    batch,
                    current,
                    spec,
                } => {
                    let events = spec.select(&batch.events);
                    // The last header revision is what the batch brings the watcher up to.
                    let upto = current.min(Revision(batch.next.get() - 1));
                    self.send_history(watch_id, events, upto, spec.fragment)
                        .await?;
                    self.hub
                        .advance_unsynced(self.handle.id, watch_id, batch.next);
                }
            }
        }
    }

    /// Sends events read from the history in responses of whole revisions near the size limit;
    /// each header carries the revision its response brings the watcher up to.
    async fn send_history(
        &mut self,
        watch_id: i64,
        events: Vec<chorus_proto::mvccpb::Event>,
        upto: Revision,
        fragment: bool,
    ) -> Result<(), Closed> {
        if events.is_empty() {
            return Ok(());
        }
        self.mark_sent(watch_id);
        let runs = pack(events, self.hub.config().response_bytes_max);
        let count = runs.len();
        for (i, run) in runs.into_iter().enumerate() {
            let revision = if i + 1 == count {
                upto
            } else {
                Revision(
                    run.last()
                        .and_then(|e| e.kv.as_ref())
                        .map_or(0, |kv| kv.mod_revision),
                )
            };
            let response = pb::WatchResponse {
                header: self.header(revision),
                watch_id,
                events: run,
                ..Default::default()
            };
            self.send(response, fragment).await?;
        }
        Ok(())
    }

    /// etcd's progress ticker: watchers that asked for notifications and got no events since
    /// the last tick get one, when synced.
    fn progress_tick(&mut self) {
        for (watch_id, quiet) in &mut self.quiet {
            if *quiet {
                self.hub.queue_progress(self.handle.id, *watch_id);
            }
            *quiet = true;
        }
    }
}
