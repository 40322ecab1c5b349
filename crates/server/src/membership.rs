//! The replicated membership: every member's id, name, peer URLs and learner flag.
//!
//! It changes only when a committed entry is applied: a ConfChange whose `context` is one
//! encoded `chorus.internal.v1.MemberRecord` (the member added, removed or promoted), or a
//! normal proposal carrying `member_update` (new peer URLs). Every member applies the same
//! entries in the same order and so holds the same table.
//!
//! Durability: the table is written to `member/membership` (a `MemberTable` with the log index
//! it reflects, the cluster id and this member's id) before the store records the entries as
//! applied, so a crash in between replays them; replay is idempotent (entries at or below the
//! table's index are skipped). Raft snapshots carry the table (see [`crate::snap::envelope`]).
//!
//! [`PeerSync`] keeps the peer transport and the forwarder in step with the table, and
//! [`check_change`] holds etcd's rules for refusing a change before it is proposed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use chorus_proto::etcdserverpb as pb;
use chorus_proto::internal as ipb;
use chorus_raft::{ConfChange, ConfChangeSingle, ConfState, LogIndex, NodeId};
use prost::Message as _;

use crate::alarm::AlarmSet;
use crate::config::MemberUrl;
use crate::error::ServerError;
use crate::service::Forwarder;
use crate::transport::PeerTransport;

/// The file holding the durable copy of the table, inside `member/`.
pub const MEMBERSHIP_FILE: &str = "membership";

/// etcd 3.4 allows one learner at a time (`maxLearners`).
pub const LEARNERS_MAX: usize = 1;

/// A learner may be promoted once its log has reached this share of the leader's (etcd's
/// `readyPercent`).
pub const PROMOTE_READY_PERCENT: u64 = 90;

/// The membership as of an applied log index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Members {
    /// The last applied index whose entry this table reflects.
    pub index: LogIndex,
    pub members: BTreeMap<NodeId, ipb::MemberRecord>,
    /// Ids removed for good; never reused, and a member among them must not serve.
    pub removed: BTreeSet<NodeId>,
    pub cluster_id: u64,
    /// The active alarms (etcd's NOSPACE and CORRUPT).
    pub alarms: AlarmSet,
}

/// The table shared by the driver (the only writer) and the gRPC services.
pub type SharedMembers = Arc<RwLock<Members>>;

/// Why an applied membership entry could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    #[error("the membership context of entry {index} does not decode: {detail}")]
    BadContext { index: LogIndex, detail: String },
    #[error("write {path}: {source}")]
    Save { path: PathBuf, source: io::Error },
    #[error("read {path}: {detail}")]
    Load { path: PathBuf, detail: String },
}

impl Members {
    pub fn to_proto(&self, local_id: NodeId) -> ipb::MemberTable {
        ipb::MemberTable {
            index: self.index.get(),
            members: self.members.values().cloned().collect(),
            removed: self.removed.iter().map(|id| id.get()).collect(),
            cluster_id: self.cluster_id,
            local_id: local_id.get(),
            alarms: self.alarms.list(pb::AlarmType::None),
        }
    }

    pub fn from_proto(table: &ipb::MemberTable) -> Members {
        Members {
            index: LogIndex(table.index),
            members: table
                .members
                .iter()
                .map(|m| (NodeId(m.id), m.clone()))
                .collect(),
            removed: table.removed.iter().copied().map(NodeId).collect(),
            cluster_id: table.cluster_id,
            alarms: AlarmSet::from_list(&table.alarms),
        }
    }

    /// The Raft configuration this table describes, leaving out `exclude` (a joining member
    /// is not part of its own configuration until it applies the entry that added it).
    pub fn conf_state(&self, exclude: Option<NodeId>) -> ConfState {
        let mut state = ConfState::default();
        for (id, member) in &self.members {
            if Some(*id) == exclude {
                continue;
            }
            if member.is_learner {
                state.learners.insert(*id);
            } else {
                state.voters.insert(*id);
            }
        }
        state
    }

