//! Fewer, fuller writes on a busy HTTP/2 connection.
//!
//! An HTTP/2 connection task writes out the frames queued on its connection each time it runs,
//! and it runs as soon as any one stream queues something. Responses that become ready together
//! (the reads one ReadIndex round releases, the writes one Raft entry batch commits), or the
//! requests of many clients sharing a channel, therefore leave in one socket write each, and on
//! loopback every write also pays for the receiver's side of TCP. [`CoalescedWrites`] sits
//! between the socket and the HTTP/2 connection and holds the first write after each flush back
//! until the runtime worker has run the tasks that were already ready (tokio's `yield_now`: the
//! worker wakes yielded tasks once its queue is empty, or every few dozen tasks when it never
//! empties). The frames those tasks queue meanwhile go out in the same write, as grpc-go's
//! writer flushes only once it has nothing more queued. Nothing waits for a timer: a
//! connection with nothing else ready writes after one pass of the scheduler.
//!
//! The client listener wraps every accepted connection, and the load generator (`chorus bench`)
//! wraps the connections it opens.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A connection whose writes after each flush wait for one pass of the scheduler.
pub struct CoalescedWrites<S> {
    inner: S,
    state: State,
}

enum State {
    /// The last write was flushed: the next one waits.
    Idle,
    /// Waiting for the worker to come back to this connection.
    Waiting(Arc<Pass>),
    /// The pass is over: writes go straight to the socket until the next flush.
    Open,
}

/// Fired when the worker wakes the yielded connection.
struct Pass {
    done: AtomicBool,
    task: Mutex<Waker>,
}

impl Wake for Pass {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.done.store(true, Ordering::Release);
        self.task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .wake_by_ref();
    }
}

impl<S> CoalescedWrites<S> {
    pub fn new(inner: S) -> Self {
        CoalescedWrites {
            inner,
            state: State::Idle,
        }
    }

    /// Ready once the writes may go to the socket.
    fn poll_pass(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match &self.state {
                State::Open => return Poll::Ready(()),
                State::Idle => {
                    let pass = Arc::new(Pass {
                        done: AtomicBool::new(false),
                        task: Mutex::new(cx.waker().clone()),
                    });
                    // The runtime keeps the waker, not the future, until the worker's pass
                    // ends; outside a runtime it wakes at once, and the write goes ahead.
                    let yielded = std::pin::pin!(tokio::task::yield_now());
                    let waker = Waker::from(Arc::clone(&pass));
                    if yielded.poll(&mut Context::from_waker(&waker)).is_ready() {
                        self.state = State::Open;
                    } else {
                        self.state = State::Waiting(pass);
                    }
                }
                State::Waiting(pass) => {
                    {
                        let mut task = pass.task.lock().unwrap_or_else(|e| e.into_inner());
                        if !task.will_wake(cx.waker()) {
                            *task = cx.waker().clone();
                        }
                    }
                    // Checked after the waker is in place: a pass ending meanwhile either sees
                    // the new waker or is seen here.
                    if !pass.done.load(Ordering::Acquire) {
                        return Poll::Pending;
                    }
                    self.state = State::Open;
                }
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for CoalescedWrites<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CoalescedWrites<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_pass(cx));
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_pass(cx));
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
        if matches!(this.state, State::Open) {
            this.state = State::Idle;
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
