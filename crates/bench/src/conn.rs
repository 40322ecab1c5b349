//! The load generator's HTTP/2 connections.
//!
//! A [`Connection`] hands each request straight to hyper's handle of one HTTP/2 connection,
//! which every client on it shares. tonic's `Channel` would put a queue and a worker task in
//! front of the connection (its `Buffer`), so that each request crossed one more task: about a
//! seventh of the generator's CPU in a read benchmark. Less CPU spent by the generator leaves
//! more of the shared cores to the servers under test, whichever they are.
//!
//! A connection does not reconnect: once it fails, its requests fail and are counted as errors,
//! which is what a benchmark should report.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use chorus_server::coalesce::CoalescedWrites;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::codegen::http::{Request, Response, Uri};

/// How long opening a connection (the TCP connect and the HTTP/2 handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One HTTP/2 connection to an endpoint, shared by cloning. Its writes coalesce (see
/// [`CoalescedWrites`]): the requests its clients send together leave in one `writev`.
#[derive(Clone, Debug)]
pub(crate) struct Connection {
    send: SendRequest<Body>,
    origin: Uri,
}

impl Connection {
    /// Connects to `url` (`http://host:port`).
    pub(crate) async fn open(url: &str) -> anyhow::Result<Connection> {
        let origin = parse_endpoint(url)?;
        let authority = origin.authority().expect("checked by parse_endpoint");
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(80);
        let opening = async {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
                .await
                .with_context(|| format!("resolve {host}"))?
                .collect();
            let tcp = TcpStream::connect(&addrs[..])
                .await
                .with_context(|| format!("connect to {url}"))?;
            tcp.set_nodelay(true)
                .with_context(|| format!("set TCP_NODELAY on the connection to {url}"))?;
            let io = TokioIo::new(CoalescedWrites::new(tcp));
            hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                .handshake(io)
                .await
                .with_context(|| format!("HTTP/2 handshake with {url}"))
        };
        let (send, connection) = tokio::time::timeout(CONNECT_TIMEOUT, opening)
            .await
            .with_context(|| format!("connect to {url}: no answer in {CONNECT_TIMEOUT:?}"))??;
        // The connection's own task reads and writes its frames; it ends with the connection,
        // and the requests then in flight fail with the error.
        tokio::spawn(connection);
        Ok(Connection { send, origin })
    }

    /// The scheme and authority the gRPC clients put in each request.
    pub(crate) fn origin(&self) -> Uri {
        self.origin.clone()
    }
}

/// The URL of an endpoint: `http`, a host and no path.
fn parse_endpoint(url: &str) -> anyhow::Result<Uri> {
    let uri: Uri = url
        .parse()
        .with_context(|| format!("invalid endpoint {url}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(scheme) => anyhow::bail!(
            "endpoint {url}: the scheme {scheme} is not supported (the load generator speaks \
             plain http)"
        ),
        None => anyhow::bail!("endpoint {url}: give the scheme, as in http://{url}"),
    }
    anyhow::ensure!(
        uri.authority().is_some_and(|a| !a.host().is_empty()),
        "endpoint {url}: no host"
    );
    anyhow::ensure!(
        matches!(uri.path(), "" | "/") && uri.query().is_none(),
        "endpoint {url}: an endpoint has no path"
    );
    Ok(uri)
}

impl Service<Request<Body>> for Connection {
    type Response = Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.send.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        Box::pin(self.send.send_request(request))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: an endpoint the generator cannot use is refused with a message that names it.
    #[test]
    fn endpoints_are_checked() {
        let ok = parse_endpoint("http://127.0.0.1:2379").expect("valid");
        assert_eq!(ok.authority().map(|a| a.as_str()), Some("127.0.0.1:2379"));
        assert!(parse_endpoint("http://[::1]:2379").is_ok());
        for (url, expected) in [
            ("127.0.0.1:2379", "give the scheme"),
            (
                "https://127.0.0.1:2379",
                "the scheme https is not supported",
            ),
            ("http://127.0.0.1:2379/v3", "no path"),
            ("http://", "invalid endpoint"),
            ("not a url", "invalid endpoint"),
        ] {
            let error = format!("{:#}", parse_endpoint(url).expect_err(url));
            assert!(error.contains(expected), "{url}: {error}");
        }
    }

    // Goal: nothing listening is an error naming the endpoint, not a hang.
    #[tokio::test]
    async fn a_refused_connection_is_an_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let url = format!("http://{addr}");
        let error = format!("{:#}", Connection::open(&url).await.expect_err("refused"));
        assert!(error.contains(&url), "{error}");
    }
}
