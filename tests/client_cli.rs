//! The client commands of `chorus` (put, get, del, txn, lease, member, endpoint, lock, elect,
//! service) against a real `chorus serve`, including processes that die while they hold a
//! lock's lease, lead an election or keep a service registered.

mod common;

use std::io::BufRead as _;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use common::{Cluster, GUARD, eventually, wait_ready};

fn chorus(endpoint: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_chorus"));
    command.env("CHORUS_ENDPOINTS", endpoint);
    command
}

/// Runs a command to completion; returns stdout, failing the test on a non-zero exit.
fn run(endpoint: &str, args: &[&str]) -> String {
    let output = chorus(endpoint).args(args).output().expect("run chorus");
    assert!(
        output.status.success(),
        "chorus {args:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8 output")
}

/// A long-running command whose stdout lines arrive on a channel.
struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Running {
    fn start(endpoint: &str, args: &[&str]) -> Running {
        let mut child = chorus(endpoint)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chorus");
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running { child, lines }
    }

    fn line(&self) -> String {
        self.lines
            .recv_timeout(GUARD)
            .expect("a line within the guard")
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Goal: the plain client commands do what etcdctl's do. Method: one member; each command's
/// output checked.
#[tokio::test(flavor = "multi_thread")]
async fn kv_txn_lease_member_and_status_commands() {
    let cluster = Cluster::start(1, &[]);
    let e = cluster.members[0].endpoint();
    wait_ready(&e).await;
    assert_eq!(run(&e, &["put", "a", "1"]), "OK\n");
    assert_eq!(run(&e, &["put", "a/b", "2"]), "OK\n");
    assert_eq!(run(&e, &["get", "a", "--prefix"]), "a\n1\na/b\n2\n");
    assert_eq!(
        run(
            &e,
            &[
                "txn", "--if", "a = 1", "--then", "put a 3", "--else", "del a"
            ]
        ),
        "SUCCESS\nOK\n"
    );
    assert_eq!(
        run(&e, &["txn", "--if", "a = 1", "--then", "put a 4"]),
        "FAILURE\n"
    );
    assert_eq!(run(&e, &["get", "a"]), "a\n3\n");
    assert_eq!(run(&e, &["del", "a", "--prefix"]), "2\n");
    let granted = run(&e, &["lease", "grant", "30"]);
    let id = granted
        .split_whitespace()
        .nth(1)
        .expect("lease <id> granted")
        .to_string();
    assert_eq!(run(&e, &["put", "leased", "v", "--lease", &id]), "OK\n");
    assert!(run(&e, &["lease", "timetolive", &id]).contains("[\"leased\"]"));
    assert_eq!(
        run(&e, &["lease", "list"]),
        format!("found 1 leases\n{id}\n")
    );
    assert_eq!(
        run(&e, &["lease", "revoke", &id]),
        format!("lease {id} revoked\n")
    );
    assert_eq!(run(&e, &["get", "leased"]), "");
    let members = run(&e, &["member", "list"]);
    assert!(members.contains(", started, m0, "), "{members}");
    let status = run(&e, &["endpoint", "status"]);
    assert!(status.contains("leader: true"), "{status}");
    let refused = chorus(&e).args(["lease", "revoke", "zz"]).output().unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not a hexadecimal id"));
}

/// Goal: `lock` runs a command under the lock with its fencing token; a registered service
/// vanishes from discovery when its process is killed; when the process leading an election
/// is killed, the next candidate's process leads within the lease TTL. Method: one member;
/// child processes killed with SIGKILL.
#[tokio::test(flavor = "multi_thread")]
async fn lock_elect_and_service_follow_their_processes() {
    let cluster = Cluster::start(1, &[]);
    let e = cluster.members[0].endpoint();
    wait_ready(&e).await;

    let out = run(
        &e,
        &[
            "lock",
            "jobs",
            "--",
            "sh",
            "-c",
            "echo $CHORUS_FENCING_TOKEN",
        ],
    );
    let token: i64 = out.trim().parse().expect("the token is a revision");
    let again = run(
        &e,
        &[
            "lock",
            "jobs",
            "--",
            "sh",
            "-c",
            "echo $CHORUS_FENCING_TOKEN",
        ],
    );
    assert!(again.trim().parse::<i64>().unwrap() > token, "tokens grow");

    let mut registered = Running::start(
        &e,
        &["service", "register", "svc", "i1", "addr", "--ttl", "2"],
    );
    assert_eq!(registered.line(), "registered svc/i1");
    assert_eq!(run(&e, &["service", "list", "svc"]), "i1 addr\n");
    assert_eq!(run(&e, &["service", "pick", "svc"]), "i1 addr\n");
    registered.kill();
    eventually("the dead instance vanishes", || async {
        let listed = run(&e, &["service", "list", "svc"]);
        if listed.is_empty() {
            Ok(())
        } else {
            Err(listed)
        }
    })
    .await;

    let mut alice = Running::start(&e, &["elect", "chair", "alice", "--ttl", "2"]);
    assert!(alice.line().starts_with("chair/"));
    assert_eq!(alice.line(), "alice");
    let bob = Running::start(&e, &["elect", "chair", "bob", "--ttl", "5"]);
    let observer = Running::start(&e, &["elect", "chair"]);
    assert!(observer.line().starts_with("chair/"));
    assert_eq!(observer.line(), "alice");
    alice.kill();
    assert!(bob.line().starts_with("chair/"));
    assert_eq!(bob.line(), "bob");
    assert!(observer.line().starts_with("chair/"));
    assert_eq!(observer.line(), "bob");
}
