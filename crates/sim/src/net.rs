//! The network model: which messages arrive, how many times, and when.
//!
//! Each message independently may be dropped, duplicated, and delayed by a random latency (so
//! messages between the same pair are reordered whenever a later one draws a shorter latency); a
//! few draw an extra long delay. On top of that a *partition* blocks directed links. Partitions are
//! checked when a message is sent: a message already on the wire still arrives, as it would from a
//! switch buffer.

use std::collections::BTreeSet;
use std::fmt;

use crate::queue::Time;
use crate::rng::Rng;

/// Per-message fault rates and latencies.
#[derive(Clone, Debug, PartialEq)]
pub struct NetParams {
    pub drop_p: f64,
    pub duplicate_p: f64,
    pub delay_min_us: Time,
    pub delay_max_us: Time,
    /// Probability of an extra delay on top of the latency (stragglers, reordering).
    pub slow_p: f64,
    pub slow_max_us: Time,
}

impl NetParams {
    /// A healthy network: no loss, no duplicates, short latencies.
    pub fn healthy(delay_min_us: Time, delay_max_us: Time) -> NetParams {
        NetParams {
            drop_p: 0.0,
            duplicate_p: 0.0,
            delay_min_us,
            delay_max_us,
            slow_p: 0.0,
            slow_max_us: 0,
        }
    }

    /// The longest a delivered message can take.
    pub fn delay_bound_us(&self) -> Time {
        self.delay_max_us + self.slow_max_us
    }
}

/// The shapes of partition the nemesis creates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Partition {
    /// Everyone can talk to everyone.
    None,
    /// The two sides cannot talk to each other in either direction.
    Split { left: Vec<u64>, right: Vec<u64> },
    /// `from` cannot send to `to`, but hears from it.
    OneWay { from: Vec<u64>, to: Vec<u64> },
    /// Two sides that cannot talk to each other, both connected to `bridge`.
    Bridge {
        left: Vec<u64>,
        right: Vec<u64>,
        bridge: u64,
    },
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Partition::None => write!(f, "healed"),
            Partition::Split { left, right } => write!(f, "split {left:?} | {right:?}"),
            Partition::OneWay { from, to } => write!(f, "one-way {from:?} -/-> {to:?}"),
            Partition::Bridge {
                left,
                right,
                bridge,
            } => {
                write!(f, "bridge {left:?} <-{bridge}-> {right:?}")
            }
        }
    }
}

impl Partition {
    /// The directed links this partition blocks.
    pub fn blocked_links(&self) -> BTreeSet<(u64, u64)> {
        let mut blocked = BTreeSet::new();
        let mut cut = |a: &[u64], b: &[u64], both: bool| {
            for &x in a {
                for &y in b {
                    blocked.insert((x, y));
                    if both {
                        blocked.insert((y, x));
                    }
                }
            }
        };
        match self {
            Partition::None => {}
            Partition::Split { left, right } | Partition::Bridge { left, right, .. } => {
                cut(left, right, true)
            }
            Partition::OneWay { from, to } => cut(from, to, false),
        }
        blocked
    }

    /// A random partition of `nodes` (at least two of them).
    pub fn random(rng: &mut Rng, nodes: &[u64]) -> Partition {
        assert!(nodes.len() >= 2, "a partition needs two nodes");
        let mut shuffled = nodes.to_vec();
        rng.shuffle(&mut shuffled);
        let n = shuffled.len();
        match rng.below(5) {
            // One node isolated from everyone.
            0 => Partition::Split {
                left: shuffled[..1].to_vec(),
                right: shuffled[1..].to_vec(),
            },
            // A minority and a majority.
            1 => {
                let minority = (n - 1) / 2;
                let minority = minority.max(1);
                Partition::Split {
                    left: shuffled[..minority].to_vec(),
                    right: shuffled[minority..].to_vec(),
                }
            }
            // Any split, possibly even.
            2 => {
                let at = rng.range_inclusive(1, n as u64 - 1) as usize;
                Partition::Split {
                    left: shuffled[..at].to_vec(),
                    right: shuffled[at..].to_vec(),
                }
            }
            // One-way: some nodes cannot send to the rest.
            3 => {
                let at = rng.range_inclusive(1, n as u64 - 1) as usize;
                Partition::OneWay {
                    from: shuffled[..at].to_vec(),
                    to: shuffled[at..].to_vec(),
                }
            }
            // A bridge between two halves (needs three nodes).
            _ if n >= 3 => {
                let bridge = shuffled[0];
                let rest = &shuffled[1..];
                let at = rng.range_inclusive(1, rest.len() as u64 - 1) as usize;
                Partition::Bridge {
                    left: rest[..at].to_vec(),
                    right: rest[at..].to_vec(),
                    bridge,
                }
            }
            _ => Partition::Split {
                left: shuffled[..1].to_vec(),
                right: shuffled[1..].to_vec(),
            },
        }
    }
}

