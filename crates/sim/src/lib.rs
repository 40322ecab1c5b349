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
//! ([`net`]), the replicated key-value state machine ([`kv`]), the per-seed parameters
//! ([`params`]), the cluster harness with its disks, clients and nemesis ([`cluster`]),
//! histories ([`history`]), the Raft invariant checkers ([`invariants`]) and the
//! linearizability checker ([`linearizability`]). What does not: the Raft core itself
//! (`chorus-raft`), which the simulator drives only through its public API.
//!
//! ```
//! use chorus_sim::{Overrides, Params, run_seed};
//!
//! let params = Params::from_seed(7, &Overrides { nodes: Some(3), ..Overrides::default() });
//! let first = run_seed(params.clone(), false);
//! assert!(first.violations.is_empty(), "{:?}", first.violations);
//! // A run is a pure function of its seed.
//! assert_eq!(first.trace_hash, run_seed(params, false).trace_hash);
//! ```

pub mod cluster;
pub mod history;
pub mod invariants;
pub mod kv;
pub mod linearizability;
pub mod net;
pub mod params;
pub mod queue;
pub mod rng;
pub mod storage;
pub mod trace;

use std::cell::RefCell;
use std::panic::{self, AssertUnwindSafe};

pub use cluster::{HarnessFault, Outcome, Simulation, Stats};
pub use params::{BugName, Overrides, Params, StorageMode};

thread_local! {
    /// Where the last panic on this thread happened, filled by [`install_panic_hook`].
    static LAST_PANIC: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Replaces the default panic hook by one that records the message and location quietly, so that
/// a panic inside the core becomes a reported violation of its seed rather than noise.
pub fn install_panic_hook() {
    panic::set_hook(Box::new(|info| {
        let text = match info.location() {
            Some(l) => format!("{info} at {}:{}", l.file(), l.line()),
            None => info.to_string(),
        };
        LAST_PANIC.with(|p| *p.borrow_mut() = text);
    }));
}

/// Runs one seed with the given parameters. A panic (in the core or in the simulator) is reported
/// as a violation.
pub fn run_seed(params: Params, verbose: bool) -> Outcome {
    run_guarded(|| Simulation::new(params, verbose).run())
}

/// Runs one seed with a harness fault switched on (tests prove the checkers with it).
pub fn run_seed_with_fault(params: Params, fault: HarnessFault) -> Outcome {
    run_guarded(|| Simulation::new(params, false).with_fault(fault).run())
}

fn run_guarded(run: impl FnOnce() -> Outcome) -> Outcome {
    let result = panic::catch_unwind(AssertUnwindSafe(run));
    match result {
        Ok(outcome) => outcome,
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "non-string panic".to_string());
            let location = LAST_PANIC.with(|p| p.borrow().clone());
            let detail = if location.is_empty() {
                message
            } else {
                location
            };
            Outcome {
                violations: vec![format!("panic: {detail}")],
                trace_hash: 0,
                stats: Stats::default(),
            }
        }
    }
}