    /// Applies a committed ConfChange entry at `index`. Returns whether it changed the table
    /// (false for an entry the table already reflects).
    pub fn apply_conf_change(
        &mut self,
        index: LogIndex,
        cc: &ConfChange,
    ) -> Result<bool, MembershipError> {
        if index <= self.index {
            return Ok(false);
        }
        let record = if cc.context.is_empty() {
            None
        } else {
            Some(ipb::MemberRecord::decode(cc.context.as_ref()).map_err(|e| {
                MembershipError::BadContext {
                    index,
                    detail: e.to_string(),
                }
            })?)
        };
        for change in &cc.changes {
            match change {
                ConfChangeSingle::AddVoter(id) | ConfChangeSingle::AddLearner(id) => {
                    let learner = matches!(change, ConfChangeSingle::AddLearner(_));
                    let mut member = match (&record, self.members.get(id)) {
                        (Some(r), _) if r.id == id.get() => r.clone(),
                        (_, Some(existing)) => existing.clone(),
                        _ => ipb::MemberRecord {
                            id: id.get(),
                            ..Default::default()
                        },
                    };
                    if let Some(existing) = self.members.get(id)
                        && member.name.is_empty()
                    {
                        member.name = existing.name.clone();
                    }
                    member.is_learner = learner;
                    self.members.insert(*id, member);
                }
                ConfChangeSingle::RemoveNode(id) => {
                    self.members.remove(id);
                    self.removed.insert(*id);
                }
            }
        }
        self.index = index;
        Ok(true)
    }

    /// Applies a committed `member_update` proposal at `index` (new peer URLs).
    pub fn apply_update(&mut self, index: LogIndex, update: &ipb::MemberRecord) -> bool {
        if index <= self.index {
            return false;
        }
        if let Some(member) = self.members.get_mut(&NodeId(update.id)) {
            member.peer_urls = update.peer_urls.clone();
        }
        self.index = index;
        true
    }

    /// Applies a committed alarm request at `index`; returns etcd's answer (the alarms it
    /// touched), or `None` for an entry the table already reflects.
    pub fn apply_alarm(
        &mut self,
        index: LogIndex,
        request: &pb::AlarmRequest,
    ) -> Option<Vec<pb::AlarmMember>> {
        if index <= self.index {
            return None;
        }
        self.index = index;
        Some(self.alarms.apply(request))
    }

    /// Reads the durable copy in `member_dir`, with the id of the member that keeps it.
    pub fn load(member_dir: &Path) -> Result<Option<(Members, NodeId)>, MembershipError> {
        let path = member_dir.join(MEMBERSHIP_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(MembershipError::Load {
                    path,
                    detail: e.to_string(),
                });
            }
        };
        let table =
            ipb::MemberTable::decode(bytes.as_slice()).map_err(|e| MembershipError::Load {
                path: path.clone(),
                detail: e.to_string(),
            })?;
        Ok(Some((Members::from_proto(&table), NodeId(table.local_id))))
    }

    /// Writes the durable copy in `member_dir` (atomically, fsynced).
    pub fn save(&self, member_dir: &Path, local_id: NodeId) -> Result<(), MembershipError> {
        let path = member_dir.join(MEMBERSHIP_FILE);
        crate::snap::write_durably(&path, &self.to_proto(local_id).encode_to_vec())
            .map_err(|source| MembershipError::Save { path, source })
    }

    /// The member whose peer URLs equal `urls` (as sets).
    pub fn find_by_peer_urls(&self, urls: &[String]) -> Option<&ipb::MemberRecord> {
        let want: BTreeSet<&String> = urls.iter().collect();
        self.members
            .values()
            .find(|m| m.peer_urls.iter().collect::<BTreeSet<_>>() == want)
    }
}

/// Normalises peer URLs as the configuration prints them; refuses anything else with etcd's
/// "given member URLs are invalid".
pub fn parse_peer_urls(urls: &[String]) -> Result<Vec<String>, ServerError> {
    if urls.is_empty() {
        return Err(ServerError::MemberBadUrls);
    }
    urls.iter()
        .map(|u| {
            MemberUrl::parse(u)
                .map(|u| u.to_string())
                .map_err(|_| ServerError::MemberBadUrls)
        })
        .collect()
}

/// The URL the transport and the forwarder dial for a member, from its first peer URL.
fn dial_url(member: &ipb::MemberRecord) -> Option<String> {
    let first = member.peer_urls.first()?;
    let url = MemberUrl::parse(first).ok()?;
    Some(format!("http://{}", url.authority()))
}

/// What the leader knows of a member's log, for the checks of [`check_change`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeerProgress {
    pub matched: LogIndex,
    /// Heard from within the last election timeout.
    pub active: bool,
}

