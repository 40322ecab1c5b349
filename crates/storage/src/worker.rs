//! A named thread that takes jobs from a channel, as the log's background threads and the
//! store's engine commits do.

use std::io;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

/// A thread running `body` over the jobs sent to it. Dropping it closes the channel and waits
/// for the thread, which finishes the jobs already sent.
#[derive(Debug)]
pub(crate) struct Worker<T> {
    jobs: Option<Sender<T>>,
    thread: Option<JoinHandle<()>>,
}

impl<T: Send + 'static> Worker<T> {
    /// Starts the thread `name`; `body` gets the jobs and returns when it is done with them.
    pub(crate) fn spawn(
        name: &str,
        body: impl FnOnce(Receiver<T>) + Send + 'static,
    ) -> io::Result<Worker<T>> {
        let (jobs, received) = channel();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || body(received))?;
        Ok(Worker {
            jobs: Some(jobs),
            thread: Some(thread),
        })
    }

    /// Hands `job` to the thread; false if the thread has stopped.
    pub(crate) fn send(&self, job: T) -> bool {
        self.jobs
            .as_ref()
            .is_some_and(|jobs| jobs.send(job).is_ok())
    }
}

impl<T> Drop for Worker<T> {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
