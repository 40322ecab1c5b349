//! Load-balancing policies: which endpoint (or service instance) takes the next request.
//!
//! A policy sees only [`Candidate`]s, the usable choices of the moment (healthy, circuit not
//! open), and returns the index of one. Policies are pure apart from their own small counters, so
//! they are tested here without any network.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use rand::Rng;

/// One choice offered to a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// What the caller gets back: its own index of this choice.
    pub index: usize,
    /// A stable identity (a hash of the endpoint URL or instance ID), used by consistent hashing
    /// and weighted round robin to recognise a choice across calls.
    pub id: u64,
    /// Relative capacity for weighted round robin; at least 1.
    pub weight: u32,
    /// Requests sent and not yet answered.
    pub outstanding: usize,
}

/// A load-balancing policy.
pub trait Policy: Send + Sync + Debug {
    /// Picks one candidate and returns its `index`, or `None` when there are none. `key` is the
    /// request's key when it has one (consistent hashing routes by it).
    fn pick(&self, candidates: &[Candidate], key: Option<&[u8]>) -> Option<usize>;
}

/// Each candidate in turn.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl Policy for RoundRobin {
    fn pick(&self, candidates: &[Candidate], _key: Option<&[u8]>) -> Option<usize> {
        if candidates.is_empty() {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        Some(candidates[turn % candidates.len()].index)
    }
}

/// Smooth weighted round robin: over `sum(weights)` picks each candidate is chosen `weight`
/// times, interleaved rather than in bursts. Each pick adds every candidate's weight to its
/// running score, takes the highest score and subtracts the total from it.
#[derive(Debug, Default)]
pub struct WeightedRoundRobin {
    scores: Mutex<HashMap<u64, i64>>,
}

impl Policy for WeightedRoundRobin {
    fn pick(&self, candidates: &[Candidate], _key: Option<&[u8]>) -> Option<usize> {
        let mut scores = self.scores.lock().unwrap_or_else(|p| p.into_inner());
        scores.retain(|id, _| candidates.iter().any(|c| c.id == *id));
        let total: i64 = candidates.iter().map(|c| i64::from(c.weight.max(1))).sum();
        let mut best: Option<(i64, &Candidate)> = None;
        for candidate in candidates {
            let score = scores.entry(candidate.id).or_insert(0);
            *score += i64::from(candidate.weight.max(1));
            if best.is_none_or(|(s, _)| *score > s) {
                best = Some((*score, candidate));
            }
        }
        let (_, chosen) = best?;
        *scores.entry(chosen.id).or_insert(0) -= total;
        Some(chosen.index)
    }
}

/// The candidate with the fewest outstanding requests; ties go round robin.
#[derive(Debug, Default)]
pub struct LeastOutstanding {
    next: AtomicUsize,
}

impl Policy for LeastOutstanding {
    fn pick(&self, candidates: &[Candidate], _key: Option<&[u8]>) -> Option<usize> {
        let least = candidates.iter().map(|c| c.outstanding).min()?;
        let tied: Vec<&Candidate> = candidates
            .iter()
            .filter(|c| c.outstanding == least)
            .collect();
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        Some(tied[turn % tied.len()].index)
    }
}

/// A uniformly random candidate.
#[derive(Debug, Default)]
pub struct Random;

impl Policy for Random {
    fn pick(&self, candidates: &[Candidate], _key: Option<&[u8]>) -> Option<usize> {
        if candidates.is_empty() {
            return None;
        }
        Some(candidates[rand::rng().random_range(0..candidates.len())].index)
    }
}

/// Power of two choices: two distinct random candidates, the less loaded one wins. Nearly as
/// good as least-outstanding without its herd behaviour when load figures are stale.
#[derive(Debug, Default)]
pub struct PowerOfTwo;

impl Policy for PowerOfTwo {
    fn pick(&self, candidates: &[Candidate], _key: Option<&[u8]>) -> Option<usize> {
        match candidates.len() {
            0 => None,
            1 => Some(candidates[0].index),
            n => {
                let mut rng = rand::rng();
                let a = rng.random_range(0..n);
                let b = (a + rng.random_range(1..n)) % n;
                let (a, b) = (&candidates[a], &candidates[b]);
                Some(if b.outstanding < a.outstanding {
                    b.index
                } else {
                    a.index
                })
            }
        }
    }
}

/// Consistent hashing: requests with the same key go to the same candidate while it is
/// available; when one leaves, only its keys move. Requests without a key go round robin.
#[derive(Debug)]
pub struct ConsistentHash {
    vnodes: u32,
    ring: Mutex<Option<(Vec<u64>, HashRing)>>,
    fallback: RoundRobin,
}

impl ConsistentHash {
    /// A policy whose ring gives each candidate `vnodes` points (at least 1).
    pub fn new(vnodes: u32) -> ConsistentHash {
        ConsistentHash {
            vnodes: vnodes.max(1),
            ring: Mutex::new(None),
            fallback: RoundRobin::default(),
        }
    }
}

