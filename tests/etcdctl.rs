//! etcd's own command-line client against `chorus serve`: the proof that an unmodified etcd
//! client speaks to Chorus. Needs `etcdctl` on PATH (Debian package `etcd-client`); without it
//! the test fails, unless CHORUS_SKIP_ETCDCTL=1 says to skip it on purpose.

mod common;

use std::process::Command;

use common::{Cluster, wait_ready};

/// Runs etcdctl (API v3) against `endpoint`; returns stdout, failing the test on a non-zero exit.
fn etcdctl(endpoint: &str, args: &[&str]) -> String {
    let output = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(args)
        .output()
        .expect("run etcdctl");
    assert!(
        output.status.success(),
        "etcdctl {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("etcdctl prints UTF-8")
}

/// Whether the test may run: etcdctl is there, or skipping was asked for explicitly.
fn etcdctl_available() -> bool {
    let found = Command::new("etcdctl")
        .arg("version")
        .env("ETCDCTL_API", "3")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return true;
    }
    if std::env::var("CHORUS_SKIP_ETCDCTL").as_deref() == Ok("1") {
        eprintln!("etcdctl not found; skipped because CHORUS_SKIP_ETCDCTL=1");
        return false;
    }
    panic!(
        "etcdctl is not on PATH: install it (Debian: apt-get install etcd-client) or set \
         CHORUS_SKIP_ETCDCTL=1 to skip this test"
    );
}

/// Goal: etcdctl's put, get, get --prefix, del, del --prefix, endpoint status and health (with
/// URL and bare endpoints) and member list work against Chorus and print what they print
/// against etcd. Method: one member; each command's output compared with the text etcdctl
/// prints for etcd.
#[tokio::test(flavor = "multi_thread")]
async fn etcdctl_put_get_del_prefix() {
    if !etcdctl_available() {
        return;
    }
    let cluster = Cluster::start(1, &[]);
    let endpoint = cluster.members[0].endpoint();
    wait_ready(&endpoint).await;

    assert_eq!(etcdctl(&endpoint, &["put", "foo", "bar"]), "OK\n");
    assert_eq!(etcdctl(&endpoint, &["put", "foo/1", "one"]), "OK\n");
    assert_eq!(etcdctl(&endpoint, &["put", "foo/2", "two"]), "OK\n");
    assert_eq!(etcdctl(&endpoint, &["put", "other", "x"]), "OK\n");
    assert_eq!(etcdctl(&endpoint, &["get", "foo"]), "foo\nbar\n");
    assert_eq!(
        etcdctl(&endpoint, &["get", "foo/", "--prefix"]),
        "foo/1\none\nfoo/2\ntwo\n"
    );
    assert_eq!(
        etcdctl(&endpoint, &["get", "foo", "--prefix", "--keys-only"]),
        "foo\n\nfoo/1\n\nfoo/2\n\n"
    );
    assert_eq!(etcdctl(&endpoint, &["del", "foo"]), "1\n");
    assert_eq!(etcdctl(&endpoint, &["get", "foo"]), "");
    assert_eq!(etcdctl(&endpoint, &["del", "foo/", "--prefix"]), "2\n");
    assert_eq!(etcdctl(&endpoint, &["get", "", "--prefix"]), "other\nx\n");
    // etcdctl 3.4's `endpoint` commands dial each endpoint on its own and send it as given as
    // the HTTP/2 :authority: the whole URL here, which the member must accept as etcd does.
    let status = etcdctl(&endpoint, &["endpoint", "status", "-w", "json"]);
    assert!(status.contains("\"leader\""), "{status}");
    let health = etcdctl(&endpoint, &["endpoint", "health", "-w", "json"]);
    assert!(
        health.starts_with(&format!("[{{\"endpoint\":\"{endpoint}\",\"health\":true,")),
        "{health}"
    );
    let bare = endpoint.trim_start_matches("http://");
    let status = etcdctl(bare, &["endpoint", "status", "-w", "json"]);
    assert!(status.contains("\"leader\""), "{status}");
    let members = etcdctl(&endpoint, &["member", "list"]);
    let expected = format!(
        ", started, m0, http://127.0.0.1:{}, {}, false\n",
        cluster.members[0].peer_port, endpoint
    );
    assert!(members.ends_with(&expected), "{members}");
}

