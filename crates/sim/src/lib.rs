//! `chorus-sim`: a deterministic simulator for the Chorus Raft core.
//!
//! One seed determines a whole run: the cluster's shape and parameters, every fault (message loss,
//! duplication, delay and reordering; partitions; crashes that keep only what was fsynced; clock
//! drift), and every client operation. The run records a client history and checks, while it runs
//! and at its end, the invariants of Raft (election safety, log matching, leader completeness,
//! state machine safety) and the linearizability of the history. A second phase heals the cluster
//! and requires progress within a bound.
//!
//! What lives here: the generator ([`rng`]), simulated time ([`queue`]), the network model
//! ([`net`]), the replicated key-value state machine ([`kv`]), histories ([`history`]) and the
//! linearizability checker ([`linearizability`]). What does not: the Raft core itself
//! (`chorus-raft`), which the simulator drives only through its public API.

pub mod history;
pub mod invariants;
pub mod kv;
pub mod linearizability;
pub mod net;
pub mod params;
pub mod queue;
pub mod rng;
pub mod trace;
