//! A randomized run of a five-node test network under partitions, crashes and proposals, with
//! checks of the properties of Figure 3 of the Raft paper. Shared by the paper-rule tests
//! (which require every check to pass) and the injected-bug tests (which require some seed to
//! fail one).

use std::collections::BTreeMap;

use bytes::Bytes;
use chorus_raft::interaction::Network;
use chorus_raft::{Config, Entry, LogIndex, LogStorage, NodeId, Role, Term};

use super::Rng;

pub struct Run {
    pub net: Network,
    rng: Rng,
    leaders: BTreeMap<Term, NodeId>,
    /// The last log seen of each leader, by term, for the append-only check.
    leader_logs: BTreeMap<Term, Vec<Entry>>,
    /// Every committed entry, with the term of the node that first reported it committed.
    committed: BTreeMap<LogIndex, (Entry, Term)>,
    seed: u64,
}

impl Run {
    pub fn new(seed: u64, configure: impl Fn(&mut Config)) -> Run {
        let mut net = Network::new(&[1, 2, 3, 4, 5], |c| {
            c.seed = seed * 31 + c.id.get();
            configure(c);
        });
        net.trace_messages = false;
        Run {
            net,
            rng: Rng(seed),
            leaders: BTreeMap::new(),
            leader_logs: BTreeMap::new(),
            committed: BTreeMap::new(),
            seed,
        }
    }

    /// One random action: a partition, a heal, a crash or restart, proposals, or a tick.
    pub fn step(&mut self) {
        match self.rng.below(20) {
            0 => {
                let a = 1 + self.rng.below(5);
                let b = 1 + self.rng.below(5);
                let side: Vec<u64> = (1..=5).filter(|i| *i == a || *i == b).collect();
                let rest: Vec<u64> = (1..=5).filter(|i| !side.contains(i)).collect();
                self.net.partition(&[side, rest]);
            }
            1 | 2 => self.net.heal(),
            3 => {
                let id = 1 + self.rng.below(5);
                if self.net.node(id).crashed {
                    self.net.restart(id);
                } else {
                    self.net.crash(id);
                }
            }
            4..=9 => {
                for id in 1..=5 {
                    if !self.net.node(id).crashed && self.net.raw(id).status().role == Role::Leader
                    {
                        let data =
                            Bytes::from(format!("s{}-{}", self.seed, self.rng.below(1_000_000)));
                        let _ = self.net.raw(id).propose(data);
                    }
                }
                self.net.stabilize();
            }
            _ => self.net.tick_all(1),
        }
    }

    /// Liveness after the faults stop: heal, restart everyone, and a proposal commits everywhere.
    pub fn heal_and_check_progress(&mut self) -> Result<(), String> {
        self.net.heal();
        for id in 1..=5 {
            if self.net.node(id).crashed {
                self.net.restart(id);
            }
        }
        self.net.tick_all(60);
        let leader = (1..=5).find(|id| self.net.raw(*id).status().role == Role::Leader);
        let leader =
            leader.ok_or_else(|| format!("seed {}: no leader after healing", self.seed))?;
        let (_, index) = self
            .net
            .raw(leader)
            .propose(Bytes::from_static(b"final"))
            .map_err(|e| format!("seed {}: leader refused the final proposal: {e}", self.seed))?;
        self.net.stabilize();
        // Followers that caught up after the commit learn it from the next heartbeat.
        self.net.tick_all(2);
        for id in 1..=5 {
            if self.net.raw(id).status().applied < index {
                return Err(format!(
                    "seed {}: node {id} did not apply after healing: {:#?}",
                    self.seed,
                    self.net.status_lines()
                ));
            }
        }
        self.check()
    }

    /// Election safety, leader append-only, state machine safety, leader completeness and log
    /// matching.
    pub fn check(&mut self) -> Result<(), String> {
        let seed = self.seed;
        let mut logs = BTreeMap::new();
        for id in 1..=5u64 {
            let raw = &self.net.nodes[&NodeId(id)].raw;
            let s = raw.status();
            // The status a driver reads after every Ready is the same state, read cheaply.
            let basic = raw.basic_status();
            if basic != s.basic() {
                return Err(format!(
                    "seed {seed}: node {id}: {basic:?} disagrees with {s:?}"
                ));
            }
            // Election safety: at most one leader per term.
            if s.role == Role::Leader {
                let prev = *self.leaders.entry(s.term).or_insert(s.id);
                if prev != s.id {
                    return Err(format!(
                        "seed {seed}: two leaders in term {}: {prev} and {}",
                        s.term, s.id
                    ));
                }
            }
            let first = raw.storage().first_index().unwrap();
            let log = raw.entries(first, s.last_index.next()).unwrap();
            // State machine safety: an index committed anywhere holds the same entry everywhere.
            for e in log.iter().filter(|e| e.index <= s.commit) {
                let (known, _) = self
                    .committed
                    .entry(e.index)
                    .or_insert_with(|| (e.clone(), s.term));
                if known != e {
                    return Err(format!(
                        "seed {seed}: index {} committed twice differently",
                        e.index
                    ));
                }
            }
            // Leader append-only (§5.3): while a leader, its log only grows.
            if s.role == Role::Leader {
                let before = self.leader_logs.entry(s.term).or_default();
                if !log.starts_with(before) {
                    return Err(format!(
                        "seed {seed}: leader {id} of term {} rewrote its log",
                        s.term
                    ));
                }
                *before = log.clone();
            }
            logs.insert(id, (s.role, s.term, log));
        }
        for (id, (role, term, log)) in &logs {
            // Leader completeness: a leader of a later term holds every committed entry. (A
            // deposed leader that has not heard of the newer term yet may lack it.)
            if *role != Role::Leader {
                continue;
            }
            for (index, (e, commit_term)) in &self.committed {
                if term > commit_term && log.get(index.get() as usize - 1) != Some(e) {
                    return Err(format!("seed {seed}: leader {id} misses committed {index}"));
                }
            }
        }
        // Log matching: same index and term imply identical prefixes.
        for (a, (_, _, la)) in &logs {
            for (b, (_, _, lb)) in &logs {
                if a >= b {
                    continue;
                }
                let common = la
                    .iter()
                    .zip(lb.iter())
                    .rposition(|(x, y)| x.term == y.term);
                if let Some(pos) = common
                    && la[..=pos] != lb[..=pos]
                {
                    return Err(format!(
                        "seed {seed}: logs {a} and {b} diverge before {pos}"
                    ));
                }
            }
        }
        if !self.net.applied_prefixes_agree() {
            return Err(format!("seed {seed}: applied sequences diverge"));
        }
        Ok(())
    }
}
