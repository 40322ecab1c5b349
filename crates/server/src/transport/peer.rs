//! The tasks that send to one remote member: one for messages, one for snapshots.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use chorus_proto::peer as pb;
use chorus_proto::peer::peer_client::PeerClient;
use chorus_raft::{Message, NodeId};
use prost::Message as _;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tonic::transport::{Channel, Endpoint};

use super::convert::message_to_proto;
use super::snapshot::snapshot_chunks;
use super::stream::{self, ConnectError};
use super::{Counters, FRAME_OVERHEAD_BYTES, Shared, TransportReport};

/// The member a task sends to.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub(crate) member: NodeId,
    pub(crate) url: String,
}

/// The delay before connection attempt `attempt` (0-based) after failures: `min * 2^attempt`,
/// capped at `max`, then scaled by `jitter` in `[0.5, 1.0]` so that members that lost each other
/// at the same moment do not retry in lockstep.
pub(crate) fn backoff_delay(min: Duration, max: Duration, attempt: u32, jitter: f64) -> Duration {
    debug_assert!(
        (0.5..=1.0).contains(&jitter),
        "jitter {jitter} out of [0.5, 1]"
    );
    let factor = 2u32.saturating_pow(attempt.min(30));
    let delay = min.saturating_mul(factor).min(max);
    delay.mul_f64(jitter.clamp(0.5, 1.0))
}

/// Exponential backoff with jitter between connection attempts.
#[derive(Debug)]
struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            attempt: 0,
        }
    }

    fn next_delay(&mut self) -> Duration {
        let jitter = rand::random_range(0.5..=1.0);
        let delay = backoff_delay(self.min, self.max, self.attempt, jitter);
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// Opens a gRPC channel to the member, for a snapshot, and checks, by handshake, that it is the
/// member we meant in our cluster.
pub(crate) async fn connect(
    shared: &Shared,
    target: &Target,
) -> Result<PeerClient<Channel>, ConnectError> {
    let config = &shared.config;
    let endpoint = Endpoint::from_shared(target.url.clone())
        .map_err(|e| ConnectError::Unreachable(format!("bad URL {}: {e}", target.url)))?
        .connect_timeout(config.connect_timeout)
        .http2_keep_alive_interval(config.keepalive_interval)
        .keep_alive_timeout(config.keepalive_timeout)
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| ConnectError::Unreachable(format!("{}: {e}", target.url)))?;
    let mut client = PeerClient::new(channel)
        .max_decoding_message_size(config.frame_bytes_max)
        .max_encoding_message_size(config.frame_bytes_max);
    let request = pb::HandshakeRequest {
        from: Some(shared.local.to_proto()),
        to_member_id: target.member.get(),
        stream: pb::StreamKind::Raft as i32,
    };
    let answer = tokio::time::timeout(config.handshake_timeout, client.handshake(request))
        .await
        .map_err(|_| ConnectError::Unreachable(format!("{}: handshake timed out", target.url)))?;
    let response = match answer {
        Ok(response) => response.into_inner(),
        Err(status) if stream::is_refusal(status.code()) => {
            return Err(ConnectError::Refused(status.message().to_string()));
        }
        Err(status) => return Err(ConnectError::Unreachable(status.to_string())),
    };
    stream::check_member(
        &target.url,
        shared.local.cluster_id,
        target.member.get(),
        response.member,
    )?;
    Ok(client)
}

/// Records a failed connection and tells the node.
fn on_connect_failed(shared: &Shared, target: &Target, error: &ConnectError) {
    match error {
        ConnectError::Unreachable(_) => {
            Counters::add(&shared.counters.connect_failures, 1);
            tracing::debug!(to = %target.member, %error, "cannot reach member");
        }
        ConnectError::Refused(_) => {
            Counters::add(&shared.counters.handshake_refusals, 1);
            tracing::error!(to = %target.member, %error, "member refused this member");
        }
    }
    shared.report(TransportReport::Unreachable(target.member));
}

// ----- Batching ---------------------------------------------------------------------------

/// Limits on one batch.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BatchLimits {
    pub(crate) msgs_max: usize,
    pub(crate) bytes_max: usize,
}

