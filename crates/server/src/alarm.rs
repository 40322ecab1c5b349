//! Alarms and the backend quota, as etcd has them.
//!
//! An alarm is a (member, kind) pair raised through Raft, so every member knows it; the set
//! is kept durably with the replicated membership (see [`crate::membership`]) and travels in
//! Raft snapshots with it. The kinds
//! are etcd's: `NOSPACE` (a member's store outgrew `--quota-backend-bytes`) and `CORRUPT`.
//! While any `NOSPACE` alarm is active the cluster refuses the writes that grow the store
//! (Put, a Txn with a Put, LeaseGrant) with etcd's "etcdserver: mvcc: database space
//! exceeded", and still serves reads, deletes, compactions and lease revocations, so that an
//! operator can make room, defragment, and disarm the alarm (`etcdctl alarm disarm`).
//!
//! The quota check happens where etcd makes it, on the member that receives a write: when its
//! store's file plus the request would exceed the quota, it raises `NOSPACE` for itself and
//! refuses the write.

use std::collections::BTreeSet;

use chorus_proto::etcdserverpb as pb;
use chorus_proto::internal as ipb;

use pb::alarm_request::AlarmAction;

/// etcd's cost of a request beyond its encoded size (its `quota` adds room for the index and
/// the bucket overhead of each write).
pub const REQUEST_OVERHEAD_BYTES: u64 = 128;

/// The alarms active in the cluster, as applied from the log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AlarmSet {
    active: BTreeSet<(u64, i32)>,
}

impl AlarmSet {
    /// The set holding these alarms (as the membership table stores them).
    pub fn from_list(alarms: &[pb::AlarmMember]) -> AlarmSet {
        AlarmSet {
            active: alarms.iter().map(|a| (a.member_id, a.alarm)).collect(),
        }
    }

    /// The alarms, every kind when `kind` is `NONE`, as etcd's GET answers.
    pub fn list(&self, kind: pb::AlarmType) -> Vec<pb::AlarmMember> {
        self.active
            .iter()
            .filter(|(_, alarm)| kind == pb::AlarmType::None || *alarm == kind as i32)
            .map(|(member_id, alarm)| pb::AlarmMember {
                member_id: *member_id,
                alarm: *alarm,
            })
            .collect()
    }

    /// Applies an alarm request (the same on every member, in log order) and answers as etcd:
    /// GET lists; ACTIVATE and DEACTIVATE answer the alarm they touched.
    pub fn apply(&mut self, request: &pb::AlarmRequest) -> Vec<pb::AlarmMember> {
        let kind = pb::AlarmType::try_from(request.alarm).unwrap_or(pb::AlarmType::None);
        let member = pb::AlarmMember {
            member_id: request.member_id,
            alarm: request.alarm,
        };
        match AlarmAction::try_from(request.action) {
            Ok(AlarmAction::Get) | Err(_) => self.list(kind),
            Ok(AlarmAction::Activate) => {
                if kind == pb::AlarmType::None {
                    return Vec::new();
                }
                self.active.insert((request.member_id, request.alarm));
                vec![member]
            }
            Ok(AlarmAction::Deactivate) => {
                if self.active.remove(&(request.member_id, request.alarm)) {
                    vec![member]
                } else {
                    Vec::new()
                }
            }
        }
    }

    /// Whether a `NOSPACE` alarm is active on any member.
    pub fn no_space(&self) -> bool {
        self.active
            .iter()
            .any(|(_, alarm)| *alarm == pb::AlarmType::Nospace as i32)
    }
}

/// Whether a write grows the store, and so is refused while `NOSPACE` is active.
pub fn grows_store(request: &ipb::forward_request::Request) -> bool {
    use ipb::forward_request::Request as R;
    match request {
        R::Put(_) | R::LeaseGrant(_) => true,
        R::Txn(txn) => txn_puts(txn),
        R::DeleteRange(_) | R::Compaction(_) | R::LeaseRevoke(_) => false,
    }
}

fn txn_puts(txn: &pb::TxnRequest) -> bool {
    use pb::request_op::Request as Op;
    txn.success
        .iter()
        .chain(&txn.failure)
        .any(|op| match &op.request {
            Some(Op::RequestPut(_)) => true,
            Some(Op::RequestTxn(inner)) => txn_puts(inner),
            _ => false,
        })
}

/// Whether a write of `request_bytes` would take a store of `db_bytes` past the quota.
pub fn exceeds_quota(db_bytes: u64, request_bytes: u64, quota_bytes: u64) -> bool {
    db_bytes.saturating_add(request_bytes + REQUEST_OVERHEAD_BYTES) > quota_bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(action: AlarmAction, member_id: u64, alarm: pb::AlarmType) -> pb::AlarmRequest {
        pb::AlarmRequest {
            action: action as i32,
            member_id,
            alarm: alarm as i32,
        }
    }

    /// Goal: alarms are raised, listed and disarmed as etcd does. Method: a sequence of
    /// requests with the answer each must give.
    #[test]
    fn alarms_follow_etcds_rules() {
        let mut set = AlarmSet::default();
        assert!(
            set.apply(&request(AlarmAction::Get, 0, pb::AlarmType::None))
                .is_empty()
        );
        let raised = set.apply(&request(AlarmAction::Activate, 7, pb::AlarmType::Nospace));
        assert_eq!(raised.len(), 1);
        assert!(set.no_space());
        // Raising it again changes nothing and answers it again.
        assert_eq!(
            set.apply(&request(AlarmAction::Activate, 7, pb::AlarmType::Nospace)),
            raised
        );
        set.apply(&request(AlarmAction::Activate, 8, pb::AlarmType::Corrupt));
        assert_eq!(set.list(pb::AlarmType::None).len(), 2);
        assert_eq!(set.list(pb::AlarmType::Corrupt).len(), 1);
        // NONE cannot be raised.
        assert!(
            set.apply(&request(AlarmAction::Activate, 9, pb::AlarmType::None))
                .is_empty()
        );
        // Disarming an alarm that is not there answers nothing.
        assert!(
            set.apply(&request(AlarmAction::Deactivate, 8, pb::AlarmType::Nospace))
                .is_empty()
        );
        assert_eq!(
            set.apply(&request(AlarmAction::Deactivate, 7, pb::AlarmType::Nospace))
                .len(),
            1
        );
        assert!(!set.no_space());
    }

    /// Goal: only writes that grow the store are refused while NOSPACE is active.
    #[test]
    fn only_growing_writes_are_capped() {
        use ipb::forward_request::Request as R;
        use pb::request_op::Request as Op;
        assert!(grows_store(&R::Put(pb::PutRequest::default())));
        assert!(!grows_store(&R::DeleteRange(
            pb::DeleteRangeRequest::default()
        )));
        assert!(!grows_store(&R::Compaction(
            pb::CompactionRequest::default()
        )));
        let read_only = pb::TxnRequest {
            success: vec![pb::RequestOp {
                request: Some(Op::RequestRange(pb::RangeRequest::default())),
            }],
            ..Default::default()
        };
        assert!(!grows_store(&R::Txn(read_only.clone())));
        let nested_put = pb::TxnRequest {
            failure: vec![pb::RequestOp {
                request: Some(Op::RequestTxn(pb::TxnRequest {
                    success: vec![pb::RequestOp {
                        request: Some(Op::RequestPut(pb::PutRequest::default())),
                    }],
                    ..Default::default()
                })),
            }],
            ..read_only
        };
        assert!(grows_store(&R::Txn(nested_put)));
        assert!(exceeds_quota(1000, 100, 1100));
        assert!(!exceeds_quota(1000, 100, 1300));
    }
}
