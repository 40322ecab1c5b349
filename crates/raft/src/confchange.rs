//! Membership changes: from a configuration and a [`ConfChange`], the next configuration and
//! progress map (§4 of the Raft thesis).
//!
//! Three shapes of change:
//! - simple: at most one voter added or removed, applied directly (§4.1, single-server change);
//! - enter joint: the old voters become the outgoing half and the change is applied to the
//!   incoming half (§4.3, joint consensus);
//! - leave joint: the outgoing half is dropped and demoted voters become learners.
//!
//! Pure: nothing here sends messages or touches the log.

use std::collections::{BTreeMap, BTreeSet};

use crate::tracker::{Progress, ProgressTracker, TrackerConfig};
use crate::types::{ConfChange, ConfChangeSingle, ConfChangeTransition, LogIndex, NodeId};

/// Why a membership change cannot be applied.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ConfChangeError {
    #[error("the configuration is already joint")]
    AlreadyJoint,
    #[error("the configuration is not joint, there is nothing to leave")]
    NotJoint,
    #[error("a simple change may add or remove at most one voter, this one changes {changed}")]
    TooManyVoterChanges { changed: usize },
    #[error("the change would leave no voters")]
    NoVoters,
    #[error("node id zero is not a valid member")]
    NodeIdZero,
    #[error("the resulting configuration is inconsistent: {0}")]
    Inconsistent(String),
}

/// The outcome of a change: the next configuration and its progress map.
pub type Changed = (TrackerConfig, BTreeMap<NodeId, Progress>);

/// Computes the configuration after `cc`. New members start probing at `next`.
pub fn apply(
    tracker: &ProgressTracker,
    cc: &ConfChange,
    next: LogIndex,
) -> Result<Changed, ConfChangeError> {
    if cc.is_leave_joint() {
        return leave_joint(tracker);
    }
    let simple = cc.transition == ConfChangeTransition::Auto && cc.changes.len() <= 1;
    if simple {
        simple_change(tracker, &cc.changes, next)
    } else {
        let auto_leave = cc.transition != ConfChangeTransition::JointExplicit;
        enter_joint(tracker, &cc.changes, auto_leave, next)
    }
}

/// Builds the progress map and configuration of a conf state restored from a snapshot or from
/// storage at startup.
pub fn restore(
    tracker: &ProgressTracker,
    config: TrackerConfig,
    next: LogIndex,
) -> Result<Changed, ConfChangeError> {
    config.check().map_err(ConfChangeError::Inconsistent)?;
    let mut progress = BTreeMap::new();
    for id in config.members() {
        let is_learner = config.learners.contains(&id) || config.learners_next.contains(&id);
        let pr = tracker
            .progress
            .get(&id)
            .cloned()
            .unwrap_or_else(|| new_progress(tracker, next, is_learner));
        progress.insert(id, pr);
    }
    for (id, pr) in progress.iter_mut() {
        pr.is_learner = !config.voters.contains(*id);
    }
    Ok((config, progress))
}

fn new_progress(tracker: &ProgressTracker, next: LogIndex, is_learner: bool) -> Progress {
    let mut pr = Progress::new(
        next.max(LogIndex(1)),
        tracker.inflight_msgs_max(),
        is_learner,
    );
    // A new member counts as active so that check-quorum does not depose the leader before the
    // member had a chance to answer.
    pr.recent_active = true;
    pr
}

fn simple_change(
    tracker: &ProgressTracker,
    changes: &[ConfChangeSingle],
    next: LogIndex,
) -> Result<Changed, ConfChangeError> {
    if tracker.config.voters.is_joint() {
        return Err(ConfChangeError::AlreadyJoint);
    }
    let (config, progress) = apply_changes(tracker, tracker.config.clone(), changes, next)?;
    let before = &tracker.config.voters.incoming.voters;
    let after = &config.voters.incoming.voters;
    let changed = before.symmetric_difference(after).count();
    if changed > 1 {
        return Err(ConfChangeError::TooManyVoterChanges { changed });
    }
    Ok((config, progress))
}

fn enter_joint(
    tracker: &ProgressTracker,
    changes: &[ConfChangeSingle],
    auto_leave: bool,
    next: LogIndex,
) -> Result<Changed, ConfChangeError> {
    if tracker.config.voters.is_joint() {
        return Err(ConfChangeError::AlreadyJoint);
    }
    let mut config = tracker.config.clone();
    if config.voters.incoming.voters.is_empty() {
        // A joint configuration with an empty outgoing half is no joint configuration at all.
        return Err(ConfChangeError::NoVoters);
    }
    config.voters.outgoing = config.voters.incoming.clone();
    let (mut config, progress) = apply_changes(tracker, config, changes, next)?;
    config.auto_leave = auto_leave;
    Ok((config, progress))
}