/// Fills a batch starting with `first`, taking more from `next` while the limits allow. A
/// message that does not fit is returned as the carry for the next batch, so nothing is lost
/// and the order is kept. The first message always goes in, so one message above
/// `bytes_max` travels alone. `queued` (how many wait behind `first`) sizes the batch up front.
pub(crate) fn fill_batch(
    first: pb::Message,
    limits: BatchLimits,
    queued: usize,
    mut next: impl FnMut() -> Option<pb::Message>,
) -> (Vec<pb::Message>, Option<pb::Message>) {
    let mut bytes = first.encoded_len();
    let mut batch = Vec::with_capacity(queued.saturating_add(1).min(limits.msgs_max.max(1)));
    batch.push(first);
    while batch.len() < limits.msgs_max {
        let Some(message) = next() else { break };
        let len = message.encoded_len();
        if bytes + len > limits.bytes_max {
            return (batch, Some(message));
        }
        bytes += len;
        batch.push(message);
    }
    (batch, None)
}

/// Encodes a message, or drops it (counted, logged) when it cannot fit in a frame.
fn encode_checked(shared: &Shared, message: &Message) -> Option<pb::Message> {
    let frame = message_to_proto(message);
    let len = frame.encoded_len();
    if len + FRAME_OVERHEAD_BYTES > shared.config.frame_bytes_max {
        Counters::add(&shared.counters.msgs_dropped_too_large, 1);
        tracing::warn!(
            to = %message.to,
            kind = message.body.kind(),
            bytes = len,
            frame_bytes_max = shared.config.frame_bytes_max,
            "dropping a message too large for one frame"
        );
        return None;
    }
    Some(frame)
}

// ----- Message stream ---------------------------------------------------------------------

/// An open Raft message stream (see [`super::stream`]).
struct OpenStream {
    write: OwnedWriteHalf,
    /// What the member writes after accepting the handshake: only why it ended the stream.
    replies: stream::Frames,
}

/// Opens a Raft message stream to the member.
async fn open_stream(shared: &Shared, target: &Target) -> Result<OpenStream, ConnectError> {
    let handshake = pb::HandshakeRequest {
        from: Some(shared.local.to_proto()),
        to_member_id: target.member.get(),
        stream: pb::StreamKind::Raft as i32,
    };
    let opened = stream::open(&target.url, &handshake, shared.config.dial()).await?;
    Ok(OpenStream {
        write: opened.write,
        replies: opened.frames,
    })
}

/// Waits until the member ends the open stream, and says why; never, when none is open.
async fn stream_end(stream: &mut Option<OpenStream>) -> String {
    let Some(open) = stream else {
        return std::future::pending().await;
    };
    let Some(frame) = open.replies.next().await else {
        return "closed by the member".to_string();
    };
    match stream::decode::<pb::StreamReply>(frame) {
        Ok(reply) => format!(
            "ended by the member: {:?}: {}",
            tonic::Code::from(reply.code as i32),
            reply.message
        ),
        Err(error) => error.to_string(),
    }
}

/// Writes one frame within the keepalive timeout (see [`stream::write_within`]).
async fn write_frame(shared: &Shared, open: &mut OpenStream, frame: &[u8]) -> std::io::Result<()> {
    stream::write_within(&mut open.write, frame, shared.config.keepalive_timeout).await
}

