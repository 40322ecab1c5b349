//! The request streams of a client connection run on the connection's own task.
//!
//! hyper's HTTP/2 server hands every request stream to its executor as a future of its own
//! (decoding the request, the service's work, encoding and sending the response). With tokio's
//! executor each of those is a task: spawned when the request arrives, scheduled on some
//! worker, woken by the Raft driver when its answer is ready, and then waking the connection's
//! task to write the response. On a busy member that is two tasks and two wakeups per request
//! where the connection's task alone would do.
//!
//! [`StreamExecutor`] is the executor the client API gives hyper instead: it queues the stream
//! futures, and [`Streams`] polls them on the task that drives the connection, each time that
//! task runs. A request's answer then wakes the one task that also writes it out, and the
//! answers a Raft batch releases together for one connection are all sent on that task's next
//! run.
//!
//! A stream that is not done after [`LOCAL_POLLS`] polls (a watch, a lease's keep-alives, a
//! snapshot download, a lock that waits for its turn) moves to a task of its own, so that long
//! streams do not share the connection's task with the short requests behind them.

use std::future::{Future, poll_fn};
use std::mem;
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use futures_util::stream::{FuturesUnordered, StreamExt as _};
use futures_util::task::AtomicWaker;

type StreamFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// How many times a stream is polled on the connection's task before it moves to a task of its
/// own. A unary request is polled once when it arrives, once when its answer is ready, and
/// perhaps once more to send it.
pub const LOCAL_POLLS: u32 = 4;

/// The executor of one connection's streams: it queues them for the connection's [`Streams`].
#[derive(Clone, Default)]
pub struct StreamExecutor {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// Streams started since the connection's task last took them.
    queued: Mutex<Vec<StreamFuture>>,
    /// The connection's task, woken when a stream is queued from elsewhere.
    task: AtomicWaker,
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, future: F) {
        self.shared.lock().push(Box::pin(future));
        self.shared.task.wake();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Vec<StreamFuture>> {
        self.queued.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A stream future and how often the connection's task has polled it.
struct Local {
    future: Option<StreamFuture>,
    polls: u32,
}

impl Future for Local {
    /// The future, when it is to move to a task of its own.
    type Output = Option<StreamFuture>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let future = this
            .future
            .as_mut()
            .expect("a local stream is polled until it ends");
        // A stream that panics ends alone, as a task of its own would: the connection and its
        // other streams go on.
        match panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(Poll::Ready(())) | Err(_) => return Poll::Ready(None),
            Ok(Poll::Pending) => {}
        }
        this.polls += 1;
        if this.polls >= LOCAL_POLLS {
            return Poll::Ready(this.future.take());
        }
        Poll::Pending
    }
}

/// The streams of one connection, run on the task that drives it.
#[derive(Default)]
pub struct Streams {
    executor: StreamExecutor,
    running: FuturesUnordered<Local>,
}

impl Streams {
    /// The executor to build the connection with.
    pub fn executor(&self) -> StreamExecutor {
        self.executor.clone()
    }

    /// Polls the connection and its streams until the connection ends.
    pub async fn serve<C: Future>(&mut self, mut connection: Pin<&mut C>) -> C::Output {
        poll_fn(|cx| {
            loop {
                self.poll_streams(cx);
                if let Poll::Ready(ended) = connection.as_mut().poll(cx) {
                    return Poll::Ready(ended);
                }
                // Polling the connection may have started streams (or the streams' answers may
                // have let it accept more): run those before waiting.
                if !self.has_queued() {
                    return Poll::Pending;
                }
            }
        })
        .await
    }

    /// Moves the streams still going to tasks of their own, once the connection has ended (as
    /// tokio's executor would have run them).
    pub fn detach(self) {
        let queued = mem::take(&mut *self.executor.shared.lock());
        let running = self.running.into_iter().filter_map(|local| local.future);
        for future in queued.into_iter().chain(running) {
            tokio::spawn(future);
        }
    }

    fn has_queued(&self) -> bool {
        !self.executor.shared.lock().is_empty()
    }

