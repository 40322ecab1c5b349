//! Shared harness of the multi-process tests: starts real `chorus serve` processes on loopback
//! with free ports and temporary data directories, and talks to them with the generated etcd
//! client. Timeouts here are failure guards only; no test asserts on timing.

#![allow(
    dead_code,
    reason = "each test binary uses a different part of the harness"
)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chorus_proto::etcdserverpb as pb;
use pb::kv_client::KvClient;
use pb::maintenance_client::MaintenanceClient;
use tonic::transport::Channel;

/// The longest any wait in these tests may take before the test fails.
pub const GUARD: Duration = Duration::from_secs(60);

/// A port nobody listens on now, outside the range outgoing connections take theirs from.
pub fn free_port() -> u16 {
    chorus_server::local::free_port().expect("a free loopback port")
}

/// One `chorus serve` process and what it needs to be restarted.
pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub data_dir: PathBuf,
    args: Vec<String>,
    log_path: PathBuf,
    child: Option<Child>,
}

impl Member {
    /// A member (not started) named `name` with its data directory and log in `dir`, listening
    /// on `ports` (client, peer), with `--initial-cluster` and `extra` flags.
    pub fn new(
        dir: &Path,
        name: &str,
        (client, peer): (u16, u16),
        initial_cluster: &str,
        extra: &[&str],
    ) -> Member {
        let data_dir = dir.join(format!("{name}.chorus"));
        let mut args = vec![
            format!("--name={name}"),
            format!("--data-dir={}", data_dir.display()),
            format!("--listen-client-urls=http://127.0.0.1:{client}"),
            format!("--advertise-client-urls=http://127.0.0.1:{client}"),
            format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
            format!("--initial-cluster={initial_cluster}"),
            "--initial-cluster-token=chorus-test".to_string(),
            "--heartbeat-interval=50".to_string(),
            "--election-timeout=500".to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Member {
            name: name.to_string(),
            client_port: client,
            peer_port: peer,
            log_path: dir.join(format!("{name}.log")),
            data_dir,
            args,
            child: None,
        }
    }

    /// This member's peer URL, as `MemberAdd` takes it.
    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Starts (or restarts) the process with its data directory and flags.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open the member log");
        let child = Command::new(env!("CARGO_BIN_EXE_chorus"))
            .arg("serve")
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start chorus serve");
        self.child = Some(child);
    }

