//! Service registry and discovery.
//!
//! An instance registers itself as `<service>/<instance id>` with a value of its choosing
//! (address, metadata) under a lease that a [`LeaseKeeper`] renews. If the process dies its
//! renewals stop, the lease expires and the instance disappears from discovery by itself; a
//! clean shutdown [`deregister`](Registration::deregister)s at once.
//!
//! A [`Discovery`] reads the instances of a service and follows changes with a watch; it
//! [`pick`](Discovery::pick)s an instance with any of the client's load-balancing policies
//! (round robin, weighted, least outstanding, random, power of two choices, consistent
//! hashing by a request key).
//!
//! ```
//! use chorus_client::balance::PolicyKind;
//! use chorus_client::recipes::registry::{Discovery, Registration};
//! use chorus_client::{Client, ClientOptions};
//!
//! # #[tokio::main(flavor = "multi_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let server = chorus_server::local::LocalMember::start().await?;
//! # let endpoint = server.endpoint();
//! // `endpoint` is a member's client URL, such as "http://127.0.0.1:2379".
//! let client = Client::connect([endpoint], ClientOptions::default()).await?;
//! // In each instance of the service:
//! let me = Registration::register(&client, "services/api", "api-1", "10.0.0.7:8080", 10).await?;
//!
//! // In a caller:
//! let mut api = Discovery::start(&client, "services/api", PolicyKind::RoundRobin).await?;
//! assert_eq!(api.instances().len(), 1);
//! if let Some(instance) = api.pick(None) {
//!     println!("calling {} at {}", instance.id, String::from_utf8_lossy(&instance.value));
//! }
//!
//! me.deregister().await?;
//! api.changed().await?; // wakes when an instance comes or goes
//! assert!(api.instances().is_empty());
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;

use bytes::Bytes;
use chorus_proto::mvccpb;

use super::dir;
use crate::balance::{Candidate, Policy, PolicyKind, stable_hash};
use crate::error::{Error, Result};
use crate::lease::LeaseKeeper;
use crate::watch::Watcher;
use crate::{Client, GetOptions, PutOptions, WatchOptions};

/// A registered instance, kept alive by its lease.
#[derive(Debug)]
pub struct Registration {
    client: Client,
    key: Bytes,
    keeper: LeaseKeeper,
}

impl Registration {
    /// Registers instance `id` of `service` with `value`, under a lease of `ttl` seconds that is
    /// renewed until the registration is dropped or deregistered.
    pub async fn register(
        client: &Client,
        service: &str,
        id: &str,
        value: impl AsRef<[u8]>,
        ttl: i64,
    ) -> Result<Registration> {
        if id.is_empty() || id.contains('/') {
            return Err(Error::Recipe(format!(
                "registry: an instance id is non-empty and has no '/': {id:?}"
            )));
        }
        let keeper = client.lease_grant_kept(ttl).await?;
        let key = Bytes::from(format!("{}{id}", dir(service)));
        let put = PutOptions {
            lease: keeper.id(),
            idempotent: true,
            ..PutOptions::default()
        };
        client.put(&key, value, put).await?;
        Ok(Registration {
            client: client.clone(),
            key,
            keeper,
        })
    }

    /// The instance's key.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The lease that keeps the instance registered.
    pub fn lease(&self) -> &LeaseKeeper {
        &self.keeper
    }

    /// Removes the instance now (revokes its lease, which deletes the key).
    pub async fn deregister(self) -> Result<()> {
        self.keeper.stop();
        self.client.lease_revoke(self.keeper.id()).await?;
        Ok(())
    }
}

/// One instance of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// The instance id (the last part of its key).
    pub id: String,
    /// What it registered with.
    pub value: Bytes,
}

/// The live instances of a service, kept up to date by a watch.
#[derive(Debug)]
pub struct Discovery {
    client: Client,
    prefix: String,
    instances: BTreeMap<String, Bytes>,
    watcher: Watcher,
    policy: Box<dyn Policy>,
}

impl Discovery {
    /// Reads the instances of `service` and starts following it; picks use `policy`.
    pub async fn start(client: &Client, service: &str, policy: PolicyKind) -> Result<Discovery> {
        let prefix = dir(service);
        let (instances, watcher) = Self::load(client, &prefix).await?;
        Ok(Discovery {
            client: client.clone(),
            prefix,
            instances,
            watcher,
            policy: policy.build(),
        })
    }

    async fn load(client: &Client, prefix: &str) -> Result<(BTreeMap<String, Bytes>, Watcher)> {
        let now = client.get(prefix, GetOptions::prefix()).await?;
        let revision = now.header.as_ref().map_or(0, |h| h.revision);
        let instances = now
            .kvs
            .iter()
            .filter_map(|kv| Some((id_of(prefix, &kv.key)?, kv.value.clone())))
            .collect();
        let watcher = client.watch(prefix, WatchOptions::prefix().from_revision(revision + 1));
        Ok((instances, watcher))
    }

    /// The instances as last seen, by id.
    pub fn instances(&self) -> Vec<Instance> {
        self.instances
            .iter()
            .map(|(id, value)| Instance {
                id: id.clone(),
                value: value.clone(),
            })
            .collect()
    }

    /// Waits for the next change of the instances and applies it.
    pub async fn changed(&mut self) -> Result<()> {
        loop {
            match self.watcher.next().await {
                Some(Ok(batch)) if batch.events.is_empty() => {}
                Some(Ok(batch)) => {
                    for event in batch.events {
                        let Some(kv) = event.kv else { continue };
                        let Some(id) = id_of(&self.prefix, &kv.key) else {
                            continue;
                        };
                        if event.r#type == mvccpb::event::EventType::Delete as i32 {
                            self.instances.remove(&id);
                        } else {
                            self.instances.insert(id, kv.value);
                        }
                    }
                    return Ok(());
                }
                Some(Err(Error::Compacted { .. })) | None => {
                    // The history it needed is gone: read the whole state again.
                    let (instances, watcher) = Self::load(&self.client, &self.prefix).await?;
                    self.instances = instances;
                    self.watcher = watcher;
                    return Ok(());
                }
                Some(Err(error)) => return Err(error),
            }
        }
    }

    /// Picks an instance with the discovery's policy; `key` routes consistent hashing.
    pub fn pick(&self, key: Option<&[u8]>) -> Option<Instance> {
        let all = self.instances();
        let candidates: Vec<Candidate> = all
            .iter()
            .enumerate()
            .map(|(index, instance)| Candidate {
                index,
                id: stable_hash(instance.id.as_bytes()),
                weight: 1,
                outstanding: 0,
            })
            .collect();
        let index = self.policy.pick(&candidates, key)?;
        all.into_iter().nth(index)
    }
}

/// The instance id of a key under `prefix`: what follows the prefix, if it has no further '/'.
fn id_of(prefix: &str, key: &[u8]) -> Option<String> {
    let rest = key.strip_prefix(prefix.as_bytes())?;
    let id = std::str::from_utf8(rest).ok()?;
    (!id.is_empty() && !id.contains('/')).then(|| id.to_string())
}
