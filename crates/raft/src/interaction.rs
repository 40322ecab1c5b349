//! A small in-memory cluster of [`RawNode`]s with synchronous delivery, for tests and the golden
//! interaction scenarios (`tests/scenarios/*.txt`).
//!
//! Each node persists every Ready at once into its [`MemStorage`] and applies committed entries
//! into a list. Messages queue in one FIFO and are delivered by [`Network::deliver_all`] or
//! [`Network::stabilize`], except across a partition, where they are dropped. Everything that
//! happens is written as a line to [`Network::output`], which is what golden files compare.
//!
//! This is test support, not a transport: it is public so that integration tests and the
//! simulator's own tests can use it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write;

use bytes::Bytes;

use crate::config::Config;
use crate::raw_node::{RawNode, Ready};
use crate::storage::MemStorage;
use crate::types::{
    ConfState, Entry, EntryPayload, GroupId, LogIndex, Message, MessageBody, NodeId,
};

/// The most rounds `stabilize` runs before concluding that the cluster does not settle.
pub const STABILIZE_ROUNDS_MAX: usize = 10_000;

/// One member of the test cluster.
pub struct Node {
    pub raw: RawNode<MemStorage>,
    pub config: Config,
    /// Applied normal entries (data), in order, with their index.
    pub applied: Vec<(LogIndex, Bytes)>,
    pub applied_index: LogIndex,
    /// Read states received, as (index, context).
    pub reads: Vec<(LogIndex, Bytes)>,
    /// When false, the node keeps its Readies unpersisted (to test asynchronous persistence).
    pub auto_persist: bool,
    pub crashed: bool,
}

/// A cluster of nodes of one group.
pub struct Network {
    pub nodes: BTreeMap<NodeId, Node>,
    pub queue: VecDeque<Message>,
    /// Links that drop messages, as (from, to).
    pub cut: BTreeSet<(NodeId, NodeId)>,
    pub output: Vec<String>,
    /// Whether delivered messages are written to the output.
    pub trace_messages: bool,
}

/// A config for test node `id` with small, fast timings.
pub fn test_config(id: u64) -> Config {
    let mut config = Config::new(NodeId(id), GroupId(1));
    config.election_ticks = 10;
    config.heartbeat_ticks = 1;
    config.seed = id;
    config
}

impl Network {
    /// A cluster of `ids`, all voters, with configs made by `configure`.
    pub fn new(ids: &[u64], configure: impl Fn(&mut Config)) -> Network {
        let voters: BTreeSet<NodeId> = ids.iter().map(|i| NodeId(*i)).collect();
        let mut net = Network::empty();
        for id in ids {
            let mut config = test_config(*id);
            configure(&mut config);
            net.add_node(
                config,
                MemStorage::new_with_conf_state(ConfState::with_voters(voters.clone())),
            );
        }
        net
    }

    pub fn empty() -> Network {
        Network {
            nodes: BTreeMap::new(),
            queue: VecDeque::new(),
            cut: BTreeSet::new(),
            output: Vec::new(),
            trace_messages: true,
        }
    }

    /// Adds a node with the given storage.
    pub fn add_node(&mut self, config: Config, storage: MemStorage) {
        let raw = RawNode::new(&config, storage).expect("test node config is valid");
        let node = Node {
            raw,
            config: config.clone(),
            applied: Vec::new(),
            applied_index: LogIndex(0),
            reads: Vec::new(),
            auto_persist: true,
            crashed: false,
        };
        self.nodes.insert(config.id, node);
    }

    pub fn node(&mut self, id: u64) -> &mut Node {
        self.nodes.get_mut(&NodeId(id)).expect("no such test node")
    }

    pub fn raw(&mut self, id: u64) -> &mut RawNode<MemStorage> {
        &mut self.node(id).raw
    }

    fn log(&mut self, line: String) {
        self.output.push(line);
    }

    /// Handles every pending Ready of node `id`. Returns whether there was one.
    pub fn process_ready(&mut self, id: NodeId) -> bool {
        let Some(node) = self.nodes.get_mut(&id) else {
            return false;
        };
        if node.crashed || !node.auto_persist || !node.raw.has_ready() {
            return false;
        }
        let ready = node.raw.ready();
        let mut lines = Vec::new();
        Self::handle_ready(node, ready, &mut lines, &mut self.queue);
        self.output.extend(lines);
        true
    }

