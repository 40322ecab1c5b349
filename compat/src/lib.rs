//! Harness of the compatibility tests: starts real server processes (the `chorus` binary, or
//! etcd 3.4 for comparison) on loopback with free ports and temporary data directories, and
//! connects etcd's own Rust client (`etcd-client`) to them.
//!
//! Which server the API tests run against comes from `COMPAT_TARGET` (`chorus`, the default, or
//! `etcd`). The chorus binary comes from `CHORUS_BIN`, etcd from `ETCD_BIN` (default
//! `/usr/bin/etcd`). The differential test always starts one of each.
//!
//! Timeouts here are failure guards only; no test asserts on timing.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions};
pub use tonic::Code;

/// The longest any wait in these tests may take before the test fails.
pub const GUARD: Duration = Duration::from_secs(60);

/// Which implementation a server process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    Chorus,
    Etcd,
}

impl Flavor {
    /// The flavor the API tests run against, from `COMPAT_TARGET`.
    pub fn from_env() -> Flavor {
        match std::env::var("COMPAT_TARGET").as_deref() {
            Ok("etcd") => Flavor::Etcd,
            Ok("chorus") | Err(_) => Flavor::Chorus,
            Ok(other) => panic!("COMPAT_TARGET must be `chorus` or `etcd`, not `{other}`"),
        }
    }

    /// The binary to run, from `CHORUS_BIN` or `ETCD_BIN`.
    pub fn binary(self) -> PathBuf {
        match self {
            Flavor::Chorus => PathBuf::from(std::env::var("CHORUS_BIN").expect(
                "CHORUS_BIN must name the chorus binary (scripts/test.sh sets it after cargo build)",
            )),
            Flavor::Etcd => {
                PathBuf::from(std::env::var("ETCD_BIN").unwrap_or_else(|_| "/usr/bin/etcd".into()))
            }
        }
    }

    fn command(self) -> Command {
        let binary = self.binary();
        assert!(
            binary.exists(),
            "{} does not exist (see docs/compat.md)",
            binary.display()
        );
        let mut command = Command::new(binary);
        if self == Flavor::Chorus {
            command.arg("serve");
        }
        command
    }
}

/// A port nobody listens on now. It is taken below Linux's ephemeral range (32768 and up), so
/// that no outgoing connection can be given it before the server binds it; each call moves on
/// to the next port, from a place in the range that depends on the process.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id() % 10_000;
    loop {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % 10_000;
        let port = u16::try_from(21_000 + offset).expect("below 65536");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// One server process.
pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    log_path: PathBuf,
    child: Option<Child>,
}

impl Member {
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The member's log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A cluster of server processes of one flavor sharing one temporary directory.
pub struct Cluster {
    pub flavor: Flavor,
    pub members: Vec<Member>,
    pub dir: tempfile::TempDir,
    extra: Vec<String>,
}

/// The flags both etcd and `chorus serve` take to start one member.
fn member_args(
    name: &str,
    data_dir: &std::path::Path,
    client: u16,
    peer: u16,
    initial_cluster: &str,
    state: &str,
) -> Vec<String> {
    vec![
        format!("--name={name}"),
        format!("--data-dir={}", data_dir.display()),
        format!("--listen-client-urls=http://127.0.0.1:{client}"),
        format!("--advertise-client-urls=http://127.0.0.1:{client}"),
        format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
        format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
        format!("--initial-cluster={initial_cluster}"),
        format!("--initial-cluster-state={state}"),
        "--initial-cluster-token=compat-test".to_string(),
        "--heartbeat-interval=50".to_string(),
        "--election-timeout=500".to_string(),
    ]
}

impl Cluster {
    /// Starts `size` members of `flavor` with a static `--initial-cluster`, plus `extra` flags
    /// for each, and waits until the cluster serves a linearizable read.
    pub async fn start(flavor: Flavor, size: usize, extra: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().expect("temporary directory");
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
        let initial_cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            flavor,
            members: Vec::new(),
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        for (i, (client, peer)) in ports.into_iter().enumerate() {
            let member = cluster.spawn(&format!("m{i}"), client, peer, &initial_cluster, "new");
            cluster.members.push(member);
        }
        cluster.wait_ready().await;
        cluster
    }

    /// Starts one process that joins with `--initial-cluster-state` `state`.
    pub fn spawn(
        &self,
        name: &str,
        client: u16,
        peer: u16,
        initial_cluster: &str,
        state: &str,
    ) -> Member {
        let data_dir = self.dir.path().join(format!("{name}.data"));
        let log_path = self.dir.path().join(format!("{name}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("open the member log");
        let child = self
            .flavor
            .command()
            .args(member_args(
                name,
                &data_dir,
                client,
                peer,
                initial_cluster,
                state,
            ))
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the server process");
        Member {
            name: name.to_string(),
            client_port: client,
            peer_port: peer,
            log_path,
            child: Some(child),
        }
    }

    /// Every member's endpoint.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    /// A client connected to the first member only (so that answers come from one place).
    pub async fn client(&self) -> Client {
        connect(&[self.members[0].endpoint()]).await
    }

    /// The endpoint of the member whose id is `leader`.
    pub async fn leader_endpoint(&self, leader: u64) -> String {
        for endpoint in self.endpoints() {
            let mut c = connect(std::slice::from_ref(&endpoint)).await;
            let status = c.status().await.expect("status");
            if status.header().expect("header").member_id() == leader {
                return endpoint;
            }
        }
        panic!("no member is {leader:x}")
    }

    async fn wait_ready(&self) {
        for member in &self.members {
            let mut client = connect(&[member.endpoint()]).await;
            let start = Instant::now();
            loop {
                match client.get("compat-ready-probe", None).await {
                    Ok(_) => break,
                    Err(error) => {
                        assert!(
                            start.elapsed() < GUARD,
                            "{:?} member {} never served a read: {error}\n{}",
                            self.flavor,
                            member.name,
                            self.logs()
                        );
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    }

    /// Every member's log, for failure messages.
    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("----- {} -----\n{}", m.name, m.log()))
            .collect()
    }
}

/// A client of the given endpoints (lazy: the first request connects).
pub async fn connect(endpoints: &[String]) -> Client {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(20));
    let start = Instant::now();
    loop {
        match Client::connect(endpoints, Some(options.clone())).await {
            Ok(client) => return client,
            Err(error) => {
                assert!(
                    start.elapsed() < GUARD,
                    "cannot connect to {endpoints:?}: {error}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The gRPC code and message of a failed call (panics when the call did not fail with a gRPC
/// status).
pub fn status_of<T: std::fmt::Debug>(result: Result<T, etcd_client::Error>) -> (Code, String) {
    match result {
        Err(etcd_client::Error::GRpcStatus(status)) => {
            (status.code(), status.message().to_string())
        }
        other => panic!("expected a gRPC error status, got {other:?}"),
    }
}