/// Sends the messages queued for one member until the queue is closed (the member was removed
/// or the transport dropped).
pub(crate) async fn run_message_sender(
    shared: Arc<Shared>,
    target: Target,
    mut queue: mpsc::Receiver<Message>,
) {
    let config = &shared.config;
    let limits = BatchLimits {
        msgs_max: config.batch_msgs_max,
        bytes_max: config.batch_bytes_max,
    };
    let mut backoff = Backoff::new(config.reconnect_backoff_min, config.reconnect_backoff_max);
    let mut stream: Option<OpenStream> = None;
    let mut carry: Option<pb::Message> = None;
    let mut buf = BytesMut::new();
    // An open stream on which nothing was written for a whole tick gets an empty batch, so
    // that the member can tell a quiet sender from a vanished one.
    let mut keepalive = tokio::time::interval(config.keepalive_interval);
    keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut wrote = false;
    loop {
        let first = match carry.take() {
            Some(frame) => frame,
            None => {
                let message = tokio::select! {
                    biased;
                    message = queue.recv() => match message {
                        Some(message) => message,
                        None => break,
                    },
                    why = stream_end(&mut stream) => {
                        stream = None;
                        on_stream_lost(&shared, &target, &why);
                        continue;
                    }
                    _ = keepalive.tick() => {
                        if !std::mem::take(&mut wrote)
                            && let Some(open) = stream.as_mut()
                        {
                            buf.clear();
                            stream::put_frame(&mut buf, &pb::MessageBatch::default());
                            if let Err(error) = write_frame(&shared, open, &buf).await {
                                stream = None;
                                on_stream_lost(&shared, &target, &error.to_string());
                            }
                        }
                        continue;
                    }
                };
                match encode_checked(&shared, &message) {
                    Some(frame) => frame,
                    None => continue,
                }
            }
        };
        // The Raft loop hands over a Ready's messages one by one: let it finish, so that one
        // batch (one socket write) carries them all.
        tokio::task::yield_now().await;
        let (batch, rest) = fill_batch(first, limits, queue.len(), || {
            loop {
                let message = queue.try_recv().ok()?;
                if let Some(frame) = encode_checked(&shared, &message) {
                    return Some(frame);
                }
            }
        });
        carry = rest;
        let sending = Sending {
            shared: &shared,
            target: &target,
            queue: &queue,
        };
        if !sending
            .deliver(&mut stream, &mut backoff, &mut buf, batch)
            .await
        {
            break;
        }
        wrote = true;
    }
    // Dropping the stream closes the connection; the member sees the end of the stream.
    drop(stream);
    tracing::debug!(to = %target.member, "message sender stopped");
}

/// A stream that failed: logged, and the node told the member is unreachable.
fn on_stream_lost(shared: &Shared, target: &Target, why: &str) {
    tracing::debug!(to = %target.member, why, "Raft message stream lost");
    shared.report(TransportReport::Unreachable(target.member));
}

/// What [`Sending::deliver`] needs besides the stream it may replace.
struct Sending<'a> {
    shared: &'a Shared,
    target: &'a Target,
    queue: &'a mpsc::Receiver<Message>,
}

impl Sending<'_> {
    /// Sends one batch, connecting and reconnecting as needed. Returns false once the queue is
    /// closed while waiting, which means: stop.
    async fn deliver(
        &self,
        stream: &mut Option<OpenStream>,
        backoff: &mut Backoff,
        buf: &mut BytesMut,
        batch: Vec<pb::Message>,
    ) -> bool {
        let (shared, target) = (self.shared, self.target);
        let count = batch.len() as u64;
        buf.clear();
        stream::put_frame(buf, &pb::MessageBatch { messages: batch });
        loop {
            if stream.is_none() {
                match open_stream(shared, target).await {
                    Ok(open) => {
                        Counters::add(&shared.counters.streams_opened, 1);
                        backoff.reset();
                        tracing::debug!(to = %target.member, "connected");
                        *stream = Some(open);
                    }
                    Err(error) => {
                        on_connect_failed(shared, target, &error);
                        if !self.pause(backoff, count).await {
                            return false;
                        }
                        continue;
                    }
                }
            }
            let open = stream.as_mut().expect("connected above");
            match write_frame(shared, open, buf).await {
                Ok(()) => {
                    Counters::add(&shared.counters.msgs_sent, count);
                    Counters::add(&shared.counters.batches_sent, 1);
                    return true;
                }
                Err(error) => {
                    // The batch may be partly written; it goes again, whole, on a new stream
                    // (Raft takes a message twice as well as once).
                    *stream = None;
                    on_stream_lost(shared, target, &error.to_string());
                    if !self.pause(backoff, count).await {
                        return false;
                    }
                }
            }
        }
    }

    /// Waits before the next attempt. False if the queue was closed meanwhile: the batch of
    /// `count` messages is then dropped.
    async fn pause(&self, backoff: &mut Backoff, count: u64) -> bool {
        tokio::time::sleep(backoff.next_delay()).await;
        if self.queue.is_closed() {
            Counters::add(&self.shared.counters.msgs_dropped_send_failed, count);
            return false;
        }
        true
    }
}

// ----- Snapshots --------------------------------------------------------------------------