    fn handle_ready(
        node: &mut Node,
        ready: Ready,
        lines: &mut Vec<String>,
        queue: &mut VecDeque<Message>,
    ) {
        let id = node.config.id;
        if let Some(ss) = ready.soft_state {
            let leader = ss.leader.map_or("none".to_string(), |l| l.to_string());
            let term = node.raw.status().term;
            lines.push(format!("n{id}: {:?} term={term} leader={leader}", ss.role));
        }
        queue.extend(ready.messages);
        let storage = node.raw.storage_mut();
        if let Some(snap) = &ready.snapshot {
            storage
                .apply_snapshot(snap.clone())
                .expect("snapshot applies");
            lines.push(format!(
                "n{id}: installed snapshot index={} term={}",
                snap.meta.index, snap.meta.term
            ));
        }
        storage.append(&ready.entries).expect("entries append");
        if let Some(hs) = ready.hard_state {
            storage.set_hard_state(hs);
        }
        node.raw.on_persisted(ready.number);
        queue.extend(ready.persisted_messages);
        if let Some(snap) = &ready.snapshot {
            node.applied_index = node.applied_index.max(snap.meta.index);
        }
        for entry in &ready.committed_entries {
            Self::apply_entry(node, entry, lines);
        }
        if !ready.committed_entries.is_empty() {
            node.raw.on_applied(node.applied_index);
        }
        for rs in ready.read_states {
            lines.push(format!(
                "n{id}: read_state index={} ctx={}",
                rs.index,
                show(&rs.context)
            ));
            node.reads.push((rs.index, rs.context));
        }
    }

    fn apply_entry(node: &mut Node, entry: &Entry, lines: &mut Vec<String>) {
        let id = node.config.id;
        assert_eq!(
            entry.index,
            node.applied_index.next(),
            "n{id} applies in order"
        );
        node.applied_index = entry.index;
        match &entry.payload {
            EntryPayload::Normal(data) if data.is_empty() => {}
            EntryPayload::Normal(data) => {
                lines.push(format!(
                    "n{id}: apply {} term={} {}",
                    entry.index,
                    entry.term,
                    show(data)
                ));
                node.applied.push((entry.index, data.clone()));
            }
            EntryPayload::ConfChange(cc) => match node.raw.apply_conf_change(cc) {
                Ok(cs) => {
                    node.raw.storage_mut().set_conf_state(cs.clone());
                    lines.push(format!(
                        "n{id}: apply {} conf {}",
                        entry.index,
                        show_conf(&cs)
                    ));
                }
                Err(e) => lines.push(format!("n{id}: apply {} conf refused: {e}", entry.index)),
            },
        }
    }

    /// Delivers every queued message once (messages sent in reaction queue for later).
    /// Returns how many were delivered.
    pub fn deliver_all(&mut self) -> usize {
        let batch: Vec<Message> = self.queue.drain(..).collect();
        let mut delivered = 0;
        for m in batch {
            if self.deliver(m) {
                delivered += 1;
            }
        }
        delivered
    }

    /// Delivers one message unless its link is cut or its target is down.
    pub fn deliver(&mut self, m: Message) -> bool {
        let dropped =
            self.cut.contains(&(m.from, m.to)) || self.nodes.get(&m.to).is_none_or(|n| n.crashed);
        if self.trace_messages {
            let mark = if dropped { " DROPPED" } else { "" };
            self.log(format!("{}{mark}", show_message(&m)));
        }
        if dropped {
            return false;
        }
        let to = m.to;
        if let Err(e) = self.node(to.get()).raw.step(m) {
            self.log(format!("n{to}: step error: {e}"));
        }
        true
    }

    /// Processes Readies and delivers messages until nothing is left to do.
    pub fn stabilize(&mut self) {
        for _ in 0..STABILIZE_ROUNDS_MAX {
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            let mut busy = false;
            for id in ids {
                while self.process_ready(id) {
                    busy = true;
                }
            }
            if self.deliver_all() > 0 || !self.queue.is_empty() {
                busy = true;
            }
            if !busy {
                return;
            }
        }
        panic!("the test cluster did not stabilize in {STABILIZE_ROUNDS_MAX} rounds");
    }

    /// Ticks one node `times` times.
    pub fn tick(&mut self, id: u64, times: usize) {
        for _ in 0..times {
            self.raw(id).tick();
        }
    }

