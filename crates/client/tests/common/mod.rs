//! Harness of the client's integration tests: starts a real etcd 3.4 (`etcd` on the PATH or
//! `/usr/bin/etcd`) or Chorus cluster on loopback with free ports and temporary data
//! directories. `CHORUS_CLIENT_TEST_SERVER=chorus|etcd` picks the server (default chorus; the
//! same tests against etcd show that the client works with any etcd v3 endpoint). Chorus is
//! `CHORUS_BIN` or the workspace's `target/debug/chorus` (which `cargo test --workspace`
//! builds). Timeouts here are failure guards only; no test asserts on timing.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the harness"
)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chorus_client::{Client, ClientOptions};

/// The longest any wait in these tests may take before the test fails.
pub const GUARD: Duration = Duration::from_secs(60);

/// Which server the tests run against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    Etcd,
    Chorus,
}

pub fn server() -> Server {
    match std::env::var("CHORUS_CLIENT_TEST_SERVER").as_deref() {
        Ok("chorus") | Err(_) => Server::Chorus,
        Ok("etcd") => Server::Etcd,
        Ok(other) => panic!("CHORUS_CLIENT_TEST_SERVER={other}: expected etcd or chorus"),
    }
}

fn chorus_binary() -> PathBuf {
    if let Ok(path) = std::env::var("CHORUS_BIN") {
        return PathBuf::from(path);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let path = target.join("debug/chorus");
    assert!(
        path.exists(),
        "{} not found: run `cargo build -p chorus` or set CHORUS_BIN",
        path.display()
    );
    path
}

fn etcd_binary() -> PathBuf {
    std::env::var("ETCD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("/usr/bin/etcd"))
}

/// A port nobody listens on now, outside the range outgoing connections take theirs from.
pub fn free_port() -> u16 {
    chorus_server::local::free_port().expect("a free loopback port")
}

/// One server process.
pub struct Member {
    pub name: String,
    pub client_port: u16,
    args: Vec<String>,
    log_path: PathBuf,
    child: Option<Child>,
}

impl Member {
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open the member log");
        let mut command = match server() {
            Server::Etcd => Command::new(etcd_binary()),
            Server::Chorus => {
                let mut command = Command::new(chorus_binary());
                command.arg("serve");
                command
            }
        };
        let child = command
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the server");
        self.child = Some(child);
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A cluster sharing one temporary directory.
pub struct Cluster {
    pub members: Vec<Member>,
    pub dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `size` members and waits until each answers a linearizable read.
    pub async fn start(size: usize) -> Cluster {
        let dir = tempfile::tempdir().expect("temporary directory");
        let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
        let initial_cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let members = ports
            .iter()
            .enumerate()
            .map(|(i, (client, peer))| {
                let name = format!("m{i}");
                let data_dir = dir.path().join(format!("{name}.data"));
                let args = vec![
                    format!("--name={name}"),
                    format!("--data-dir={}", data_dir.display()),
                    format!("--listen-client-urls=http://127.0.0.1:{client}"),
                    format!("--advertise-client-urls=http://127.0.0.1:{client}"),
                    format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
                    format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
                    format!("--initial-cluster={initial_cluster}"),
                    "--initial-cluster-token=client-test".to_string(),
                    "--initial-cluster-state=new".to_string(),
                    "--heartbeat-interval=50".to_string(),
                    "--election-timeout=500".to_string(),
                ];
                let mut member = Member {
                    name: name.clone(),
                    client_port: *client,
                    log_path: dir.path().join(format!("{name}.log")),
                    args,
                    child: None,
                };
                member.start();
                member
            })
            .collect();
        let cluster = Cluster { members, dir };
        for member in &cluster.members {
            cluster.wait_ready(&member.endpoint()).await;
        }
        cluster
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    async fn wait_ready(&self, endpoint: &str) {
        let options = ClientOptions {
            health_interval: None,
            request_timeout: Duration::from_secs(2),
            ..Default::default()
        };
        let client = Client::connect_lazy([endpoint], options).expect("client");
        let start = Instant::now();
        loop {
            match client.get("ready-probe", Default::default()).await {
                Ok(_) => return,
                Err(error) if start.elapsed() > GUARD => {
                    panic!("{endpoint} not ready: {error}\n{}", self.logs())
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// A client of every member with fast health checks.
    pub async fn client(&self) -> Client {
        Client::connect(self.endpoints(), fast_options())
            .await
            .expect("connect")
    }

    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("----- {} -----\n{}", m.name, m.log()))
            .collect()
    }
}

/// Client options with short timeouts and frequent health checks, for tests.
pub fn fast_options() -> ClientOptions {
    ClientOptions {
        health_interval: Some(Duration::from_millis(200)),
        health_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_millis(500),
        ..Default::default()
    }
}

/// Retries `f` until it succeeds, failing the test after [`GUARD`].
pub async fn eventually<T, E: std::fmt::Debug, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let start = Instant::now();
    loop {
        match f().await {
            Ok(value) => return value,
            Err(error) => {
                if start.elapsed() > GUARD {
                    panic!("{what}: still failing after {GUARD:?}: {error:?}");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Awaits `future`, failing the test after [`GUARD`].
pub async fn guard<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: not done after {GUARD:?}"))
}
