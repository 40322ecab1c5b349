//! Golden interaction scenarios: each `tests/scenarios/<name>.txt` is a script of commands run
//! against the in-crate test network; everything that happens (messages delivered, role
//! changes, applied entries, read states, status lines) is compared line by line with
//! `tests/scenarios/<name>.out`. Run with `CHORUS_GOLDEN_UPDATE=1` to rewrite the `.out` files
//! after an intended change, and review the diff.
//!
//! Commands (one per line, `#` starts a comment):
//! - `cluster 1 2 3 [prevote=false] [checkquorum=false] [lease] [inflight=N] [appendbytes=N]
//!   [uncommitted=N]`: a new cluster of voters;
//! - `add-node ID`: a new empty node joining under the current leader's configuration;
//! - `campaign ID`, `propose ID DATA`, `read-index ID CTX`, `transfer-leader ID TO`;
//! - `conf-change ID [auto|joint|explicit|leave] [vN] [lN] [rN]...`: add voter, add learner,
//!   remove;
//! - `tick ID [xN]`, `tick-all [xN]` (each tick followed by stabilize), `stabilize`, `deliver`;
//! - `partition 1 2 / 3`, `heal`, `crash ID`, `restart ID`;
//! - `compact ID`: snapshot the state at the applied index and compact the log there;
//! - `report-snapshot ID TO ok|fail`, `status`.

use std::fs;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use chorus_raft::interaction::{Network, test_config};
use chorus_raft::{
    ConfChange, ConfChangeSingle, ConfChangeTransition, MemStorage, NodeId, ReadOnlyOption, Role,
};

/// Goal: every scenario produces exactly its checked-in output. Method: run each script and
/// diff; the first difference fails with the scenario, line number and both lines.
#[test]
fn golden_scenarios() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios");
    let update = std::env::var("CHORUS_GOLDEN_UPDATE").is_ok_and(|v| v == "1");
    let mut scripts: Vec<PathBuf> = fs::read_dir(&dir)
        .expect("scenario directory exists")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    scripts.sort();
    assert!(scripts.len() >= 10, "the scenarios are present");
    for script in scripts {
        let text = fs::read_to_string(&script).expect("script reads");
        let got = run_script(&text).join("\n") + "\n";
        let golden = script.with_extension("out");
        if update {
            fs::write(&golden, &got).expect("golden file writes");
            continue;
        }
        let want = fs::read_to_string(&golden).unwrap_or_else(|_| {
            panic!(
                "{} is missing; run with CHORUS_GOLDEN_UPDATE=1",
                golden.display()
            )
        });
        compare(&script, &want, &got);
    }
}

fn compare(script: &Path, want: &str, got: &str) {
    for (i, (w, g)) in want.lines().zip(got.lines()).enumerate() {
        assert_eq!(
            g,
            w,
            "{}: output line {} differs (got, want)",
            script.display(),
            i + 1
        );
    }
    assert_eq!(
        got.lines().count(),
        want.lines().count(),
        "{}: output length differs",
        script.display()
    );
}

/// Runs a script and returns its transcript.
fn run_script(text: &str) -> Vec<String> {
    let mut net = Network::empty();
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(format!("> {line}"));
        let mark = net.output.len();
        let words: Vec<&str> = line.split_whitespace().collect();
        let extra = run_command(&mut net, &words);
        out.extend(net.output[mark..].iter().cloned());
        out.extend(extra);
    }
    out
}

fn id(word: &str) -> u64 {
    word.parse()
        .unwrap_or_else(|_| panic!("not a node id: {word}"))
}

fn times(words: &[&str]) -> usize {
    words
        .iter()
        .find_map(|w| w.strip_prefix('x'))
        .map_or(1, |n| n.parse().expect("xN"))
}