    /// kill -9: no shutdown, no flush; only what was fsynced survives.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM (through the `kill` command) and waits for the process to exit; returns
    /// whether it exited successfully.
    pub fn terminate(&mut self) -> bool {
        let mut child = self.child.take().expect("the member is running");
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
        let start = Instant::now();
        loop {
            if let Some(exit) = child.try_wait().expect("wait for the member") {
                return exit.success();
            }
            if start.elapsed() > GUARD {
                let _ = child.kill();
                panic!("{} did not stop after SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits up to [`GUARD`] for the process to exit by itself; returns whether it exited
    /// successfully, or `None` if it was still running.
    pub fn wait_exit(&mut self) -> Option<bool> {
        let start = Instant::now();
        let child = self.child.as_mut().expect("the member is running");
        loop {
            if let Some(exit) = child.try_wait().expect("wait for the member") {
                self.child = None;
                return Some(exit.success());
            }
            if start.elapsed() > GUARD {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The member's log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until the member's log contains `needle`: what a test sees through the API can
    /// come a moment before the line that logs it. Panics with the log after [`GUARD`].
    pub async fn wait_for_log(&self, needle: &str) {
        let start = Instant::now();
        while !self.log().contains(needle) {
            if start.elapsed() > GUARD {
                panic!("{needle:?} never logged:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A cluster of `chorus serve` processes sharing one temporary directory.
pub struct Cluster {
    pub members: Vec<Member>,
    pub dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `size` members with a static `--initial-cluster`, plus `extra` flags for each.
    pub fn start(size: usize, extra: &[&str]) -> Cluster {
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
                let mut member = Member::new(
                    dir.path(),
                    &format!("m{i}"),
                    (*client, *peer),
                    &initial_cluster,
                    extra,
                );
                member.start();
                member
            })
            .collect();
        Cluster { members, dir }
    }

    /// A new member (not started) that joins this running cluster with
    /// `--initial-cluster-state existing`: its `--initial-cluster` lists the members still
    /// running and itself. Returns its position in `members`.
    pub fn joining_member(&mut self, name: &str, extra: &[&str]) -> usize {
        let ports = (free_port(), free_port());
        let mut initial_cluster: Vec<String> = self
            .members
            .iter()
            .filter(|m| m.is_running())
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect();
        initial_cluster.push(format!("{name}=http://127.0.0.1:{}", ports.1));
        let mut flags = vec!["--initial-cluster-state=existing"];
        flags.extend_from_slice(extra);
        let member = Member::new(
            self.dir.path(),
            name,
            ports,
            &initial_cluster.join(","),
            &flags,
        );
        self.members.push(member);
        self.members.len() - 1
    }

    /// Every member's log, for failure messages.
    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("----- {} -----\n{}", m.name, m.log()))
            .collect()
    }
}

pub async fn kv(endpoint: &str) -> KvClient<Channel> {
    let channel = Channel::from_shared(endpoint.to_string())
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(20))
        .connect_lazy();
    KvClient::new(channel)
}

pub async fn cluster_client(endpoint: &str) -> pb::cluster_client::ClusterClient<Channel> {
    let channel = Channel::from_shared(endpoint.to_string())
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(30))
        .connect_lazy();
    pb::cluster_client::ClusterClient::new(channel)
}

pub async fn maintenance(endpoint: &str) -> MaintenanceClient<Channel> {
    let channel = Channel::from_shared(endpoint.to_string())
        .expect("endpoint")
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(20))
        .connect_lazy();
    MaintenanceClient::new(channel)
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

/// Waits until `endpoint` answers a linearizable read (it has a leader and has caught up).
pub async fn wait_ready(endpoint: &str) {
    let mut client = kv(endpoint).await;
    eventually(&format!("{endpoint} ready"), || {
        let mut client = client.clone();
        async move {
            client
                .range(pb::RangeRequest {
                    key: "ready-probe".into(),
                    ..Default::default()
                })
                .await
        }
    })
    .await;
    let _ = &mut client;
}

pub fn put(key: &str, value: &str) -> pb::PutRequest {
    pb::PutRequest {
        key: key.to_string().into(),
        value: value.to_string().into(),
        ..Default::default()
    }
}

pub fn get(key: &str) -> pb::RangeRequest {
    pb::RangeRequest {
        key: key.to_string().into(),
        ..Default::default()
    }
}

/// `[prefix, prefix + 1)`: every key with the prefix, as etcd's `--prefix`.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The data directory of a member, for tests that look inside.
pub fn data_dir(member: &Member) -> &Path {
    &member.data_dir
}

/// Puts `key = value` through `endpoint`, retrying until acknowledged (an election on a busy
/// machine may refuse a write for a moment). Repeating the same put is harmless to the checks,
/// which look at the final value of keys written once each.
pub async fn put_retrying(endpoint: &str, key: &str, value: &str) -> pb::PutResponse {
    let client = kv(endpoint).await;
    eventually(&format!("put {key} through {endpoint}"), || {
        let mut client = client.clone();
        let request = put(key, value);
        async move { client.put(request).await.map(tonic::Response::into_inner) }
    })
    .await
}

/// A range read through `endpoint`, retrying on errors (never on a wrong answer).
pub async fn range_retrying(endpoint: &str, request: pb::RangeRequest) -> pb::RangeResponse {
    let client = kv(endpoint).await;
    eventually(&format!("range through {endpoint}"), || {
        let mut client = client.clone();
        let request = request.clone();
        async move { client.range(request).await.map(tonic::Response::into_inner) }
    })
    .await
}

/// The index of the member that leads, as every running member's `Maintenance.Status` agrees.
pub async fn leader_index(cluster: &Cluster) -> usize {
    eventually("find the leader", || async {
        let mut leaders = Vec::new();
        for member in cluster.members.iter().filter(|m| m.is_running()) {
            let mut client = maintenance(&member.endpoint()).await;
            let status = client
                .status(pb::StatusRequest {})
                .await
                .map_err(|e| e.to_string())?
                .into_inner();
            leaders.push((status.leader, status.header.unwrap_or_default().member_id));
        }
        let leader = leaders[0].0;
        if leader == 0 || leaders.iter().any(|(l, _)| *l != leader) {
            return Err(format!("no agreed leader yet: {leaders:?}"));
        }
        leaders
            .iter()
            .position(|(_, me)| *me == leader)
            .map(|_| ())
            .ok_or("the leader is not among the running members".to_string())?;
        let running: Vec<usize> = (0..cluster.members.len())
            .filter(|i| cluster.members[*i].is_running())
            .collect();
        let at = leaders.iter().position(|(_, me)| *me == leader).unwrap();
        Ok::<usize, String>(running[at])
    })
    .await
}
