//! The client API (etcd's gRPC services and Chorus's lock and election) served over HTTP/2 by
//! hyper directly.
//!
//! tonic's `Server` takes every request through a router (axum's: it matches the path and
//! allocates the parameters it found) and a stack of tower layers: load shedding, a
//! concurrency limit, a timeout read from the request's `grpc-timeout`, error recovery and
//! the connection's details, each a future wrapping the next. The client API configures none
//! of them. Here hyper's HTTP/2 server serves each connection, and a request goes straight to
//! the service its path names; the generated service matches the method itself. A client's
//! deadline is still kept: the client ends its stream when the deadline passes, and hyper then
//! drops the request's future, which cancels the request here.
//!
//! Every accepted connection is wrapped so that requests whose `:authority` is a URL are served
//! ([`crate::authority`]) and so that responses that become ready together leave in one write
//! ([`crate::coalesce`]). A connection's request streams run on the connection's own task, not
//! as a task each (`streams`). A stop ends each connection gracefully: HTTP/2's GOAWAY, then the
//! requests already started run to their end.

use std::convert::Infallible;
use std::time::Duration;

use chorus_proto::etcdserverpb::cluster_server::{self, ClusterServer};
use chorus_proto::etcdserverpb::kv_server::{self, KvServer};
use chorus_proto::etcdserverpb::lease_server::{self, LeaseServer};
use chorus_proto::etcdserverpb::maintenance_server::{self, MaintenanceServer};
use chorus_proto::etcdserverpb::watch_server::{self, WatchServer};
use chorus_proto::v3electionpb::election_server::{self, ElectionServer};
use chorus_proto::v3lockpb::lock_server::{self, LockServer};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::codegen::{BoxFuture, Service as _};

use crate::authority::UrlAuthority;
use crate::cluster::ClusterService;
use crate::coalesce::CoalescedWrites;
use crate::coordination::{ElectionService, LockService};
use crate::lease::LeaseService;
use crate::service::{KvService, MaintenanceService};
use crate::watch::WatchService;
use streams::{StreamExecutor, Streams};

mod streams;

type Response = http::Response<tonic::body::Body>;

/// The services of the client API, one of each per listener.
#[derive(Clone)]
pub struct ClientApi {
    pub kv: KvServer<KvService>,
    pub lease: LeaseServer<LeaseService>,
    pub watch: WatchServer<WatchService>,
    pub maintenance: MaintenanceServer<MaintenanceService>,
    pub cluster: ClusterServer<ClusterService>,
    pub lock: LockServer<LockService>,
    pub election: ElectionServer<ElectionService>,
}

impl hyper::service::Service<http::Request<Incoming>> for ClientApi {
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<Response, Infallible>;

    fn call(&self, request: http::Request<Incoming>) -> Self::Future {
        // A gRPC path is `/{package}.{Service}/{Method}`.
        let service = request
            .uri()
            .path()
            .strip_prefix('/')
            .and_then(|path| path.split_once('/'))
            .map_or("", |(service, _)| service);
        match service {
            kv_server::SERVICE_NAME => self.kv.clone().call(request),
            lease_server::SERVICE_NAME => self.lease.clone().call(request),
            watch_server::SERVICE_NAME => self.watch.clone().call(request),
            maintenance_server::SERVICE_NAME => self.maintenance.clone().call(request),
            cluster_server::SERVICE_NAME => self.cluster.clone().call(request),
            lock_server::SERVICE_NAME => self.lock.clone().call(request),
            election_server::SERVICE_NAME => self.election.clone().call(request),
            _ => {
                let status = tonic::Status::unimplemented(format!(
                    "unknown service {}",
                    request.uri().path()
                ));
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

/// Serves the client API on `listener` until `stop` turns true, then ends every connection
/// gracefully and returns once they all have.
pub async fn serve(listener: TcpListener, api: ClientApi, mut stop: watch::Receiver<bool>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            // Reap the connections that ended, so the set does not grow with every client.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            _ = stop.wait_for(|s| *s) => break,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(error) => {
                // Out of file descriptors, or a connection reset before it was accepted: the
                // member serves on.
                tracing::warn!(%error, "could not accept a client connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "could not set TCP_NODELAY on a client connection");
        }
        let io = TokioIo::new(UrlAuthority::new(CoalescedWrites::new(tcp)));
        let mut streams = Streams::default();
        let connection = http2(streams.executor()).serve_connection(io, api.clone());
        let mut stop = stop.clone();
        connections.spawn(async move {
            tokio::pin!(connection);
            let served = tokio::select! {
                ended = streams.serve(connection.as_mut()) => Some(ended),
                _ = stop.wait_for(|s| *s) => None,
            };
            let ended = match served {
                Some(ended) => ended,
                None => {
                    connection.as_mut().graceful_shutdown();
                    streams.serve(connection).await
                }
            };
            streams.detach();
            if let Err(error) = ended {
                tracing::debug!(%error, "client connection ended");
            }
        });
    }
    while connections.join_next().await.is_some() {}
}

/// The HTTP/2 server of one connection, whose request streams `executor` runs (see
/// `streams`).
fn http2(executor: StreamExecutor) -> hyper::server::conn::http2::Builder<StreamExecutor> {
    let mut http2 = hyper::server::conn::http2::Builder::new(executor);
    // The timer serves hyper's keep-alive pings and its header read timeout.
    http2.timer(TokioTimer::new());
    // gRPC has no use for a `date` header on every response.
    http2.auto_date_header(false);
    http2
}

#[cfg(test)]
mod tests;
