//! A member running inside the calling process: for examples, doctests and the tests of code
//! built on Chorus that want a real server without managing a process.
//!
//! [`LocalMember::start`] runs a single-member cluster on loopback ports chosen by the
//! operating system, with its data in a temporary directory that is removed when the member is
//! dropped. It is the same member `chorus serve` runs (WAL, fsync, gRPC over TCP); only its
//! lifetime is tied to a value instead of a process.
//!
//! ```
//! # #[tokio::main(flavor = "multi_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let member = chorus_server::local::LocalMember::start().await?;
//! assert!(member.endpoint().starts_with("http://127.0.0.1:"));
//! member.stop().await?;
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use chorus_proto::etcdserverpb as pb;
use pb::maintenance_client::MaintenanceClient;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::member::MemberError;
use crate::{ServerArgs, ServerConfig};

/// How long [`LocalMember::start`] waits for the member to elect itself.
const LEADER_WAIT: Duration = Duration::from_secs(10);

/// Attempts at starting, each with freshly chosen ports (another process may take a port
/// between choosing it and binding it).
const START_ATTEMPTS: usize = 3;

/// A single-member cluster served from this process. Dropping it ends the member abruptly (as
/// a crash would, nothing is flushed); [`LocalMember::stop`] stops it gracefully and reports
/// the outcome.
#[derive(Debug)]
pub struct LocalMember {
    endpoint: String,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), MemberError>>>,
    // Declared last: the directory is removed after the member above stopped using it.
    dir: tempfile::TempDir,
}

impl LocalMember {
    /// Starts the member and returns once it serves clients and leads its cluster. Must be
    /// called inside a multi-threaded Tokio runtime.
    pub async fn start() -> Result<LocalMember, MemberError> {
        let mut last = None;
        for _ in 0..START_ATTEMPTS {
            match Self::start_once().await {
                Ok(member) => return Ok(member),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one attempt"))
    }

    /// The client URL, e.g. `http://127.0.0.1:40123`, for any etcd v3 client.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The member's data directory.
    pub fn data_dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Stops the member gracefully and removes its data.
    pub async fn stop(mut self) -> Result<(), MemberError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.map_err(|e| MemberError {
                context: "stop the member".to_string(),
                detail: e.to_string(),
            })?,
            None => Ok(()),
        }
    }

    async fn start_once() -> Result<LocalMember, MemberError> {
        let setup = |detail: String| MemberError {
            context: "start a local member".to_string(),
            detail,
        };
        let dir = tempfile::tempdir().map_err(|e| setup(e.to_string()))?;
        let (client, peer) = (
            free_port().map_err(|e| setup(e.to_string()))?,
            free_port().map_err(|e| setup(e.to_string()))?,
        );
        let endpoint = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let args = ServerArgs {
            name: Some("local".to_string()),
            data_dir: Some(dir.path().join("local.chorus")),
            listen_client_urls: Some(endpoint.clone()),
            advertise_client_urls: Some(endpoint.clone()),
            listen_peer_urls: Some(peer_url.clone()),
            initial_advertise_peer_urls: Some(peer_url.clone()),
            initial_cluster: Some(format!("local={peer_url}")),
            // A short election timeout: the lone member elects itself quickly.
            heartbeat_interval: Some(20),
            election_timeout: Some(200),
            ..ServerArgs::default()
        };
        let config = ServerConfig::resolve(&args, &HashMap::new(), None)
            .map_err(|e| setup(e.to_string()))?;
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (bound_tx, bound_rx) = oneshot::channel();
        let mut task = tokio::spawn(crate::member::run_with(
            config,
            async move {
                let _ = stop_rx.await;
            },
            move |bound| {
                let _ = bound_tx.send(bound);
            },
        ));
        tokio::select! {
            bound = bound_rx => {
                if bound.is_err() {
                    // The member ended before binding: its error says why.
                    return Err(match (&mut task).await {
                        Ok(Err(e)) => e,
                        Ok(Ok(())) => setup("the member stopped before serving".to_string()),
                        Err(e) => setup(e.to_string()),
                    });
                }
            }
            ended = &mut task => {
                return Err(match ended {
                    Ok(Err(e)) => e,
                    Ok(Ok(())) => setup("the member stopped before serving".to_string()),
                    Err(e) => setup(e.to_string()),
                });
            }
        }
        let member = LocalMember {
            endpoint,
            stop: Some(stop_tx),
            task: Some(task),
            dir,
        };
        member.wait_for_leader().await?;
        Ok(member)
    }

    async fn wait_for_leader(&self) -> Result<(), MemberError> {
        let failed = |detail: String| MemberError {
            context: "wait for the local member to lead".to_string(),
            detail,
        };
        let channel = tonic::transport::Endpoint::from_shared(self.endpoint.clone())
            .map_err(|e| failed(e.to_string()))?
            .connect_lazy();
        let mut maintenance = MaintenanceClient::new(channel);
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            if let Ok(status) = maintenance.status(pb::StatusRequest {}).await
                && status.get_ref().leader != 0
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(failed(format!("no leader after {LEADER_WAIT:?}")));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for LocalMember {
    fn drop(&mut self) {
        // Not stopped with `stop`: end the member at once, before its directory goes.
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The loopback ports [`free_port`] chooses from: below Linux's default ephemeral range
/// (32768-60999), from which the kernel picks the local port of every outgoing connection. A
/// port the kernel chose for a listener on port 0 may be handed to an outgoing connection before
/// the server binds it; a port outside that range cannot be.
const PORTS: std::ops::Range<u32> = 20_000..32_000;

/// A loopback port that was free a moment ago, for a server about to bind it. Successive calls
/// in one process never return the same port until the range is exhausted, and processes start
/// at different places in it, so that servers started side by side (tests running in parallel)
/// do not choose the same port.
pub fn free_port() -> std::io::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = PORTS.end - PORTS.start;
    let start = std::process::id().wrapping_mul(2_654_435_761) % span;
    for _ in 0..span {
        // 7919 is prime and does not divide the span: the steps visit every port once.
        let step = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = PORTS.start + (start + step.wrapping_mul(7_919) % span) % span;
        let port = u16::try_from(port).expect("the range is below 65536");
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("no free loopback port in {PORTS:?}"),
    ))
}
