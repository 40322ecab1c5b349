//! `chorus bench` against a real member: it issues exactly the requests asked, counts them, and
//! reports errors by kind instead of hiding them. (Speed itself is measured by
//! bench/compare-etcd.sh, never by tests.)

mod common;

use std::process::Command;

use common::{Cluster, get, range_retrying, wait_ready};

fn bench(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_chorus"))
        .arg("bench")
        .args(args)
        .args(["--no-progress"])
        .output()
        .expect("run chorus bench");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The value of a numeric field of the JSON report (a flat `"name": number` lookup).
fn field(json: &str, name: &str) -> f64 {
    let pattern = format!("\"{name}\": ");
    let at = json
        .find(&pattern)
        .unwrap_or_else(|| panic!("no {name} in {json}"))
        + pattern.len();
    json[at..]
        .split(&[',', '\n', '}'][..])
        .next()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} is not a number in {json}"))
}

/// Goal: the put, range and compare-and-swap workloads issue exactly `--total` requests, all
/// acknowledged, and the puts really reach the store. Method: each workload against one
/// member with sequential keys, then the keys are read back.
#[tokio::test(flavor = "multi_thread")]
async fn bench_issues_and_counts_the_requests_asked() {
    let cluster = Cluster::start(1, &[]);
    let endpoint = cluster.members[0].endpoint();
    wait_ready(&endpoint).await;

    let (ok, out, err) = bench(&[
        "put",
        "--endpoints",
        &endpoint,
        "--clients",
        "4",
        "--conns",
        "2",
        "--total",
        "300",
        "--key-space",
        "300",
        "--key-size",
        "6",
        "--sequential-keys",
        "--json",
    ]);
    assert!(ok, "{out}\n{err}");
    assert_eq!(field(&out, "requests_ok"), 300.0, "{out}");
    assert_eq!(field(&out, "requests_failed"), 0.0, "{out}");
    assert!(field(&out, "throughput") > 0.0);
    let mut all = get("000000");
    all.range_end = "999999".into();
    all.count_only = true;
    let stored = range_retrying(&endpoint, all).await;
    assert_eq!(stored.count, 300, "every sequential key was written once");

    for workload in [
        "range",
        "range-serializable",
        "txn-cas",
        "txn-read",
        "mixed",
    ] {
        let (ok, out, err) = bench(&[
            workload,
            "--endpoints",
            &endpoint,
            "--clients",
            "3",
            "--total",
            "120",
            "--key-space",
            "50",
            "--json",
        ]);
        assert!(ok, "{workload}: {out}\n{err}");
        assert_eq!(field(&out, "requests_ok"), 120.0, "{workload}: {out}");
    }
}

/// Goal: bad options get a clear error, and an unreachable endpoint fails the run with the
/// address in the message. Method: run the binary with each and read stderr.
#[test]
fn bench_refuses_bad_options() {
    let (ok, _, err) = bench(&["put", "--key-size", "2", "--key-space", "1000"]);
    assert!(!ok);
    assert!(
        err.contains("--key-size 2 cannot name 1000 distinct keys"),
        "{err}"
    );
    let (ok, _, err) = bench(&["put", "--total", "5", "--duration", "1s"]);
    assert!(!ok);
    assert!(
        err.contains("give --total or --duration, not both"),
        "{err}"
    );
    let port = common::free_port();
    let (ok, _, err) = bench(&["put", "--endpoints", &format!("http://127.0.0.1:{port}")]);
    assert!(!ok);
    assert!(
        err.contains(&format!("connect to http://127.0.0.1:{port}")),
        "{err}"
    );
}
