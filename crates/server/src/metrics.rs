//! The metrics and health endpoint (etcd's `--listen-metrics-urls`): plain HTTP/1.1 with
//! `GET /metrics` in the Prometheus text format and `GET /health`.
//!
//! Metric names follow etcd's, so that dashboards and alerts written for etcd read them: the
//! disk histograms of `chorus_storage::metrics` (process-wide), and this member's Raft state,
//! read from the driver's status at each scrape.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use prometheus::{Encoder, IntGauge, Registry, TextEncoder};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::node::{NodeHandle, NodeStatus};

/// This member's gauges, in a registry of their own (several members may share a process).
struct MemberGauges {
    registry: Registry,
    has_leader: IntGauge,
    is_leader: IntGauge,
    committed: IntGauge,
    applied: IntGauge,
    term: IntGauge,
}

impl MemberGauges {
    fn new() -> MemberGauges {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| {
            let gauge = IntGauge::new(name, help).expect("a valid gauge");
            registry
                .register(Box::new(gauge.clone()))
                .expect("each name is registered once");
            gauge
        };
        MemberGauges {
            has_leader: gauge(
                "etcd_server_has_leader",
                "Whether or not a leader exists. 1 is existence, 0 is not.",
            ),
            is_leader: gauge(
                "etcd_server_is_leader",
                "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            ),
            committed: gauge(
                "etcd_server_proposals_committed_total",
                "The total number of consensus proposals committed.",
            ),
            applied: gauge(
                "etcd_server_proposals_applied_total",
                "The total number of consensus proposals applied.",
            ),
            term: gauge("etcd_server_term", "The current term of this member."),
            registry,
        }
    }

    fn set(&self, status: &NodeStatus, member: chorus_raft::NodeId) {
        self.has_leader.set(i64::from(status.leader.is_some()));
        self.is_leader.set(i64::from(status.leader == Some(member)));
        self.committed.set(gauge_value(status.commit.get()));
        self.applied.set(gauge_value(status.applied.get()));
        self.term.set(gauge_value(status.term.get()));
    }
}

fn gauge_value(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The text of `GET /metrics`: the process's metrics and this member's.
fn render(gauges: &MemberGauges, node: &NodeHandle) -> Vec<u8> {
    gauges.set(&node.status(), node.member_id);
    let mut families = prometheus::gather();
    families.extend(gauges.registry.gather());
    families.sort_by(|a, b| a.name().cmp(b.name()));
    let mut text = Vec::new();
    // Encoding into a Vec fails only on a malformed family, which these are not.
    if let Err(error) = TextEncoder::new().encode(&families, &mut text) {
        tracing::warn!(%error, "could not encode the metrics");
    }
    text
}

fn respond(
    gauges: &MemberGauges,
    node: &NodeHandle,
    request: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &'static str, body: Vec<u8>| {
        Response::builder()
            .status(status)
            .header(hyper::header::CONTENT_TYPE, content_type)
            .body(Full::new(Bytes::from(body)))
            .expect("a valid response")
    };
    if request.method() != Method::GET {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            b"Method Not Allowed\n".to_vec(),
        );
    }
    match request.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            render(gauges, node),
        ),
        // etcd's answer shape; a member without a leader cannot serve linearizable requests.
        "/health" => match node.status().leader {
            Some(_) => reply(
                StatusCode::OK,
                "application/json",
                br#"{"health":"true","reason":""}"#.to_vec(),
            ),
            None => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "application/json",
                br#"{"health":"false","reason":"RAFT NO LEADER"}"#.to_vec(),
            ),
        },
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            b"404 page not found\n".to_vec(),
        ),
    }
}

/// Serves `/metrics` and `/health` on `listener` until `stop` turns true.
pub async fn serve(listener: TcpListener, node: NodeHandle, mut stop: watch::Receiver<bool>) {
    let gauges = std::sync::Arc::new(MemberGauges::new());
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s) => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors, or a connection gone before it was accepted: the
                // member serves on, and the scraper asks again.
                tracing::warn!(%error, "could not accept a metrics connection");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let (gauges, node) = (gauges.clone(), node.clone());
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let response = respond(&gauges, &node, &request);
            async move { Ok::<_, Infallible>(response) }
        });
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let connection =
                hyper::server::conn::http1::Builder::new().serve_connection(io, service);
            tokio::select! {
                result = connection => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "metrics connection ended");
                    }
                }
                _ = stop.wait_for(|s| *s) => {}
            }
        });
    }
}
