//! A barrier: while its key exists, [`Barrier::wait`] blocks; [`Barrier::release`] deletes the
//! key and lets every waiter through.
//!
//! ```
//! use chorus_client::recipes::barrier::Barrier;
//! use chorus_client::{Client, ClientOptions};
//!
//! # #[tokio::main(flavor = "multi_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let server = chorus_server::local::LocalMember::start().await?;
//! # let endpoint = server.endpoint();
//! // `endpoint` is a member's client URL, such as "http://127.0.0.1:2379".
//! let client = Client::connect([endpoint], ClientOptions::default()).await?;
//! let barrier = Barrier::new(client.clone(), "deploy/v42/ready");
//! barrier.hold().await?;
//! let waiter = barrier.clone();
//! let workers = tokio::spawn(async move { waiter.wait().await });
//! barrier.release().await?;
//! workers.await.expect("the waiter ran")?;
//! # Ok(())
//! # }
//! ```

use bytes::Bytes;
use chorus_proto::mvccpb;

use crate::error::{Error, Result};
use crate::{Client, DeleteOptions, GetOptions, PutOptions, WatchOptions};

/// A named barrier.
#[derive(Debug, Clone)]
pub struct Barrier {
    client: Client,
    key: Bytes,
}

impl Barrier {
    /// The barrier whose key is `key`.
    pub fn new(client: Client, key: &str) -> Barrier {
        Barrier {
            client,
            key: Bytes::copy_from_slice(key.as_bytes()),
        }
    }

    /// Raises the barrier (creates its key; holding it twice is harmless).
    pub async fn hold(&self) -> Result<()> {
        let put = PutOptions {
            idempotent: true,
            ..PutOptions::default()
        };
        self.client.put(&self.key, "", put).await?;
        Ok(())
    }

    /// Lowers the barrier: every waiter goes on.
    pub async fn release(&self) -> Result<()> {
        let delete = DeleteOptions {
            idempotent: true,
            ..DeleteOptions::default()
        };
        self.client.delete(&self.key, delete).await?;
        Ok(())
    }

    /// Returns once the barrier is not held.
    pub async fn wait(&self) -> Result<()> {
        loop {
            let now = self.client.get(&self.key, GetOptions::default()).await?;
            if now.kvs.is_empty() {
                return Ok(());
            }
            let revision = now.header.as_ref().map_or(0, |h| h.revision);
            let options = WatchOptions::default().from_revision(revision + 1);
            let mut watcher = self.client.watch(&self.key, options);
            loop {
                match watcher.next().await {
                    Some(Ok(batch)) => {
                        let released = batch
                            .events
                            .iter()
                            .any(|e| e.r#type == mvccpb::event::EventType::Delete as i32);
                        if released {
                            return Ok(());
                        }
                    }
                    Some(Err(Error::Compacted { .. })) | None => break,
                    Some(Err(error)) => return Err(error),
                }
            }
        }
    }
}