impl Default for ConsistentHash {
    fn default() -> Self {
        ConsistentHash::new(160)
    }
}

impl Policy for ConsistentHash {
    fn pick(&self, candidates: &[Candidate], key: Option<&[u8]>) -> Option<usize> {
        let Some(key) = key else {
            return self.fallback.pick(candidates, None);
        };
        let mut ids: Vec<u64> = candidates.iter().map(|c| c.id).collect();
        ids.sort_unstable();
        let mut cached = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if cached
            .as_ref()
            .is_none_or(|(cached_ids, _)| *cached_ids != ids)
        {
            let mut ring = HashRing::new(self.vnodes);
            for id in &ids {
                ring.add(*id);
            }
            *cached = Some((ids, ring));
        }
        let (_, ring) = cached.as_ref()?;
        let owner = ring.get(key)?;
        candidates.iter().find(|c| c.id == owner).map(|c| c.index)
    }
}

/// A hash ring with virtual nodes: each node owns `vnodes` points on a 64-bit circle, and a key
/// belongs to the first point at or after its hash.
#[derive(Debug, Clone)]
pub struct HashRing {
    vnodes: u32,
    points: BTreeMap<u64, u64>,
}

impl HashRing {
    /// An empty ring.
    pub fn new(vnodes: u32) -> HashRing {
        HashRing {
            vnodes: vnodes.max(1),
            points: BTreeMap::new(),
        }
    }

    /// Adds a node's points.
    pub fn add(&mut self, node: u64) {
        for replica in 0..self.vnodes {
            self.points.insert(point_of(node, replica), node);
        }
    }

    /// Removes a node's points.
    pub fn remove(&mut self, node: u64) {
        for replica in 0..self.vnodes {
            if self.points.get(&point_of(node, replica)) == Some(&node) {
                self.points.remove(&point_of(node, replica));
            }
        }
    }

    /// The node owning `key`, if the ring has any.
    pub fn get(&self, key: &[u8]) -> Option<u64> {
        let hash = stable_hash(key);
        self.points
            .range(hash..)
            .next()
            .or_else(|| self.points.iter().next())
            .map(|(_, node)| *node)
    }
}

fn point_of(node: u64, replica: u32) -> u64 {
    let mut bytes = [0u8; 12];
    bytes[..8].copy_from_slice(&node.to_be_bytes());
    bytes[8..].copy_from_slice(&replica.to_be_bytes());
    stable_hash(&bytes)
}

/// A hash that is the same in every process and version (FNV-1a, then a 64-bit finalizer to
/// spread FNV's weak low bits), so that two clients route a key alike.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

/// The policies by name, for configuration and the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PolicyKind {
    /// [`RoundRobin`].
    #[default]
    RoundRobin,
    /// [`WeightedRoundRobin`].
    WeightedRoundRobin,
    /// [`LeastOutstanding`].
    LeastOutstanding,
    /// [`Random`].
    Random,
    /// [`PowerOfTwo`].
    PowerOfTwo,
    /// [`ConsistentHash`] with 160 virtual nodes.
    ConsistentHash,
}