fn leave_joint(tracker: &ProgressTracker) -> Result<Changed, ConfChangeError> {
    if !tracker.config.voters.is_joint() {
        return Err(ConfChangeError::NotJoint);
    }
    let mut config = tracker.config.clone();
    let mut progress = tracker.progress.clone();
    let learners_next = std::mem::take(&mut config.learners_next);
    for id in learners_next {
        config.learners.insert(id);
        if let Some(pr) = progress.get_mut(&id) {
            pr.is_learner = true;
        }
    }
    let outgoing = std::mem::take(&mut config.voters.outgoing.voters);
    for id in outgoing {
        if !config.voters.incoming.voters.contains(&id) && !config.learners.contains(&id) {
            progress.remove(&id);
        }
    }
    config.auto_leave = false;
    finish(config, progress)
}

fn apply_changes(
    tracker: &ProgressTracker,
    mut config: TrackerConfig,
    changes: &[ConfChangeSingle],
    next: LogIndex,
) -> Result<Changed, ConfChangeError> {
    let mut progress = tracker.progress.clone();
    for change in changes {
        match *change {
            ConfChangeSingle::AddVoter(id) => {
                add_voter(tracker, &mut config, &mut progress, id, next)?
            }
            ConfChangeSingle::AddLearner(id) => {
                add_learner(tracker, &mut config, &mut progress, id, next)?
            }
            ConfChangeSingle::RemoveNode(id) => remove(&mut config, &mut progress, id),
        }
    }
    if config.voters.incoming.voters.is_empty() {
        return Err(ConfChangeError::NoVoters);
    }
    finish(config, progress)
}

fn add_voter(
    tracker: &ProgressTracker,
    config: &mut TrackerConfig,
    progress: &mut BTreeMap<NodeId, Progress>,
    id: NodeId,
    next: LogIndex,
) -> Result<(), ConfChangeError> {
    if id.get() == 0 {
        return Err(ConfChangeError::NodeIdZero);
    }
    config.learners.remove(&id);
    config.learners_next.remove(&id);
    config.voters.incoming.voters.insert(id);
    progress
        .entry(id)
        .or_insert_with(|| new_progress(tracker, next, false))
        .is_learner = false;
    Ok(())
}

fn add_learner(
    tracker: &ProgressTracker,
    config: &mut TrackerConfig,
    progress: &mut BTreeMap<NodeId, Progress>,
    id: NodeId,
    next: LogIndex,
) -> Result<(), ConfChangeError> {
    if id.get() == 0 {
        return Err(ConfChangeError::NodeIdZero);
    }
    config.voters.incoming.voters.remove(&id);
    progress
        .entry(id)
        .or_insert_with(|| new_progress(tracker, next, true));
    if config.voters.outgoing.voters.contains(&id) {
        // Still a voter of the outgoing half: it becomes a learner when the joint state is left.
        config.learners_next.insert(id);
    } else {
        config.learners.insert(id);
        if let Some(pr) = progress.get_mut(&id) {
            pr.is_learner = true;
        }
    }
    Ok(())
}

fn remove(config: &mut TrackerConfig, progress: &mut BTreeMap<NodeId, Progress>, id: NodeId) {
    config.voters.incoming.voters.remove(&id);
    config.learners.remove(&id);
    config.learners_next.remove(&id);
    if !config.voters.outgoing.voters.contains(&id) {
        progress.remove(&id);
    }
}

