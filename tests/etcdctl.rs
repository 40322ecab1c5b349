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

/// Goal: etcdctl's put, get, get --prefix, del, del --prefix, endpoint status and member list
/// work against Chorus and print what they print against etcd. Method: one member; each command's output compared with the
/// text etcdctl prints for etcd.
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
    // etcdctl 3.4's `endpoint status` dials each endpoint as a raw address and sends the whole
    // URL as the HTTP/2 :authority, which the HTTP/2 library under tonic refuses as malformed
    // (etcd's Go server accepts it). With a scheme-less endpoint the authority is valid.
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