/// Sends the snapshots queued for one member, one at a time, each over its own connection.
/// A failure is reported, not retried: Raft asks again when the follower still needs it.
pub(crate) async fn run_snapshot_sender(
    shared: Arc<Shared>,
    target: Target,
    mut queue: mpsc::Receiver<Message>,
) {
    while let Some(message) = queue.recv().await {
        let ok = match send_snapshot(&shared, &target, &message).await {
            Ok(bytes) => {
                Counters::add(&shared.counters.snapshots_sent, 1);
                tracing::info!(to = %target.member, bytes, "snapshot sent");
                true
            }
            Err(error) => {
                Counters::add(&shared.counters.snapshots_failed, 1);
                tracing::warn!(to = %target.member, %error, "snapshot not sent");
                false
            }
        };
        shared.report(TransportReport::Snapshot {
            to: target.member,
            ok,
        });
        if !ok {
            shared.report(TransportReport::Unreachable(target.member));
        }
    }
}

async fn send_snapshot(shared: &Shared, target: &Target, message: &Message) -> Result<u64, String> {
    let mut client = connect(shared, target).await.map_err(|e| e.to_string())?;
    let chunks = snapshot_chunks(
        shared.local.to_proto(),
        message,
        shared.config.snapshot_chunk_bytes_max,
    );
    let ack = client
        .install_snapshot(tokio_stream::iter(chunks))
        .await
        .map_err(|status| format!("{}: {status}", target.url))?;
    Ok(ack.into_inner().bytes_received)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn frame(context_len: usize) -> pb::Message {
        pb::Message {
            group_id: 1,
            from: 1,
            to: 2,
            term: 1,
            body: Some(pb::message::Body::ReadIndex(pb::ReadIndex {
                context: Bytes::from(vec![7u8; context_len]),
            })),
        }
    }

    // Goal: batches respect both limits, keep the order, and lose nothing: the message that
    // does not fit is carried to the next batch. Method: fill from a queue of known sizes.
    #[test]
    fn fill_batch_respects_limits_and_carries_over() {
        let one = frame(100).encoded_len();
        let limits = BatchLimits {
            msgs_max: 3,
            bytes_max: 2 * one,
        };
        let mut queue: std::collections::VecDeque<pb::Message> =
            (0..5).map(|_| frame(100)).collect();
        let first = queue.pop_front().unwrap();
        let (batch, carry) = fill_batch(first, limits, queue.len(), || queue.pop_front());
        assert_eq!(batch.len(), 2, "byte limit stops at two");
        assert!(carry.is_some(), "the third message is carried, not lost");
        assert_eq!(queue.len(), 2);

        let limits = BatchLimits {
            msgs_max: 3,
            bytes_max: 100 * one,
        };
        let mut queue: std::collections::VecDeque<pb::Message> =
            (0..5).map(|_| frame(100)).collect();
        let first = queue.pop_front().unwrap();
        let (batch, carry) = fill_batch(first, limits, queue.len(), || queue.pop_front());
        assert_eq!(
            (batch.len(), carry.is_none(), queue.len()),
            (3, true, 2),
            "count limit"
        );

        let limits = BatchLimits {
            msgs_max: 3,
            bytes_max: 10,
        };
        let (batch, carry) = fill_batch(frame(1000), limits, 0, || Some(frame(1)));
        assert_eq!(batch.len(), 1, "an oversized first message travels alone");
        assert!(carry.is_some());
    }

    // Goal: the backoff grows exponentially from min, never exceeds max, and jitter only
    // shortens it to at most half. Method: compute delays for a range of attempts.
    #[test]
    fn backoff_is_exponential_bounded_and_jittered() {
        let (min, max) = (Duration::from_millis(10), Duration::from_millis(1000));
        assert_eq!(backoff_delay(min, max, 0, 1.0), Duration::from_millis(10));
        assert_eq!(backoff_delay(min, max, 1, 1.0), Duration::from_millis(20));
        assert_eq!(backoff_delay(min, max, 3, 1.0), Duration::from_millis(80));
        assert_eq!(backoff_delay(min, max, 7, 1.0), Duration::from_millis(1000));
        assert_eq!(
            backoff_delay(min, max, u32::MAX, 1.0),
            Duration::from_millis(1000)
        );
        assert_eq!(backoff_delay(min, max, 3, 0.5), Duration::from_millis(40));
        let mut backoff = Backoff::new(min, max);
        for _ in 0..100 {
            let delay = backoff.next_delay();
            assert!(delay <= max && delay >= min / 2, "{delay:?}");
        }
        backoff.reset();
        assert!(backoff.next_delay() <= min);
    }
}
