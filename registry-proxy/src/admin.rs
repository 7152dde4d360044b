//! The node's admin API on a unix socket (`GET /status`), its client for `ferry status`, and the
//! Prometheus `/metrics` endpoint.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use p2p_node::store::{Store, Usage};

use crate::metrics::{Metrics, Traffic};
use crate::mirror::full;
use crate::serve::Body;
use crate::Error;

/// What `ferry status` shows.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Status {
    pub version: String,
    pub registry_listen: String,
    pub upstreams: Vec<String>,
    pub store: StoreStatus,
    pub traffic: Traffic,
    /// The node's place in its site's swarm (absent when P2P is off).
    #[serde(default)]
    pub p2p: Option<P2pStatus>,
    /// Blobs being fetched now.
    #[serde(default)]
    pub transfers: Vec<Transfer>,
    /// What lazily mounted layers did (absent when the snapshotter is off).
    #[serde(default)]
    pub lazy: Option<LazyStatus>,
}

/// The snapshotter's lazy layers (see the `ferry_lazy_*` metrics).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct LazyStatus {
    pub mounted: u64,
    pub fetched_bytes: u64,
    pub prefetched_bytes: u64,
    pub read_errors: u64,
    /// Layers unpacked instead of mounted, by reason.
    pub fallbacks: std::collections::BTreeMap<String, u64>,
}

impl LazyStatus {
    fn of(s: &p2p_node::layers::LazyStats) -> LazyStatus {
        use std::sync::atomic::Ordering::Relaxed;
        LazyStatus {
            mounted: s.mounted.load(Relaxed),
            fetched_bytes: s.bytes_fetched.load(Relaxed),
            prefetched_bytes: s.prefetched_bytes.load(Relaxed),
            read_errors: s.read_errors.load(Relaxed),
            fallbacks: p2p_node::layers::Fallback::ALL.iter().map(|f| (f.as_str().to_string(), s.fallbacks(*f))).collect(),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct P2pStatus {
    pub peer_id: String,
    pub region: String,
    pub peers: Vec<p2p_node::swarm::PeerInfo>,
    pub traffic: p2p_node::swarm::Traffic,
    #[serde(default)]
    pub bans: Vec<p2p_node::swarm::Ban>,
    /// Pieces fetched from the origin while peers were there, by reason (see the metric
    /// `ferry_peer_fallbacks_total`).
    #[serde(default)]
    pub fallbacks: std::collections::BTreeMap<String, u64>,
}

/// A blob being fetched: how much is here, and how much of that came from peers.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Transfer {
    pub digest: String,
    pub size: u64,
    pub present_bytes: u64,
    pub from_peers_bytes: u64,
    /// Peer bytes failed verification; the rest comes from the origin.
    pub repairing: bool,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StoreStatus {
    pub path: String,
    #[serde(flatten)]
    pub usage: Usage,
}

/// Everything the admin and metrics endpoints read.
pub struct AdminState {
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub registry_listen: String,
    pub upstreams: Vec<String>,
    pub swarm: Option<p2p_node::swarm::Client>,
    pub lazy: Option<Arc<p2p_node::layers::LazyStats>>,
}

impl AdminState {
    pub async fn status(&self) -> Status {
        let p2p = match &self.swarm {
            Some(s) => Some(P2pStatus {
                peer_id: s.peer_id().to_string(),
                region: s.region().to_string(),
                peers: s.peers().await.unwrap_or_default(),
                traffic: s.traffic(),
                bans: s.bans().await.unwrap_or_default(),
                fallbacks: self.metrics.fallbacks(),
            }),
            None => None,
        };
        let mut transfers: Vec<Transfer> = self
            .store
            .partials()
            .iter()
            .map(|p| Transfer {
                digest: p.digest().to_string(),
                size: p.size(),
                present_bytes: p.present_bytes(),
                from_peers_bytes: p.untrusted_bytes(),
                repairing: p.origin_only(),
            })
            .collect();
        transfers.sort_by(|a, b| a.digest.cmp(&b.digest));
        Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            registry_listen: self.registry_listen.clone(),
            upstreams: self.upstreams.clone(),
            store: StoreStatus { path: self.store.root().display().to_string(), usage: self.store.usage() },
            traffic: self.metrics.snapshot(),
            p2p,
            transfers,
            lazy: self.lazy.as_deref().map(LazyStatus::of),
        }
    }

    pub async fn handle_admin(self: Arc<Self>, req: http::Request<Incoming>) -> Response<Body> {
        match (req.method(), req.uri().path()) {
            (&http::Method::GET, "/status") => {
                let json = serde_json::to_vec_pretty(&self.status().await).unwrap_or_default();
                reply(StatusCode::OK, "application/json", json)
            }
            _ => reply(StatusCode::NOT_FOUND, "text/plain", b"not found: try GET /status\n".to_vec()),
        }
    }

    pub async fn handle_metrics(self: Arc<Self>, req: http::Request<Incoming>) -> Response<Body> {
        if req.uri().path() != "/metrics" {
            return reply(StatusCode::NOT_FOUND, "text/plain", b"not found: try GET /metrics\n".to_vec());
        }
        if let Some(s) = &self.swarm {
            self.metrics.sync_peers(s.traffic());
        }
        let u = self.store.usage();
        self.metrics.store_used.set(i64::try_from(u.used).unwrap_or(i64::MAX));
        self.metrics.store_capacity.set(i64::try_from(u.capacity).unwrap_or(i64::MAX));
        reply(StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", self.metrics.encode().into_bytes())
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(full(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    r
}

/// Asks the node behind `socket` for its status.
pub async fn fetch_status(socket: &Path) -> Result<Status, Error> {
    let io_err = |what: &str, e: std::io::Error| Error::Io { what: format!("{what} {}", socket.display()), source: e };
    let stream = tokio::net::UnixStream::connect(socket).await.map_err(|e| io_err("connecting to the admin socket", e))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| io_err("talking to", std::io::Error::other(e)))?;
    tokio::spawn(conn);
    let req = http::Request::get("/status")
        .header(header::HOST, "ferry")
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| io_err("building a request for", std::io::Error::other(e)))?;
    let resp = sender.send_request(req).await.map_err(|e| io_err("requesting status from", std::io::Error::other(e)))?;
    let body = resp.into_body().collect().await.map_err(|e| io_err("reading status from", std::io::Error::other(e)))?.to_bytes();
    serde_json::from_slice(&body).map_err(|e| io_err("decoding status from", std::io::Error::other(e)))
}