impl PolicyKind {
    /// A fresh policy of this kind.
    pub fn build(self) -> Box<dyn Policy> {
        match self {
            PolicyKind::RoundRobin => Box::new(RoundRobin::default()),
            PolicyKind::WeightedRoundRobin => Box::new(WeightedRoundRobin::default()),
            PolicyKind::LeastOutstanding => Box::new(LeastOutstanding::default()),
            PolicyKind::Random => Box::new(Random),
            PolicyKind::PowerOfTwo => Box::new(PowerOfTwo),
            PolicyKind::ConsistentHash => Box::new(ConsistentHash::default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn candidates(n: usize) -> Vec<Candidate> {
        (0..n)
            .map(|i| Candidate {
                index: i,
                id: stable_hash(format!("endpoint-{i}").as_bytes()),
                weight: 1,
                outstanding: 0,
            })
            .collect()
    }

    fn counts(policy: &dyn Policy, cands: &[Candidate], picks: usize) -> Vec<usize> {
        let mut counts = vec![0; cands.len()];
        for i in 0..picks {
            let key = format!("key-{i}");
            counts[policy.pick(cands, Some(key.as_bytes())).expect("a pick")] += 1;
        }
        counts
    }

    #[test]
    fn every_policy_returns_none_without_candidates() {
        // Goal: no candidate, no pick, for every policy. Method: call each with an empty set.
        for kind in [
            PolicyKind::RoundRobin,
            PolicyKind::WeightedRoundRobin,
            PolicyKind::LeastOutstanding,
            PolicyKind::Random,
            PolicyKind::PowerOfTwo,
            PolicyKind::ConsistentHash,
        ] {
            assert_eq!(kind.build().pick(&[], Some(b"k")), None, "{kind:?}");
        }
    }

    #[test]
    fn round_robin_is_exactly_even() {
        // Goal: round robin spreads picks evenly. Method: 300 picks over 3 candidates.
        assert_eq!(
            counts(&RoundRobin::default(), &candidates(3), 300),
            vec![100, 100, 100]
        );
    }

    #[test]
    fn weighted_round_robin_follows_weights_and_interleaves() {
        // Goal: picks are proportional to weights, and the heavy candidate is not picked in one
        // burst. Method: weights 5,1,1 over 70 picks; the first 7 picks hold all three.
        let mut cands = candidates(3);
        cands[0].weight = 5;
        let policy = WeightedRoundRobin::default();
        let first: Vec<usize> = (0..7).map(|_| policy.pick(&cands, None).unwrap()).collect();
        assert_eq!(first.iter().filter(|i| **i == 0).count(), 5);
        assert!(first.contains(&1) && first.contains(&2));
        assert_ne!(&first[..5], &[0, 0, 0, 0, 0]);
        assert_eq!(counts(&policy, &cands, 70), vec![50, 10, 10]);
    }

    #[test]
    fn least_outstanding_prefers_the_idle_candidate() {
        // Goal: the candidate with the fewest outstanding requests wins; ties rotate. Method:
        // loads 5,0,5 then 1,1,7.
        let mut cands = candidates(3);
        cands[0].outstanding = 5;
        cands[2].outstanding = 5;
        assert_eq!(
            counts(&LeastOutstanding::default(), &cands, 10),
            vec![0, 10, 0]
        );
        cands[0].outstanding = 1;
        cands[1].outstanding = 1;
        cands[2].outstanding = 7;
        assert_eq!(
            counts(&LeastOutstanding::default(), &cands, 10),
            vec![5, 5, 0]
        );
    }

    #[test]
    fn random_covers_all_candidates_roughly_evenly() {
        // Goal: random picks each candidate about 1/n of the time. Method: 30,000 picks over 3;
        // each count within 20% of 10,000 (failure odds are astronomically small).
        for count in counts(&Random, &candidates(3), 30_000) {
            assert!((8_000..12_000).contains(&count), "{count}");
        }
    }

    #[test]
    fn power_of_two_never_picks_the_most_loaded() {
        // Goal: of two sampled candidates the less loaded wins, so the single most loaded of
        // three is never chosen. Method: loads 0,1,9 over 1,000 picks.
        let mut cands = candidates(3);
        cands[1].outstanding = 1;
        cands[2].outstanding = 9;
        let counts = counts(&PowerOfTwo, &cands, 1_000);
        assert_eq!(counts[2], 0);
        assert!(counts[0] > counts[1], "{counts:?}");
    }

    #[test]
    fn consistent_hash_is_sticky_and_spread() {
        // Goal: the same key always goes to the same candidate, and keys spread over all
        // candidates. Method: 10,000 keys over 4 candidates, picked twice.
        let cands = candidates(4);
        let policy = ConsistentHash::default();
        let picks: Vec<usize> = (0..10_000)
            .map(|i| {
                policy
                    .pick(&cands, Some(format!("key-{i}").as_bytes()))
                    .unwrap()
            })
            .collect();
        let again: Vec<usize> = (0..10_000)
            .map(|i| {
                policy
                    .pick(&cands, Some(format!("key-{i}").as_bytes()))
                    .unwrap()
            })
            .collect();
        assert_eq!(picks, again);
        for node in 0..4 {
            let share = picks.iter().filter(|p| **p == node).count();
            assert!((1_500..3_500).contains(&share), "node {node}: {share}");
        }
    }

    proptest! {
        #[test]
        fn removing_a_node_only_moves_its_keys(nodes in 2usize..8, gone in 0usize..8, keys in proptest::collection::vec(any::<Vec<u8>>(), 1..200)) {
            // Goal: minimal remapping. When one node leaves the ring, keys it did not own keep
            // their owner, and its own keys move elsewhere. Method: random node counts and keys.
            let gone = gone % nodes;
            let mut ring = HashRing::new(50);
            for n in 0..nodes as u64 { ring.add(n); }
            let before: Vec<u64> = keys.iter().map(|k| ring.get(k).unwrap()).collect();
            ring.remove(gone as u64);
            for (key, owner) in keys.iter().zip(before) {
                let now = ring.get(key).unwrap();
                if owner == gone as u64 {
                    prop_assert_ne!(now, owner);
                } else {
                    prop_assert_eq!(now, owner);
                }
            }
        }

        #[test]
        fn weighted_round_robin_is_exact_over_a_cycle(weights in proptest::collection::vec(1u32..6, 1..6)) {
            // Goal: over one cycle of sum(weights) picks, each candidate is chosen exactly its
            // weight. Method: random weights.
            let mut cands = candidates(weights.len());
            for (c, w) in cands.iter_mut().zip(&weights) { c.weight = *w; }
            let total: u32 = weights.iter().sum();
            let got = counts(&WeightedRoundRobin::default(), &cands, total as usize);
            let want: Vec<usize> = weights.iter().map(|w| *w as usize).collect();
            prop_assert_eq!(got, want);
        }
    }
}
