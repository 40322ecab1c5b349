//! Leader election: candidates write `<name>/<lease id in hex>` with their proposal under their
//! lease; the leader is the candidate with the oldest key. A leader updates its value with
//! [`Leadership::proclaim`], steps down with [`Leadership::resign`], and loses leadership when
//! its lease ends (its process died or was cut off), after which the next candidate in line
//! leads. Anyone can read the leader or follow it with an [`Observer`].
//!
//! ```
//! use chorus_client::recipes::election::Election;
//! use chorus_client::{Client, ClientOptions};
//!
//! # #[tokio::main(flavor = "multi_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let server = chorus_server::local::LocalMember::start().await?;
//! # let endpoint = server.endpoint();
//! // `endpoint` is a member's client URL, such as "http://127.0.0.1:2379".
//! let client = Client::connect([endpoint], ClientOptions::default()).await?;
//! let election = Election::new(client.clone(), "services/scheduler/leader");
//!
//! // Follow whoever leads, from another task or process.
//! let mut observer = election.observe();
//! tokio::spawn(async move {
//!     while let Ok(Some(leader)) = observer.next().await {
//!         println!("leader is now {}", String::from_utf8_lossy(&leader.value));
//!     }
//! });
//!
//! let session = client.lease_grant_kept(5).await?;
//! let leadership = election.campaign(&session, "scheduler-a:8080").await?;
//! leadership.proclaim("scheduler-a:8081").await?;
//! let leader = election.leader().await?.expect("someone leads");
//! assert_eq!(&leader.value[..], b"scheduler-a:8081");
//! leadership.resign().await?;
//! # Ok(())
//! # }
//! ```

use bytes::Bytes;
use chorus_proto::etcdserverpb as pb;
use chorus_proto::mvccpb::KeyValue;

use super::{create_or_get, delete_if_ours, dir, still_ours, wait_for_turn};
use crate::error::{Error, Result};
use crate::lease::LeaseKeeper;
use crate::txn::{Cmp, Compare, Op, Txn};
use crate::watch::Watcher;
use crate::{Client, GetOptions, PutOptions, WatchOptions};

/// A named election.
#[derive(Debug, Clone)]
pub struct Election {
    client: Client,
    prefix: String,
}

/// Leadership won by [`Election::campaign`].
#[derive(Debug)]
pub struct Leadership {
    client: Client,
    key: Bytes,
    created: i64,
    lease: i64,
}

impl Election {
    /// The election called `name` (its keys live under `name/`).
    pub fn new(client: Client, name: &str) -> Election {
        Election {
            client,
            prefix: dir(name),
        }
    }

    /// Stands with `value` under `lease` and waits until this candidate leads.
    pub async fn campaign(
        &self,
        lease: &LeaseKeeper,
        value: impl AsRef<[u8]>,
    ) -> Result<Leadership> {
        let key = Bytes::from(format!("{}{:x}", self.prefix, lease.id()));
        let (created, _) = create_or_get(&self.client, &key, value.as_ref(), lease.id()).await?;
        let leadership = Leadership {
            client: self.client.clone(),
            key,
            created,
            lease: lease.id(),
        };
        // A candidate that was already in line keeps its place but stands with this value.
        leadership.proclaim(value.as_ref()).await?;
        if let Err(error) =
            wait_for_turn(&self.client, self.prefix.as_bytes(), created, lease).await
        {
            let _ = delete_if_ours(&self.client, &leadership.key, created).await;
            return Err(error);
        }
        if !still_ours(&self.client, &leadership.key, created).await? {
            return Err(Error::LeaseLost {
                id: lease.id(),
                reason: "the candidate's key went away with its lease".to_string(),
            });
        }
        Ok(leadership)
    }

    /// The current leader's key-value (its value is the proposal), if anyone leads.
    pub async fn leader(&self) -> Result<Option<KeyValue>> {
        Ok(self.leader_at().await?.0)
    }

    async fn leader_at(&self) -> Result<(Option<KeyValue>, i64)> {
        let response = self
            .client
            .get(
                &self.prefix,
                GetOptions {
                    prefix: true,
                    limit: 1,
                    sort: Some((
                        pb::range_request::SortTarget::Create,
                        pb::range_request::SortOrder::Ascend,
                    )),
                    ..GetOptions::default()
                },
            )
            .await?;
        let revision = response.header.as_ref().map_or(0, |h| h.revision);
        Ok((response.kvs.into_iter().next(), revision))
    }

    /// Follows the leader: each change of leader or of its value, starting with the current
    /// one.
    pub fn observe(&self) -> Observer {
        Observer {
            election: self.clone(),
            watcher: None,
            last: None,
        }
    }
}

impl Leadership {
    /// Replaces the leader's value; fails with [`Error::Recipe`] ("not the leader any more")
    /// once this candidate's key is gone.
    pub async fn proclaim(&self, value: impl AsRef<[u8]>) -> Result<()> {
        let put = PutOptions {
            lease: self.lease,
            idempotent: true,
            ..PutOptions::default()
        };
        let txn = Txn::new()
            .when([Compare::create_revision(
                &self.key,
                Cmp::Equal,
                self.created,
            )])
            .and_then([Op::put(&self.key, value, put)])
            .idempotent();
        if self.client.txn(txn).await?.succeeded {
            Ok(())
        } else {
            Err(Error::Recipe(format!(
                "election: not the leader any more ({} is gone)",
                super::show(&self.key)
            )))
        }
    }

    /// Steps down: the next candidate in line leads.
    pub async fn resign(self) -> Result<()> {
        delete_if_ours(&self.client, &self.key, self.created).await?;
        Ok(())
    }

    /// The candidate's key.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The create revision of the candidate's key: a fencing token for the leadership term.
    pub fn revision(&self) -> i64 {
        self.created
    }
}

/// Follows an election's leader (see [`Election::observe`]).
#[derive(Debug)]
pub struct Observer {
    election: Election,
    watcher: Option<Watcher>,
    /// The last leader reported: key and mod revision.
    last: Option<Option<(Bytes, i64)>>,
}

impl Observer {
    /// Waits for the next change and returns the new leader (`None`: nobody leads now).
    pub async fn next(&mut self) -> Result<Option<KeyValue>> {
        loop {
            if self.watcher.is_none() {
                // Read, then watch from just after the read: no change falls in between.
                let (leader, revision) = self.election.leader_at().await?;
                let options = WatchOptions::prefix().from_revision(revision + 1);
                self.watcher = Some(self.election.client.watch(&self.election.prefix, options));
                if let Some(report) = self.report(leader) {
                    return Ok(report);
                }
                continue;
            }
            let watcher = self.watcher.as_mut().expect("set above");
            match watcher.next().await {
                Some(Ok(batch)) if batch.events.is_empty() => {}
                Some(Ok(_)) => {
                    let (leader, _) = self.election.leader_at().await?;
                    if let Some(report) = self.report(leader) {
                        return Ok(report);
                    }
                }
                Some(Err(error)) => {
                    self.watcher = None;
                    if !matches!(error, Error::Compacted { .. }) {
                        return Err(error);
                    }
                    // Compacted: start over from a fresh read.
                }
                None => self.watcher = None,
            }
        }
    }

    /// `Some(leader)` when it differs from what was last reported.
    fn report(&mut self, leader: Option<KeyValue>) -> Option<Option<KeyValue>> {
        let identity = leader.as_ref().map(|kv| (kv.key.clone(), kv.mod_revision));
        if self.last.as_ref() == Some(&identity) {
            return None;
        }
        self.last = Some(identity);
        Some(leader)
    }
}