/// What a checked request turns into.
#[derive(Clone, Debug, PartialEq)]
pub enum Planned {
    /// Propose this ConfChange; the member concerned is given for the answer.
    ConfChange(ConfChange, ipb::MemberRecord),
    /// Propose a normal entry carrying this update.
    Update(ipb::MemberRecord),
    /// Propose a normal entry raising or disarming this alarm.
    Alarm(pb::AlarmRequest),
}

/// The leader's view used to check a change.
pub struct LeaderView<'a> {
    pub members: &'a Members,
    pub local_id: NodeId,
    /// The leader's own last index.
    pub last_index: LogIndex,
    /// Progress of every other member.
    pub progress: &'a HashMap<NodeId, PeerProgress>,
    /// A fresh id for a member being added (already checked to be unused).
    pub new_id: NodeId,
}

impl LeaderView<'_> {
    fn started_voters(&self, except: Option<NodeId>) -> usize {
        self.members
            .members
            .values()
            .filter(|m| !m.is_learner && Some(NodeId(m.id)) != except)
            .filter(|m| {
                NodeId(m.id) == self.local_id
                    || self.progress.get(&NodeId(m.id)).is_some_and(|p| p.active)
            })
            .count()
    }
}

/// etcd's checks of a Cluster request, on the leader, before it is proposed.
pub fn check_change(
    view: &LeaderView<'_>,
    change: &ipb::member_change_request::Change,
) -> Result<Planned, ServerError> {
    use ipb::member_change_request::Change;
    let members = view.members;
    let find = |id: u64| members.members.get(&NodeId(id)).cloned();
    match change {
        Change::Add(add) => {
            let peer_urls = parse_peer_urls(&add.peer_ur_ls)?;
            let taken: BTreeSet<&String> = members
                .members
                .values()
                .flat_map(|m| &m.peer_urls)
                .collect();
            if peer_urls.iter().any(|u| taken.contains(u)) {
                return Err(ServerError::PeerUrlExist);
            }
            if members.members.contains_key(&view.new_id) {
                return Err(ServerError::MemberExist);
            }
            let learners = members.members.values().filter(|m| m.is_learner).count();
            if add.is_learner && learners >= LEARNERS_MAX {
                return Err(ServerError::TooManyLearners);
            }
            if !add.is_learner {
                // etcd's strict reconfiguration check: the started voters must still form a
                // quorum of the grown cluster.
                // As etcd, a one-member cluster may always grow to two (the way a cluster
                // restored from a backup gets its members back).
                let voters = members.members.values().filter(|m| !m.is_learner).count() + 1;
                let started = view.started_voters(None);
                if !(started == 1 && voters == 2) && started < voters / 2 + 1 {
                    return Err(ServerError::MemberNotEnoughStarted);
                }
            }
            let record = ipb::MemberRecord {
                id: view.new_id.get(),
                name: String::new(),
                peer_urls,
                is_learner: add.is_learner,
            };
            let single = if add.is_learner {
                ConfChangeSingle::AddLearner(view.new_id)
            } else {
                ConfChangeSingle::AddVoter(view.new_id)
            };
            Ok(Planned::ConfChange(conf_change(single, &record), record))
        }
        Change::Remove(remove) => {
            let record = find(remove.id).ok_or(ServerError::MemberNotFound)?;
            if !record.is_learner {
                let voters = members.members.values().filter(|m| !m.is_learner).count();
                let remaining = voters.saturating_sub(1);
                let quorum = remaining / 2 + 1;
                if remaining > 0 && view.started_voters(Some(NodeId(remove.id))) < quorum {
                    return Err(ServerError::MemberNotEnoughStarted);
                }
            }
            let single = ConfChangeSingle::RemoveNode(NodeId(remove.id));
            Ok(Planned::ConfChange(conf_change(single, &record), record))
        }
        Change::Update(update) => {
            let mut record = find(update.id).ok_or(ServerError::MemberNotFound)?;
            let peer_urls = parse_peer_urls(&update.peer_ur_ls)?;
            let taken: BTreeSet<&String> = members
                .members
                .values()
                .filter(|m| m.id != update.id)
                .flat_map(|m| &m.peer_urls)
                .collect();
            if peer_urls.iter().any(|u| taken.contains(u)) {
                return Err(ServerError::PeerUrlExist);
            }
            record.peer_urls = peer_urls;
            Ok(Planned::Update(record))
        }
        Change::Alarm(alarm) => Ok(Planned::Alarm(*alarm)),
        Change::Promote(promote) => {
            let mut record = find(promote.id).ok_or(ServerError::MemberNotFound)?;
            if !record.is_learner {
                return Err(ServerError::MemberNotLearner);
            }
            let matched = view
                .progress
                .get(&NodeId(promote.id))
                .map_or(LogIndex(0), |p| p.matched);
            // etcd: the learner's match must reach 90% of the leader's.
            if matched.get().saturating_mul(100)
                < view.last_index.get().saturating_mul(PROMOTE_READY_PERCENT)
            {
                return Err(ServerError::LearnerNotReady);
            }
            let voters = members.members.values().filter(|m| !m.is_learner).count() + 1;
            let active_learner = view
                .progress
                .get(&NodeId(promote.id))
                .is_some_and(|p| p.active);
            if view.started_voters(None) + usize::from(active_learner) < voters / 2 + 1 {
                return Err(ServerError::MemberNotEnoughStarted);
            }
            record.is_learner = false;
            let single = ConfChangeSingle::AddVoter(NodeId(promote.id));
            Ok(Planned::ConfChange(conf_change(single, &record), record))
        }
    }
}

