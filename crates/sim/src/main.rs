//! The `chorus-sim` command: runs seeds, prints every failing seed with its parameters and a
//! replay command, and ends with the line `seeds=N violations=V`.

use std::process::ExitCode;
use std::time::Instant as WallInstant;

use anyhow::{Context, bail};
use chorus_sim::{BugName, Overrides, Params, StorageMode, install_panic_hook, run_seed};
use clap::Parser;

/// Deterministic simulation of a Chorus Raft cluster under seeded faults.
#[derive(Parser, Debug)]
#[command(name = "chorus-sim", version)]
struct Args {
    /// How many seeds to run.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    seed_start: u64,
    /// Switch on a deliberately broken rule of the core: double-vote, commit-old-term,
    /// stale-lease-read or forget-vote-on-restart (needs the `inject-bugs` feature). The run
    /// stops at the first seed that catches it.
    #[arg(long, value_name = "NAME")]
    inject_bug: Option<String>,
    /// Pin the number of nodes (3 to 7) instead of drawing it from each seed.
    #[arg(long)]
    nodes: Option<usize>,
    /// Where nodes keep their Raft log: `mem` (a MemStorage copied at each fsync) or `wal` (the
    /// real write-ahead log on a faulty in-memory disk). Drawn from each seed when absent.
    #[arg(long, value_name = "MODE")]
    storage: Option<String>,
    /// Print every event of each run (use with one seed).
    #[arg(long, alias = "trace")]
    verbose: bool,
    /// Print one line per seed (its trace hash and counters), failing or not.
    #[arg(long)]
    each: bool,
    /// With --inject-bug, do not stop at the first seed that catches it (to measure how often
    /// and by which checker it is caught).
    #[arg(long)]
    keep_going: bool,
}

fn main() -> ExitCode {
    match run() {
        Ok(0) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::from(1),
        Err(e) => {
            eprintln!("chorus-sim: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> anyhow::Result<u64> {
    let args = Args::parse();
    let bug = match args.inject_bug.as_deref() {
        None => None,
        Some(name) => {
            let bug = BugName::parse(name).with_context(|| {
                let known: Vec<&str> = BugName::ALL.iter().map(|b| b.name()).collect();
                format!(
                    "parsing --inject-bug {name}: known bugs are {}",
                    known.join(", ")
                )
            })?;
            if !cfg!(feature = "inject-bugs") {
                bail!(
                    "--inject-bug needs a build with the `inject-bugs` feature: \
                     cargo run --release -p chorus-sim --features inject-bugs -- ..."
                );
            }
            Some(bug)
        }
    };
    if let Some(n) = args.nodes
        && !(3..=7).contains(&n)
    {
        bail!("--nodes must be between 3 and 7, got {n}");
    }
    let storage = match args.storage.as_deref() {
        None => None,
        Some(text) => Some(
            StorageMode::parse(text)
                .with_context(|| format!("parsing --storage {text}: expected mem or wal"))?,
        ),
    };
    install_panic_hook();
    let overrides = Overrides {
        nodes: args.nodes,
        bug,
        storage,
    };
    let started = WallInstant::now();
    let (mut seeds_run, mut violations, mut undecided) = (0u64, 0u64, 0u64);
    for seed in args.seed_start..args.seed_start.saturating_add(args.seeds) {
        let params = Params::from_seed(seed, &overrides);
        let outcome = run_seed(params.clone(), args.verbose);
        seeds_run += 1;
        if outcome.stats.linearizability_unknown > 0 {
            undecided += 1;
        }
        if args.each || args.verbose {
            let s = &outcome.stats;
            println!(
                "seed={seed} hash={:016x} events={} elections={} crashes={} torn_writes={} \
                 partitions={} transfers={} ops_ok={} ops_indeterminate={} max_commit={} \
                 snapshots_installed={} conf_changes={} heal_to_commit_us={:?} lin_unknown={} \
                 storage={} wal_recoveries={} bit_flips={} fsync_failures={} segments_purged={} violations={}",
                outcome.trace_hash,
                s.events,
                s.elections,
                s.crashes,
                s.torn_writes,
                s.partitions,
                s.transfers,
                s.ops_ok,
                s.ops_indeterminate,
                s.max_commit,
                s.snapshots_installed,
                s.conf_changes_applied,
                s.heal_to_commit_us,
                s.linearizability_unknown,
                params.storage,
                s.wal_recoveries,
                s.bit_flips,
                s.fsync_failures,
                s.segments_purged,
                outcome.violations.len()
            );
        }
        if outcome.violations.is_empty() {
            continue;
        }
        violations += 1;
        print_failure(seed, &params, &outcome.violations, &args);
        if let Some(bug) = bug {
            if violations == 1 {
                println!("injected bug {bug} caught by seed {seed} after {seeds_run} seeds");
            }
            if !args.keep_going {
                break;
            }
        }
    }
    if let Some(bug) = bug
        && violations == 0
    {
        println!("injected bug {bug} NOT caught in {seeds_run} seeds");
    }
    if undecided > 0 {
        eprintln!(
            "warning: in {undecided} seeds the linearizability search hit its budget for some \
             key (not counted as violations; rerun with --each to see which)"
        );
    }
    eprintln!("wall time {:.1}s", started.elapsed().as_secs_f64());
    println!("seeds={seeds_run} violations={violations}");
    Ok(violations)
}

fn print_failure(seed: u64, params: &Params, violations: &[String], args: &Args) {
    println!("FAIL seed={seed}");
    println!("  params: {params}");
    for v in violations {
        println!("  violation: {v}");
    }
    let mut replay = String::from("cargo run --release -p chorus-sim");
    if let Some(bug) = params.bug {
        replay.push_str(&format!(" --features inject-bugs -- --inject-bug {bug}"));
    } else {
        replay.push_str(" --");
    }
    if let Some(n) = args.nodes {
        replay.push_str(&format!(" --nodes {n}"));
    }
    replay.push_str(&format!(" --seed-start {seed} --seeds 1 --verbose"));
    replay.push_str(&format!(" --storage {}", params.storage));
    println!("  replay: {replay}");
}