/// Goal: etcdctl's maintenance commands work against Chorus: `snapshot save` writes the
/// streamed snapshot to a file, `defrag` and `endpoint hashkv` answer, and `move-leader` moves
/// the leadership of a 3-member cluster. Method: each command's output and effect checked.
#[tokio::test(flavor = "multi_thread")]
async fn etcdctl_snapshot_defrag_hashkv_move_leader() {
    if !etcdctl_available() {
        return;
    }
    let cluster = Cluster::start(3, &[]);
    let endpoints: Vec<String> = cluster.members.iter().map(|m| m.endpoint()).collect();
    for endpoint in &endpoints {
        wait_ready(endpoint).await;
    }
    let all = endpoints.join(",");
    assert_eq!(etcdctl(&endpoints[0], &["put", "snap", "shot"]), "OK\n");

    let file = cluster.dir.path().join("backup.db");
    let saved = etcdctl(&endpoints[0], &["snapshot", "save", file.to_str().unwrap()]);
    assert!(saved.contains("Snapshot saved at"), "{saved}");
    let size = std::fs::metadata(&file).unwrap().len();
    assert!(size > 0);

    let defrag = etcdctl(&endpoints[1], &["defrag"]);
    assert!(
        defrag.contains("Finished defragmenting etcd member"),
        "{defrag}"
    );

    let hashkv = etcdctl(&all, &["endpoint", "hashkv", "-w", "json"]);
    assert_eq!(hashkv.matches("\"hash\"").count(), 3, "{hashkv}");

    let status = etcdctl(&all, &["endpoint", "status", "-w", "json"]);
    let leader = status
        .split("\"leader\":")
        .nth(1)
        .and_then(|rest| rest.split(&[',', '}'][..]).next())
        .and_then(|id| id.trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no leader in {status}"));
    let others: Vec<u64> = status
        .split("\"member_id\":")
        .skip(1)
        .filter_map(|rest| rest.split(&[',', '}'][..]).next()?.trim().parse().ok())
        .filter(|id| *id != leader)
        .collect();
    let target = format!("{:x}", others[0]);
    let moved = etcdctl(&all, &["move-leader", &target]);
    assert!(moved.contains("Leadership transferred"), "{moved}");
    let status = etcdctl(&all, &["endpoint", "status", "-w", "json"]);
    assert!(
        status.contains(&format!("\"leader\":{}", others[0])),
        "{status}"
    );
}

/// Runs etcdctl with `args` as a child process and returns the first `lines` lines it prints,
/// then kills it (for commands that never end on their own: watch, elect).
fn etcdctl_first_lines(endpoint: &str, args: &[&str], lines: usize) -> Vec<String> {
    use std::io::BufRead as _;
    let mut child = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start etcdctl");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut got = Vec::new();
    while got.len() < lines {
        match rx.recv_timeout(common::GUARD) {
            Ok(line) => got.push(line),
            Err(_) => {
                let _ = child.kill();
                let output = child.wait_with_output().expect("etcdctl's output");
                panic!(
                    "etcdctl {args:?} printed only {got:?}; stderr: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    got
}

/// Goal: etcdctl's `watch KEY --rev=N` replays the history from N and `watch --prefix` follows
/// new writes under a prefix, printing what etcdctl prints against etcd (type, key, value per
/// event). Method: one member; writes, then etcdctl watch as a child process read line by line.
#[tokio::test(flavor = "multi_thread")]
async fn etcdctl_watch_history_and_prefix() {
    if !etcdctl_available() {
        return;
    }
    let cluster = Cluster::start(1, &[]);
    let endpoint = cluster.members[0].endpoint();
    wait_ready(&endpoint).await;
    let revision = |out: String| -> i64 {
        let text = out
            .split("\"revision\":")
            .nth(1)
            .expect("a revision in the header");
        let digits: String = text.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().expect("a number")
    };
    let first = revision(etcdctl(&endpoint, &["put", "foo", "bar", "-w", "json"]));
    assert_eq!(etcdctl(&endpoint, &["put", "foo", "baz"]), "OK\n");
    assert_eq!(etcdctl(&endpoint, &["put", "fox", "no"]), "OK\n");
    assert_eq!(etcdctl(&endpoint, &["del", "foo"]), "1\n");
    let rev = format!("--rev={first}");
    let printed = etcdctl_first_lines(&endpoint, &["watch", "foo", &rev], 9);
    assert_eq!(
        printed,
        [
            "PUT", "foo", "bar", "PUT", "foo", "baz", "DELETE", "foo", ""
        ]
    );

    // A prefix watch from the next revision, so that it cannot miss the writes below.
    let next = revision(etcdctl(&endpoint, &["put", "start", "x", "-w", "json"])) + 1;
    let endpoint_for_writes = endpoint.clone();
    let writes = std::thread::spawn(move || {
        for (key, value) in [("p/1", "a"), ("other", "x"), ("p/2", "b")] {
            assert_eq!(etcdctl(&endpoint_for_writes, &["put", key, value]), "OK\n");
        }
    });
    let rev = format!("--rev={next}");
    let printed = etcdctl_first_lines(&endpoint, &["watch", "--prefix", "p/", &rev], 6);
    writes.join().expect("the writes");
    assert_eq!(printed, ["PUT", "p/1", "a", "PUT", "p/2", "b"]);
}

/// Goal: etcdctl's member, lease, alarm, lock and elect commands work against Chorus as they
/// do against etcd. Method: one member; each command run and its output checked for what
/// etcdctl prints against etcd (ids are random, so they are read back from the output).
#[tokio::test(flavor = "multi_thread")]
async fn etcdctl_member_lease_alarm_lock_elect() {
    if !etcdctl_available() {
        return;
    }
    let cluster = Cluster::start(1, &[]);
    let endpoint = cluster.members[0].endpoint();
    wait_ready(&endpoint).await;

    // Members: list, add a learner (etcdctl prints the flags to start it with), remove it.
    let listed = etcdctl(&endpoint, &["member", "list"]);
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert!(
        listed.contains(&format!(
            ", started, m0, {}, {endpoint}, false",
            cluster.members[0].peer_url()
        )),
        "{listed}"
    );
    let added = etcdctl(
        &endpoint,
        &[
            "member",
            "add",
            "m9",
            "--learner",
            "--peer-urls=http://127.0.0.1:1",
        ],
    );
    assert!(
        added.contains("ETCD_INITIAL_CLUSTER_STATE=\"existing\""),
        "{added}"
    );
    let id = added
        .split_whitespace()
        .nth(1)
        .expect("Member <id> added")
        .to_string();
    let listed = etcdctl(&endpoint, &["member", "list"]);
    assert!(
        listed.contains(&format!("{id}, unstarted, , http://127.0.0.1:1, , true")),
        "{listed}"
    );
    let removed = etcdctl(&endpoint, &["member", "remove", &id]);
    assert!(
        // etcdctl prints ids with `%16x`: padded with spaces to 16 characters.
        removed.contains(&format!("Member {id:>16} removed from cluster")),
        "{removed}"
    );
    assert_eq!(etcdctl(&endpoint, &["member", "list"]).lines().count(), 1);

    // Leases: grant, attach, time-to-live with keys, list, keep-alive once, revoke.
    let granted = etcdctl(&endpoint, &["lease", "grant", "30"]);
    assert!(granted.ends_with("granted with TTL(30s)\n"), "{granted}");
    let lease = granted
        .split_whitespace()
        .nth(1)
        .expect("lease <id> granted");
    assert_eq!(
        etcdctl(&endpoint, &["put", "--lease", lease, "lk", "v"]),
        "OK\n"
    );
    let ttl = etcdctl(&endpoint, &["lease", "timetolive", lease, "--keys"]);
    assert!(ttl.contains("attached keys([lk])"), "{ttl}");
    let list = etcdctl(&endpoint, &["lease", "list"]);
    assert_eq!(list, format!("found 1 leases\n{lease}\n"));
    let kept = etcdctl(&endpoint, &["lease", "keep-alive", "--once", lease]);
    assert_eq!(kept, format!("lease {lease} keepalived with TTL(30)\n"));
    let revoked = etcdctl(&endpoint, &["lease", "revoke", lease]);
    assert_eq!(revoked, format!("lease {lease} revoked\n"));
    assert_eq!(etcdctl(&endpoint, &["get", "lk"]), "");

    // Alarms: none raised, disarming none is quiet.
    assert_eq!(etcdctl(&endpoint, &["alarm", "list"]), "");
    assert_eq!(etcdctl(&endpoint, &["alarm", "disarm"]), "");

    // A lock held around a command, then a campaign that wins and prints its proposal.
    assert_eq!(
        etcdctl(&endpoint, &["lock", "door", "echo", "inside"]),
        "inside\n"
    );
    let elected = etcdctl_first_lines(&endpoint, &["elect", "chair", "alice"], 2);
    assert!(elected[0].starts_with("chair/"), "{elected:?}");
    assert_eq!(elected[1], "alice");
}