fn conf_change(single: ConfChangeSingle, record: &ipb::MemberRecord) -> ConfChange {
    ConfChange {
        changes: vec![single],
        context: record.encode_to_vec().into(),
        ..ConfChange::default()
    }
}

/// A fresh member id, unique among `members` and the removed ids: a hash of the peer URLs,
/// the cluster id and the time (as etcd derives it), rehashed on collision.
pub fn new_member_id(members: &Members, peer_urls: &[String], now_nanos: u64) -> NodeId {
    let mut seed = now_nanos;
    loop {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let cluster = members.cluster_id.to_be_bytes();
        let time = seed.to_be_bytes();
        let parts = peer_urls
            .iter()
            .map(String::as_bytes)
            .chain([cluster.as_slice(), time.as_slice()]);
        for part in parts {
            for byte in part.iter().chain(&[0u8]) {
                hash ^= u64::from(*byte);
                hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        let id = NodeId(hash.max(1));
        if !members.members.contains_key(&id) && !members.removed.contains(&id) {
            return id;
        }
        seed = seed.wrapping_add(1);
    }
}

/// Keeps the peer transport and the forwarder dialing every other member of the table.
pub struct PeerSync {
    pub transport: PeerTransport,
    pub forwarder: Forwarder,
    pub local_id: NodeId,
    /// What the transport dials now.
    dialing: HashMap<NodeId, String>,
}

impl PeerSync {
    pub fn new(transport: PeerTransport, forwarder: Forwarder, local_id: NodeId) -> Self {
        PeerSync {
            transport,
            forwarder,
            local_id,
            dialing: HashMap::new(),
        }
    }

    /// Adds, re-points and removes peers so that exactly the table's other members are dialed.
    pub fn sync(&mut self, members: &Members) {
        let wanted: HashMap<NodeId, String> = members
            .members
            .values()
            .filter(|m| m.id != self.local_id.get())
            .filter_map(|m| dial_url(m).map(|url| (NodeId(m.id), url)))
            .collect();
        let gone: Vec<NodeId> = self
            .dialing
            .keys()
            .filter(|id| !wanted.contains_key(id))
            .copied()
            .collect();
        for id in gone {
            tracing::info!(member = %id, "no longer dialing a removed member");
            self.transport.remove_peer(id);
            self.forwarder.remove_peer(id);
            self.dialing.remove(&id);
        }
        for (id, url) in wanted {
            if self.dialing.get(&id) == Some(&url) {
                continue;
            }
            tracing::info!(member = %id, %url, "dialing a member");
            self.transport.add_peer(id, url.clone());
            self.forwarder.set_peer(id, url.clone());
            self.dialing.insert(id, url);
        }
    }
}

/// How long a joining member waits for one peer to tell the membership.
const FETCH_TIMEOUT: Duration = Duration::from_secs(2);

/// Asks the members at `peer_urls` (`http://host:port`) for the replicated membership, first
/// answer wins.
pub async fn fetch_table(peer_urls: &[String]) -> Option<ipb::MemberTable> {
    for url in peer_urls {
        let Ok(endpoint) = tonic::transport::Endpoint::from_shared(url.clone()) else {
            continue;
        };
        let call = async {
            let channel = endpoint.connect_timeout(FETCH_TIMEOUT).connect().await?;
            let mut client = ipb::forward_client::ForwardClient::new(channel);
            let table = client.member_table_get(ipb::MemberTableRequest {}).await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(table.into_inner())
        };
        match tokio::time::timeout(FETCH_TIMEOUT, call).await {
            Ok(Ok(table)) => return Some(table),
            Ok(Err(error)) => tracing::debug!(%url, %error, "no membership from this peer"),
            Err(_) => tracing::debug!(%url, "no membership from this peer in time"),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: u64, url: &str, learner: bool) -> ipb::MemberRecord {
        ipb::MemberRecord {
            id,
            name: format!("m{id}"),
            peer_urls: vec![url.to_string()],
            is_learner: learner,
        }
    }

    fn three() -> Members {
        Members {
            index: LogIndex(0),
            members: (1..=3)
                .map(|i| {
                    (
                        NodeId(i),
                        record(i, &format!("http://127.0.0.1:{}", 2380 + i), false),
                    )
                })
                .collect(),
            removed: BTreeSet::new(),
            cluster_id: 99,
            alarms: AlarmSet::default(),
        }
    }

    fn all_active(members: &Members) -> HashMap<NodeId, PeerProgress> {
        members
            .members
            .keys()
            .map(|id| {
                (
                    *id,
                    PeerProgress {
                        matched: LogIndex(100),
                        active: true,
                    },
                )
            })
            .collect()
    }

    fn view<'a>(
        members: &'a Members,
        progress: &'a HashMap<NodeId, PeerProgress>,
    ) -> LeaderView<'a> {
        LeaderView {
            members,
            local_id: NodeId(1),
            last_index: LogIndex(100),
            progress,
            new_id: NodeId(7),
        }
    }

    use chorus_proto::etcdserverpb as pb;
    use ipb::member_change_request::Change;

    /// Goal: applied changes build the same table on every member, and replaying an entry the
    /// table already reflects changes nothing. Method: add, promote, update, remove, replay.
    #[test]
    fn applying_changes_is_deterministic_and_idempotent() {
        let mut m = three();
        let progress = all_active(&m);
        let add = Change::Add(pb::MemberAddRequest {
            peer_ur_ls: vec!["http://127.0.0.1:2390".into()],
            is_learner: true,
        });
        let Planned::ConfChange(cc, rec) = check_change(&view(&m, &progress), &add).unwrap() else {
            panic!("an add is a ConfChange");
        };
        assert!(m.apply_conf_change(LogIndex(5), &cc).unwrap());
        assert!(
            !m.apply_conf_change(LogIndex(5), &cc).unwrap(),
            "replay is a no-op"
        );
        assert!(m.members[&NodeId(7)].is_learner);
        assert_eq!(m.members[&NodeId(7)].peer_urls, rec.peer_urls);
        assert_eq!(m.conf_state(None).learners, BTreeSet::from([NodeId(7)]));
        assert_eq!(m.conf_state(Some(NodeId(7))).learners, BTreeSet::new());

        let mut progress = all_active(&m);
        let promote = Change::Promote(pb::MemberPromoteRequest { id: 7 });
        let Planned::ConfChange(cc, _) = check_change(&view(&m, &progress), &promote).unwrap()
        else {
            panic!("a promotion is a ConfChange");
        };
        m.apply_conf_change(LogIndex(6), &cc).unwrap();
        assert!(!m.members[&NodeId(7)].is_learner);
        assert_eq!(m.conf_state(None).voters.len(), 4);

        let update = Change::Update(pb::MemberUpdateRequest {
            id: 2,
            peer_ur_ls: vec!["http://127.0.0.1:3000".into()],
        });
        let Planned::Update(rec) = check_change(&view(&m, &progress), &update).unwrap() else {
            panic!("an update is a normal entry");
        };
        assert!(m.apply_update(LogIndex(7), &rec));
        assert_eq!(
            m.members[&NodeId(2)].peer_urls,
            vec!["http://127.0.0.1:3000"]
        );
        assert_eq!(m.members[&NodeId(2)].name, "m2", "an update keeps the name");

        progress.remove(&NodeId(3));
        let remove = Change::Remove(pb::MemberRemoveRequest { id: 3 });
        let Planned::ConfChange(cc, _) = check_change(&view(&m, &progress), &remove).unwrap()
        else {
            panic!("a removal is a ConfChange");
        };
        m.apply_conf_change(LogIndex(8), &cc).unwrap();
        assert!(!m.members.contains_key(&NodeId(3)));
        assert!(m.removed.contains(&NodeId(3)));
        assert_eq!(m.index, LogIndex(8));
        // Alarms ride along: applied once, replay ignored.
        let raise = pb::AlarmRequest {
            action: pb::alarm_request::AlarmAction::Activate as i32,
            member_id: 2,
            alarm: pb::AlarmType::Nospace as i32,
        };
        assert_eq!(m.apply_alarm(LogIndex(9), &raise).map(|a| a.len()), Some(1));
        assert_eq!(
            m.apply_alarm(LogIndex(9), &raise),
            None,
            "replay is a no-op"
        );
        assert!(m.alarms.no_space());
        // The table survives its protobuf form.
        assert_eq!(Members::from_proto(&m.to_proto(NodeId(1))), m);
    }

    /// Goal: each etcd refusal comes with etcd's error. Method: one bad request per row.
    #[test]
    fn refusals_match_etcd() {
        let mut m = three();
        m.members
            .insert(NodeId(5), record(5, "http://127.0.0.1:2395", true));
        let mut progress = all_active(&m);
        progress.insert(
            NodeId(5),
            PeerProgress {
                matched: LogIndex(10),
                active: true,
            },
        );
        let v = view(&m, &progress);
        let cases = [
            (
                Change::Add(pb::MemberAddRequest {
                    peer_ur_ls: vec!["http://127.0.0.1:2381".into()],
                    is_learner: false,
                }),
                ServerError::PeerUrlExist,
            ),
            (
                Change::Add(pb::MemberAddRequest {
                    peer_ur_ls: vec!["not a url".into()],
                    is_learner: false,
                }),
                ServerError::MemberBadUrls,
            ),
            (
                Change::Add(pb::MemberAddRequest {
                    peer_ur_ls: vec!["http://127.0.0.1:4000".into()],
                    is_learner: true,
                }),
                ServerError::TooManyLearners,
            ),
            (
                Change::Remove(pb::MemberRemoveRequest { id: 42 }),
                ServerError::MemberNotFound,
            ),
            (
                Change::Promote(pb::MemberPromoteRequest { id: 2 }),
                ServerError::MemberNotLearner,
            ),
            (
                Change::Promote(pb::MemberPromoteRequest { id: 5 }),
                ServerError::LearnerNotReady,
            ),
            (
                Change::Update(pb::MemberUpdateRequest {
                    id: 2,
                    peer_ur_ls: vec!["http://127.0.0.1:2383".into()],
                }),
                ServerError::PeerUrlExist,
            ),
        ];
        for (i, (change, want)) in cases.into_iter().enumerate() {
            assert_eq!(check_change(&v, &change), Err(want), "case {i}");
        }
        // Two of three voters down: removing a live one would leave no quorum of started
        // members; adding a voter too.
        let mut progress = all_active(&m);
        progress.get_mut(&NodeId(2)).unwrap().active = false;
        let v = view(&m, &progress);
        assert_eq!(
            check_change(&v, &Change::Remove(pb::MemberRemoveRequest { id: 3 })),
            Err(ServerError::MemberNotEnoughStarted)
        );
        progress.get_mut(&NodeId(3)).unwrap().active = false;
        let v = view(&m, &progress);
        assert_eq!(
            check_change(
                &v,
                &Change::Add(pb::MemberAddRequest {
                    peer_ur_ls: vec!["http://127.0.0.1:4000".into()],
                    is_learner: false,
                })
            ),
            Err(ServerError::MemberNotEnoughStarted)
        );
    }

    /// Goal: new ids never collide with members or removed ids. Method: occupy the first id.
    #[test]
    fn new_ids_are_unique() {
        let mut m = three();
        let urls = vec!["http://127.0.0.1:9".to_string()];
        let first = new_member_id(&m, &urls, 1);
        assert_eq!(first, new_member_id(&m, &urls, 1), "deterministic");
        m.removed.insert(first);
        let second = new_member_id(&m, &urls, 1);
        assert_ne!(first, second);
        assert!(!m.members.contains_key(&second));
    }

    /// Goal: the durable copy reads back with the keeper's id. Method: save, load.
    #[test]
    fn durable_copy_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Members::load(dir.path()).unwrap().is_none());
        let m = three();
        m.save(dir.path(), NodeId(2)).unwrap();
        let (loaded, local) = Members::load(dir.path()).unwrap().unwrap();
        assert_eq!((loaded, local), (m, NodeId(2)));
        std::fs::write(dir.path().join(MEMBERSHIP_FILE), [0xff, 0xff]).unwrap();
        assert!(Members::load(dir.path()).is_err());
    }
}
