use super::*;

use std::future::poll_fn;
use std::task::ready;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Records every write it is asked for, taking at most `chunk` bytes of each.
#[derive(Clone)]
struct Socket {
    writes: Arc<Mutex<Vec<Vec<u8>>>>,
    chunk: usize,
}

impl Socket {
    fn new(chunk: usize) -> Self {
        Socket {
            writes: Arc::default(),
            chunk,
        }
    }

    fn writes(&self) -> Vec<Vec<u8>> {
        self.writes.lock().unwrap().clone()
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = buf.len().min(self.chunk);
        self.writes.lock().unwrap().push(buf[..n].to_vec());
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The frames the streams of one connection queued for it, as the HTTP/2 server keeps them.
#[derive(Default)]
struct Queue {
    frames: Vec<u8>,
    closed: bool,
    connection: Option<Waker>,
}

fn queue(queue: &Mutex<Queue>, frame: &[u8]) {
    let mut queue = queue.lock().unwrap();
    queue.frames.extend_from_slice(frame);
    if let Some(connection) = queue.connection.take() {
        connection.wake();
    }
}

fn close(queue: &Mutex<Queue>) {
    let mut queue = queue.lock().unwrap();
    queue.closed = true;
    if let Some(connection) = queue.connection.take() {
        connection.wake();
    }
}

/// A connection task as the HTTP/2 server runs one: each time it runs it takes every frame
/// queued so far, writes what it holds, and flushes once it holds nothing.
async fn connection<W: AsyncWrite + Unpin>(mut io: W, frames: Arc<Mutex<Queue>>) {
    let mut held = Vec::new();
    poll_fn(|cx| {
        loop {
            {
                let mut queue = frames.lock().unwrap();
                held.append(&mut queue.frames);
                queue.connection = Some(cx.waker().clone());
                if held.is_empty() {
                    return if queue.closed {
                        Poll::Ready(())
                    } else {
                        Poll::Pending
                    };
                }
            }
            let n = ready!(Pin::new(&mut io).poll_write(cx, &held)).unwrap();
            held.drain(..n);
            if held.is_empty() {
                ready!(Pin::new(&mut io).poll_flush(cx)).unwrap();
            }
        }
    })
    .await
}

/// Two batches, as the responses one ReadIndex round releases together: the connection holds
/// the batch's first frame when it runs, and three streams that were already ready behind it
/// queue the next three. Frames 0-3, then 4-7 once everything settled. Returns the socket's
/// writes.
async fn writes_of_two_batches(coalesce: bool, chunk: usize) -> Vec<Vec<u8>> {
    let frames = Arc::new(Mutex::new(Queue::default()));
    let socket = Socket::new(chunk);
    let mut task = None;
    for first in [b'0', b'4'] {
        queue(&frames, &[first]);
        if task.is_none() {
            task = Some(if coalesce {
                tokio::spawn(connection(
                    CoalescedWrites::new(socket.clone()),
                    frames.clone(),
                ))
            } else {
                tokio::spawn(connection(socket.clone(), frames.clone()))
            });
        }
        let streams: Vec<_> = (1..=3)
            .map(|i: u8| {
                let frames = frames.clone();
                tokio::spawn(async move { queue(&frames, &[first + i]) })
            })
            .collect();
        for stream in streams {
            stream.await.unwrap();
        }
        // Let everything settle: the writes of the batch are done.
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    close(&frames);
    task.expect("the connection").await.unwrap();
    socket.writes()
}

#[tokio::test(flavor = "current_thread")]
async fn frames_queued_by_tasks_already_ready_leave_in_one_write() {
    assert_eq!(
        writes_of_two_batches(false, usize::MAX).await,
        [&b"0"[..], b"123", b"4", b"567"],
        "without the wrapper each batch's first frame leaves alone"
    );
    assert_eq!(
        writes_of_two_batches(true, usize::MAX).await,
        [&b"0123"[..], b"4567"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_worker_pool_every_frame_is_written_once() {
    // The streams may run on the other worker, in any order, while the connection waits.
    for _ in 0..30 {
        let writes = tokio::spawn(writes_of_two_batches(true, usize::MAX))
            .await
            .unwrap();
        let bytes = writes.concat();
        let mut batches = [bytes[..4].to_vec(), bytes[4..].to_vec()];
        assert_eq!((batches[0][0], batches[1][0]), (b'0', b'4'), "{writes:?}");
        batches.iter_mut().for_each(|batch| batch.sort_unstable());
        assert_eq!(batches, [b"0123", b"4567"], "{writes:?}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn partial_writes_go_out_whole_and_in_order() {
    let writes = writes_of_two_batches(true, 1).await;
    assert_eq!(writes.concat(), b"01234567");
    assert!(writes.iter().all(|w| w.len() == 1), "{writes:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn each_flushed_write_waits_one_pass_and_no_more() {
    let (client, mut server) = tokio::io::duplex(64);
    let mut io = CoalescedWrites::new(client);
    let sent: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        got
    });
    for part in sent.chunks(1_000) {
        io.write_all(part).await.unwrap();
        io.flush().await.unwrap();
    }
    io.shutdown().await.unwrap();
    drop(io);
    assert_eq!(reader.await.unwrap(), sent);
}

#[test]
fn outside_a_runtime_a_write_goes_straight_out() {
    let socket = Socket::new(usize::MAX);
    let mut io = CoalescedWrites::new(socket.clone());
    let mut cx = Context::from_waker(Waker::noop());
    let polled = Pin::new(&mut io).poll_write(&mut cx, b"frame");
    assert!(matches!(polled, Poll::Ready(Ok(5))), "{polled:?}");
    assert_eq!(socket.writes(), [b"frame".to_vec()]);
}
