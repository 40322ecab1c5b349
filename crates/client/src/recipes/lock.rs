//! A distributed mutex with fencing tokens.
//!
//! Each contender writes `<name>/<lease id in hex>` under its lease and waits until every key
//! created before its own is gone; the holder is the owner of the oldest key. The grant's
//! [`fencing_token`](LockGuard::fencing_token) is that key's create revision: it grows with
//! every grant of the lock, so a resource that remembers the highest token it has seen can
//! refuse a holder whose lease ended without its knowing (a paused process, a partition).
//!
//! A grant is only made while the contender's lease is alive: if the lease ends while waiting,
//! the key goes with it and [`Mutex::lock`] fails with [`Error::LeaseLost`](crate::Error).
//!
//! ```
//! use chorus_client::recipes::lock::Mutex;
//! use chorus_client::{Client, ClientOptions};
//!
//! # #[tokio::main(flavor = "multi_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let server = chorus_server::local::LocalMember::start().await?;
//! # let endpoint = server.endpoint();
//! // `endpoint` is a member's client URL, such as "http://127.0.0.1:2379".
//! let client = Client::connect([endpoint], ClientOptions::default()).await?;
//! let session = client.lease_grant_kept(10).await?;
//! let mutex = Mutex::new(client.clone(), "jobs/nightly");
//! let guard = mutex.lock(&session).await?;
//! // Hand the token to whatever the lock protects; it refuses smaller ones.
//! println!("holding {} with token {}", guard.key_str(), guard.fencing_token());
//! let first_token = guard.fencing_token();
//! assert!(guard.fencing_token() > 0);
//! guard.unlock().await?;
//!
//! // The next grant of the lock carries a larger token.
//! let again = mutex.lock(&session).await?;
//! assert!(again.fencing_token() > first_token);
//! again.unlock().await?;
//! # Ok(())
//! # }
//! ```

use bytes::Bytes;

use super::{create_or_get, delete_if_ours, dir, still_ours, wait_for_turn};
use crate::Client;
use crate::error::{Error, Result};
use crate::lease::LeaseKeeper;

/// A named mutex.
#[derive(Debug, Clone)]
pub struct Mutex {
    client: Client,
    prefix: String,
}

/// A held lock. Dropping it does not release the lock (that needs a request): call
/// [`unlock`](LockGuard::unlock), or let the lease end.
#[derive(Debug)]
pub struct LockGuard {
    client: Client,
    key: Bytes,
    token: i64,
}

impl Mutex {
    /// The mutex called `name` (its keys live under `name/`).
    pub fn new(client: Client, name: &str) -> Mutex {
        Mutex {
            client,
            prefix: dir(name),
        }
    }

    /// Waits for the lock, held under `lease`. Re-locking with a lease that already holds or
    /// waits for this mutex joins that same place in line.
    pub async fn lock(&self, lease: &LeaseKeeper) -> Result<LockGuard> {
        let key = Bytes::from(format!("{}{:x}", self.prefix, lease.id()));
        let (created, _) = create_or_get(&self.client, &key, b"", lease.id()).await?;
        if let Err(error) =
            wait_for_turn(&self.client, self.prefix.as_bytes(), created, lease).await
        {
            // Leave the line: nobody should wait behind a contender that gave up.
            let _ = delete_if_ours(&self.client, &key, created).await;
            return Err(error);
        }
        if !still_ours(&self.client, &key, created).await? {
            return Err(Error::LeaseLost {
                id: lease.id(),
                reason: "the lock's key went away with its lease while waiting".to_string(),
            });
        }
        Ok(LockGuard {
            client: self.client.clone(),
            key,
            token: created,
        })
    }
}

impl LockGuard {
    /// The fencing token: the create revision of the lock's key, larger for every later grant.
    pub fn fencing_token(&self) -> i64 {
        self.token
    }

    /// The key that stands for this grant.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// [`key`](LockGuard::key) as text.
    pub fn key_str(&self) -> String {
        super::show(&self.key)
    }

    /// Releases the lock (deletes its key if it is still this grant's).
    pub async fn unlock(self) -> Result<()> {
        delete_if_ours(&self.client, &self.key, self.token).await?;
        Ok(())
    }
}