/// The network between the nodes.
#[derive(Clone, Debug)]
pub struct Network {
    pub params: NetParams,
    partition: Partition,
    blocked: BTreeSet<(u64, u64)>,
}

/// What happens to one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Blocked by a partition.
    Blocked,
    /// Lost.
    Dropped,
    /// Delivered once per delay in the list (two entries: duplicated).
    Delivered(Vec<Time>),
}

impl Network {
    pub fn new(params: NetParams) -> Network {
        Network {
            params,
            partition: Partition::None,
            blocked: BTreeSet::new(),
        }
    }

    /// Installs a partition (replacing the previous one).
    pub fn set_partition(&mut self, partition: Partition) {
        self.blocked = partition.blocked_links();
        self.partition = partition;
    }

    /// The partition in force.
    pub fn partition(&self) -> &Partition {
        &self.partition
    }

    /// Whether `from` can currently send to `to`.
    pub fn connected(&self, from: u64, to: u64) -> bool {
        !self.blocked.contains(&(from, to))
    }

    fn latency(&self, rng: &mut Rng) -> Time {
        let p = &self.params;
        let mut delay = rng.range_inclusive(p.delay_min_us, p.delay_max_us);
        if p.slow_max_us > 0 && rng.chance(p.slow_p) {
            delay += rng.range_inclusive(0, p.slow_max_us);
        }
        delay
    }

    /// Decides what happens to a message from `from` to `to`.
    pub fn route(&self, rng: &mut Rng, from: u64, to: u64) -> Fate {
        if !self.connected(from, to) {
            return Fate::Blocked;
        }
        if rng.chance(self.params.drop_p) {
            return Fate::Dropped;
        }
        let mut delays = vec![self.latency(rng)];
        if rng.chance(self.params.duplicate_p) {
            delays.push(self.latency(rng));
        }
        Fate::Delivered(delays)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_block_exactly_their_links() {
        // Goal: each partition shape blocks the links it should and no other. Method: check
        // hand-built partitions link by link.
        let split = Partition::Split {
            left: vec![1],
            right: vec![2, 3],
        };
        let b = split.blocked_links();
        assert!(b.contains(&(1, 2)) && b.contains(&(2, 1)) && b.contains(&(3, 1)));
        assert!(!b.contains(&(2, 3)));
        let one_way = Partition::OneWay {
            from: vec![1],
            to: vec![2],
        };
        let b = one_way.blocked_links();
        assert!(b.contains(&(1, 2)));
        assert!(!b.contains(&(2, 1)));
        let bridge = Partition::Bridge {
            left: vec![1],
            right: vec![3],
            bridge: 2,
        };
        let b = bridge.blocked_links();
        assert!(b.contains(&(1, 3)) && b.contains(&(3, 1)));
        assert!(!b.contains(&(1, 2)) && !b.contains(&(2, 3)));
        assert!(Partition::None.blocked_links().is_empty());
    }

    #[test]
    fn random_partitions_cover_every_node_once() {
        // Goal: a random partition is a partition of the node set. Method: many draws.
        let nodes = [1, 2, 3, 4, 5];
        let mut rng = Rng::new(1);
        for _ in 0..200 {
            let mut all: Vec<u64> = match Partition::random(&mut rng, &nodes) {
                Partition::Split { left, right } => [left, right].concat(),
                Partition::OneWay { from, to } => [from, to].concat(),
                Partition::Bridge {
                    left,
                    right,
                    bridge,
                } => [left, right, vec![bridge]].concat(),
                Partition::None => panic!("random never heals"),
            };
            all.sort_unstable();
            assert_eq!(all, nodes);
        }
    }

    #[test]
    fn route_respects_rates_and_partition() {
        // Goal: drops, duplicates and delays follow the parameters. Method: route many messages.
        let params = NetParams {
            drop_p: 0.2,
            duplicate_p: 0.1,
            delay_min_us: 100,
            delay_max_us: 200,
            slow_p: 0.0,
            slow_max_us: 0,
        };
        let mut net = Network::new(params);
        let mut rng = Rng::new(9);
        let (mut dropped, mut dup) = (0, 0);
        for _ in 0..10_000 {
            match net.route(&mut rng, 1, 2) {
                Fate::Dropped => dropped += 1,
                Fate::Delivered(d) => {
                    assert!(d.iter().all(|&t| (100..=200).contains(&t)));
                    if d.len() == 2 {
                        dup += 1;
                    }
                }
                Fate::Blocked => panic!("no partition yet"),
            }
        }
        assert!((1700..2300).contains(&dropped), "dropped {dropped}");
        assert!((500..1100).contains(&dup), "duplicated {dup}");
        net.set_partition(Partition::OneWay {
            from: vec![1],
            to: vec![2],
        });
        assert_eq!(net.route(&mut rng, 1, 2), Fate::Blocked);
        assert_ne!(net.route(&mut rng, 2, 1), Fate::Blocked);
    }
}