    /// Takes the queued streams and polls every stream that is ready.
    fn poll_streams(&mut self, cx: &mut Context<'_>) {
        self.executor.shared.task.register(cx.waker());
        let queued = mem::take(&mut *self.executor.shared.lock());
        self.running.extend(queued.into_iter().map(|future| Local {
            future: Some(future),
            polls: 0,
        }));
        while let Poll::Ready(Some(done)) = self.running.poll_next_unpin(cx) {
            if let Some(long) = done {
                tokio::spawn(long);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Executor as _;
    use tokio::sync::oneshot;

    /// A stream that waits for `polls - 1` wakeups of its own, then reports the task it ended
    /// on.
    fn stream(polls: u32, ended: oneshot::Sender<tokio::task::Id>) -> impl Future<Output = ()> {
        let mut seen = 0;
        let mut ended = Some(ended);
        poll_fn(move |cx| {
            seen += 1;
            if seen < polls {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let _ = ended
                .take()
                .expect("polled after its end")
                .send(tokio::task::id());
            Poll::Ready(())
        })
    }

    /// Serves a connection that ends once `until` has fired, on a task of its own; returns
    /// that task's id and the id `until` carried.
    async fn serve_until(
        streams: Streams,
        until: oneshot::Receiver<tokio::task::Id>,
    ) -> (tokio::task::Id, tokio::task::Id) {
        tokio::spawn(async move {
            let mut streams = streams;
            let connection = until;
            tokio::pin!(connection);
            let last = streams
                .serve(connection)
                .await
                .expect("the last stream ends");
            streams.detach();
            (tokio::task::id(), last)
        })
        .await
        .expect("the connection's task ends")
    }

    #[tokio::test]
    async fn short_streams_run_on_the_connections_task() {
        let streams = Streams::default();
        let executor = streams.executor();
        let mut ends = Vec::new();
        for polls in 1..LOCAL_POLLS {
            let (tx, rx) = oneshot::channel();
            executor.execute(stream(polls, tx));
            ends.push(rx);
        }
        let (tx, last) = oneshot::channel();
        executor.execute(stream(LOCAL_POLLS, tx));
        let (connection_task, last_task) = serve_until(streams, last).await;
        assert_eq!(last_task, connection_task);
        for end in ends {
            assert_eq!(end.await.expect("the stream ends"), connection_task);
        }
    }

    #[tokio::test]
    async fn long_streams_move_to_a_task_of_their_own() {
        let streams = Streams::default();
        let executor = streams.executor();
        let (tx, long) = oneshot::channel();
        executor.execute(stream(LOCAL_POLLS + 1, tx));
        let (tx, short) = oneshot::channel();
        executor.execute(stream(1, tx));
        let (connection_task, short_task) = serve_until(streams, short).await;
        assert_eq!(short_task, connection_task);
        let long_task = long.await.expect("the moved stream ends");
        assert_ne!(long_task, connection_task);
    }

    #[tokio::test]
    async fn a_stream_that_panics_ends_alone() {
        let streams = Streams::default();
        let executor = streams.executor();
        executor.execute(async { panic!("a stream's bug") });
        let (tx, after) = oneshot::channel();
        executor.execute(stream(2, tx));
        let (connection_task, stream_task) = serve_until(streams, after).await;
        assert_eq!(stream_task, connection_task);
    }

    #[tokio::test]
    async fn streams_started_from_elsewhere_wake_the_connection() {
        let streams = Streams::default();
        let executor = streams.executor();
        let (tx, rx) = oneshot::channel();
        let connection = tokio::spawn(serve_until(streams, rx));
        tokio::task::yield_now().await;
        executor.execute(stream(1, tx));
        let (connection_task, stream_task) = connection.await.expect("the connection ends");
        assert_eq!(stream_task, connection_task);
    }

    #[tokio::test]
    async fn streams_left_when_the_connection_ends_run_to_their_end() {
        let mut streams = Streams::default();
        let executor = streams.executor();
        let (tx, left) = oneshot::channel();
        // Started once the connection has ended, so never polled on its task.
        let connection = std::future::ready(());
        tokio::pin!(connection);
        streams.serve(connection).await;
        executor.execute(stream(2, tx));
        streams.detach();
        left.await.expect("the detached stream ends");
    }
}