fn run_command(net: &mut Network, words: &[&str]) -> Vec<String> {
    match words[0] {
        "cluster" => *net = cluster(&words[1..]),
        "add-node" => add_node(net, id(words[1])),
        "campaign" => net.raw(id(words[1])).campaign().expect("campaign"),
        "propose" => {
            let result = net
                .raw(id(words[1]))
                .propose(Bytes::from(words[2].to_string()));
            return vec![format!("{result:?}")];
        }
        "read-index" => {
            let result = net
                .raw(id(words[1]))
                .read_index(Bytes::from(words[2].to_string()));
            return vec![format!("{result:?}")];
        }
        "transfer-leader" => net.raw(id(words[1])).transfer_leader(NodeId(id(words[2]))),
        "conf-change" => {
            let result = net
                .raw(id(words[1]))
                .propose_conf_change(conf_change(&words[2..]));
            return vec![format!("{result:?}")];
        }
        "tick" => net.tick(id(words[1]), times(words)),
        "tick-all" => net.tick_all(times(words)),
        "stabilize" => net.stabilize(),
        "deliver" => {
            net.deliver_all();
        }
        "partition" => partition(net, &words[1..]),
        "heal" => net.heal(),
        "crash" => net.crash(id(words[1])),
        "restart" => net.restart(id(words[1])),
        "compact" => return compact(net, id(words[1])),
        "report-snapshot" => net
            .raw(id(words[1]))
            .report_snapshot(NodeId(id(words[2])), words[3] == "ok"),
        "status" => return net.status_lines(),
        other => panic!("unknown command {other}"),
    }
    Vec::new()
}

fn cluster(args: &[&str]) -> Network {
    let ids: Vec<u64> = args.iter().filter_map(|w| w.parse().ok()).collect();
    let options: Vec<&str> = args
        .iter()
        .copied()
        .filter(|w| w.parse::<u64>().is_err())
        .collect();
    let mut net = Network::new(&ids, |c| {
        for option in &options {
            let (key, value) = option.split_once('=').unwrap_or((option, ""));
            match key {
                "prevote" => c.pre_vote = value == "true",
                "checkquorum" => c.check_quorum = value == "true",
                "lease" => c.read_only = ReadOnlyOption::LeaseBased,
                "inflight" => c.inflight_msgs_max = value.parse().expect("inflight=N"),
                "appendbytes" => c.append_bytes_max = value.parse().expect("appendbytes=N"),
                "uncommitted" => c.uncommitted_bytes_max = value.parse().expect("uncommitted=N"),
                other => panic!("unknown cluster option {other}"),
            }
        }
    });
    net.trace_messages = true;
    net
}

fn add_node(net: &mut Network, new: u64) {
    let leader = net
        .nodes
        .values()
        .find(|n| n.raw.status().role == Role::Leader)
        .expect("a leader to join");
    let cs = leader.raw.status().conf_state;
    net.add_node(test_config(new), MemStorage::new_with_conf_state(cs));
}

fn conf_change(words: &[&str]) -> ConfChange {
    let mut cc = ConfChange::default();
    for w in words {
        let (kind, rest) = w.split_at(1);
        match (*w, kind) {
            ("auto", _) => cc.transition = ConfChangeTransition::Auto,
            ("joint", _) => cc.transition = ConfChangeTransition::JointImplicit,
            ("explicit", _) => cc.transition = ConfChangeTransition::JointExplicit,
            ("leave", _) => {}
            (_, "v") => cc
                .changes
                .push(ConfChangeSingle::AddVoter(NodeId(id(rest)))),
            (_, "l") => cc
                .changes
                .push(ConfChangeSingle::AddLearner(NodeId(id(rest)))),
            (_, "r") => cc
                .changes
                .push(ConfChangeSingle::RemoveNode(NodeId(id(rest)))),
            _ => panic!("unknown conf change word {w}"),
        }
    }
    cc
}

fn partition(net: &mut Network, words: &[&str]) {
    let groups: Vec<Vec<u64>> = words
        .split(|w| *w == "/")
        .map(|g| g.iter().map(|w| id(w)).collect())
        .collect();
    net.partition(&groups);
}

fn compact(net: &mut Network, node: u64) -> Vec<String> {
    let status = net.raw(node).status();
    let storage = net.raw(node).storage_mut();
    storage
        .create_snapshot(
            status.applied,
            status.conf_state,
            Bytes::from_static(b"image"),
        )
        .expect("snapshot");
    storage.compact(status.applied).expect("compact");
    vec![format!("n{node}: compacted to {}", status.applied)]
}