fn finish(
    config: TrackerConfig,
    progress: BTreeMap<NodeId, Progress>,
) -> Result<Changed, ConfChangeError> {
    config.check().map_err(ConfChangeError::Inconsistent)?;
    let members: BTreeSet<NodeId> = config.members();
    let tracked: BTreeSet<NodeId> = progress.keys().copied().collect();
    if members != tracked {
        return Err(ConfChangeError::Inconsistent(format!(
            "members {members:?} but progress for {tracked:?}"
        )));
    }
    Ok((config, progress))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::ConfState;

    fn ids(list: &[u64]) -> BTreeSet<NodeId> {
        list.iter().map(|i| NodeId(*i)).collect()
    }

    fn tracker(cs: &ConfState) -> ProgressTracker {
        let mut tracker = ProgressTracker::new(8);
        let (config, progress) =
            restore(&tracker, TrackerConfig::from_conf_state(cs), LogIndex(1)).unwrap();
        tracker.apply(config, progress);
        tracker
    }

    fn cc(transition: ConfChangeTransition, changes: Vec<ConfChangeSingle>) -> ConfChange {
        ConfChange {
            transition,
            changes,
            context: Default::default(),
        }
    }

    use ConfChangeSingle::*;
    use ConfChangeTransition::*;

    /// Goal: each kind of change yields the documented configuration, and invalid changes are
    /// refused. Method: a table of (start, change, expected conf state or error).
    #[test]
    fn changes_table() {
        let v123 = ConfState::with_voters(ids(&[1, 2, 3]));
        let joint = ConfState {
            voters: ids(&[1, 2, 4]),
            voters_outgoing: ids(&[1, 2, 3]),
            learners_next: ids(&[3]),
            auto_leave: true,
            ..ConfState::default()
        };
        type Case = (ConfState, ConfChange, Result<ConfState, ConfChangeError>);
        let cases: Vec<Case> = vec![
            // Simple: add one voter.
            (
                v123.clone(),
                cc(Auto, vec![AddVoter(NodeId(4))]),
                Ok(ConfState::with_voters(ids(&[1, 2, 3, 4]))),
            ),
            // Simple: add a learner.
            (
                v123.clone(),
                cc(Auto, vec![AddLearner(NodeId(4))]),
                Ok(ConfState {
                    learners: ids(&[4]),
                    ..ConfState::with_voters(ids(&[1, 2, 3]))
                }),
            ),
            // Simple: remove a voter.
            (
                v123.clone(),
                cc(Auto, vec![RemoveNode(NodeId(3))]),
                Ok(ConfState::with_voters(ids(&[1, 2]))),
            ),
            // Joint: replace 3 by 4, demoting 3 to a learner.
            (
                v123.clone(),
                cc(
                    JointImplicit,
                    vec![AddVoter(NodeId(4)), AddLearner(NodeId(3))],
                ),
                Ok(joint.clone()),
            ),
            // Joint: cannot enter twice.
            (
                joint.clone(),
                cc(JointImplicit, vec![AddVoter(NodeId(5))]),
                Err(ConfChangeError::AlreadyJoint),
            ),
            // Leave joint: 3 becomes a learner.
            (
                joint.clone(),
                ConfChange::default(),
                Ok(ConfState {
                    learners: ids(&[3]),
                    ..ConfState::with_voters(ids(&[1, 2, 4]))
                }),
            ),
            // Leave joint when not joint.
            (
                v123.clone(),
                ConfChange::default(),
                Err(ConfChangeError::NotJoint),
            ),
            // Removing the last voter.
            (
                ConfState::with_voters(ids(&[1])),
                cc(Auto, vec![RemoveNode(NodeId(1))]),
                Err(ConfChangeError::NoVoters),
            ),
            // Learner promotion.
            (
                ConfState {
                    learners: ids(&[4]),
                    ..v123.clone()
                },
                cc(Auto, vec![AddVoter(NodeId(4))]),
                Ok(ConfState::with_voters(ids(&[1, 2, 3, 4]))),
            ),
            // Explicit joint does not auto-leave.
            (
                v123.clone(),
                cc(JointExplicit, vec![AddVoter(NodeId(4))]),
                Ok(ConfState {
                    voters: ids(&[1, 2, 3, 4]),
                    voters_outgoing: ids(&[1, 2, 3]),
                    ..ConfState::default()
                }),
            ),
            (
                v123.clone(),
                cc(Auto, vec![AddVoter(NodeId(0))]),
                Err(ConfChangeError::NodeIdZero),
            ),
        ];
        for (i, (start, change, want)) in cases.into_iter().enumerate() {
            let tracker = tracker(&start);
            let got = apply(&tracker, &change, LogIndex(10)).map(|(config, progress)| {
                let members: BTreeSet<NodeId> = progress.keys().copied().collect();
                assert_eq!(
                    members,
                    config.members(),
                    "case {i}: progress follows membership"
                );
                for (id, pr) in &progress {
                    assert_eq!(
                        pr.is_learner,
                        !config.voters.contains(*id),
                        "case {i}: learner flag of {id}"
                    );
                }
                config.to_conf_state()
            });
            assert_eq!(got, want, "case {i}");
        }
    }

    /// Goal: two voter changes through `simple_change` are refused. Method: call it directly,
    /// since `Auto` with two changes goes through joint consensus.
    #[test]
    fn simple_change_refuses_two_voters() {
        let tracker = tracker(&ConfState::with_voters(ids(&[1, 2, 3])));
        let got = simple_change(
            &tracker,
            &[AddVoter(NodeId(4)), AddVoter(NodeId(5))],
            LogIndex(1),
        );
        assert_eq!(
            got.err(),
            Some(ConfChangeError::TooManyVoterChanges { changed: 2 })
        );
    }
}