    /// Ticks every live node once, then stabilizes; `times` times.
    pub fn tick_all(&mut self, times: usize) {
        for _ in 0..times {
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                if !self.nodes[&id].crashed {
                    self.raw(id.get()).tick();
                }
            }
            self.stabilize();
        }
    }

    /// Cuts every link between the groups.
    pub fn partition(&mut self, groups: &[Vec<u64>]) {
        self.cut.clear();
        for (i, a) in groups.iter().enumerate() {
            for (j, b) in groups.iter().enumerate() {
                if i == j {
                    continue;
                }
                for x in a {
                    for y in b {
                        self.cut.insert((NodeId(*x), NodeId(*y)));
                    }
                }
            }
        }
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Crashes a node: it stops, and its queued messages are dropped.
    pub fn crash(&mut self, id: u64) {
        self.node(id).crashed = true;
        self.queue
            .retain(|m| m.to != NodeId(id) && m.from != NodeId(id));
    }

    /// Restarts a crashed node from its storage (everything it persisted), resuming from its
    /// applied index (the test state machine is durable).
    pub fn restart(&mut self, id: u64) {
        let node = self.node(id);
        let storage = node.raw.storage().clone();
        let mut config = node.config.clone();
        config.applied = node.applied_index;
        node.raw = RawNode::new(&config, storage).expect("restart from persisted storage");
        node.crashed = false;
    }

    /// The one-line status of every node.
    pub fn status_lines(&self) -> Vec<String> {
        self.nodes
            .values()
            .map(|n| {
                let s = n.raw.status();
                let mut line = format!(
                    "n{}: {:?} term={} leader={} commit={} applied={} last={} {}",
                    s.id,
                    s.role,
                    s.term,
                    s.leader.map_or("none".into(), |l| l.to_string()),
                    s.commit,
                    s.applied,
                    s.last_index,
                    show_conf(&s.conf_state)
                );
                for (id, pr) in &s.progress {
                    let _ = write!(
                        line,
                        " [{id}: {:?} match={} next={}]",
                        pr.state, pr.matched, pr.next
                    );
                }
                if n.crashed {
                    line.push_str(" CRASHED");
                }
                line
            })
            .collect()
    }

    /// Whether every live node applied the same data sequence as the longest one (a prefix
    /// check, the "state machine safety" property).
    pub fn applied_prefixes_agree(&self) -> bool {
        let longest = self
            .nodes
            .values()
            .map(|n| &n.applied)
            .max_by_key(|a| a.len())
            .cloned()
            .unwrap_or_default();
        self.nodes.values().all(|n| longest.starts_with(&n.applied))
    }
}

fn show(data: &[u8]) -> String {
    if data.is_empty() {
        return "\"\"".into();
    }
    String::from_utf8(data.to_vec()).unwrap_or_else(|_| format!("{data:?}"))
}

fn show_ids(ids: &BTreeSet<NodeId>) -> String {
    let list: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    format!("({})", list.join(" "))
}

/// A configuration as one word list: voters, then outgoing voters and learners when present.
pub fn show_conf(cs: &ConfState) -> String {
    let mut s = format!("voters={}", show_ids(&cs.voters));
    if !cs.voters_outgoing.is_empty() {
        let _ = write!(s, "&&{}", show_ids(&cs.voters_outgoing));
    }
    if !cs.learners.is_empty() {
        let _ = write!(s, " learners={}", show_ids(&cs.learners));
    }
    if !cs.learners_next.is_empty() {
        let _ = write!(s, " learners_next={}", show_ids(&cs.learners_next));
    }
    if cs.auto_leave {
        s.push_str(" autoleave");
    }
    s
}

/// A message as one line.
pub fn show_message(m: &Message) -> String {
    let head = format!("{}->{} {} term={}", m.from, m.to, m.body.kind(), m.term);
    let tail = match &m.body {
        MessageBody::PreVote {
            last_index,
            last_term,
        } => format!(" last=({last_index},{last_term})"),
        MessageBody::Vote {
            last_index,
            last_term,
            leader_transfer,
        } => {
            let t = if *leader_transfer { " transfer" } else { "" };
            format!(" last=({last_index},{last_term}){t}")
        }
        MessageBody::PreVoteResponse { reject } | MessageBody::VoteResponse { reject } => {
            if *reject {
                " rejected".into()
            } else {
                " granted".into()
            }
        }
        MessageBody::Append {
            prev_index,
            prev_term,
            entries,
            commit,
        } => {
            let ents = match (entries.first(), entries.last()) {
                (Some(a), Some(b)) => format!(" ents=[{}..{}]", a.index, b.index),
                _ => String::new(),
            };
            format!(" prev=({prev_index},{prev_term}){ents} commit={commit}")
        }
        MessageBody::AppendResponse {
            index,
            reject,
            reject_hint,
            hint_term,
        } => {
            if *reject {
                format!(" index={index} rejected hint=({reject_hint},{hint_term})")
            } else {
                format!(" index={index}")
            }
        }
        MessageBody::Heartbeat { commit, .. } => format!(" commit={commit}"),
        MessageBody::HeartbeatResponse { .. } => String::new(),
        MessageBody::Snapshot { snapshot } => {
            format!(" index={} term={}", snapshot.meta.index, snapshot.meta.term)
        }
        MessageBody::TimeoutNow => String::new(),
        MessageBody::ReadIndex { context } => format!(" ctx={}", show(context)),
        MessageBody::ReadIndexResponse {
            index,
            context,
            reject,
        } => {
            let r = if *reject { " rejected" } else { "" };
            format!(" index={index} ctx={}{r}", show(context))
        }
    };
    head + &tail
}
