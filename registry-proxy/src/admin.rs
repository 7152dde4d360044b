//! The node's admin API on a unix socket, its client ([`fetch_status`], [`deliver_orders`], …), and the Prometheus `/metrics`
//! endpoint. Admin routes:
//! - `GET /status`: what `ferry status` shows;
//! - `POST /prewarm/orders`: signed orders (JSON list) to deliver; answers a [`Delivery`] each;
//! - `POST /prewarm/progress`: [`ProgressQuery`]s; answers a [`Report`] each;
//! - `GET /prewarm/status`: a [`Report`] of this node and each named peer.

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
use crate::prewarm::{Delivery, Orders, ProgressQuery, Report};
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
    /// Bytes the mounted lazy layers keep on local disk, outside the store's capacity.
    #[serde(default)]
    pub cache_bytes: u64,
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
            cache_bytes: s.cache_bytes.load(Relaxed),
            fallbacks: p2p_node::layers::Fallback::ALL.iter().map(|f| (f.as_str().to_string(), s.fallbacks(*f))).collect(),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct P2pStatus {
    pub peer_id: String,
    pub region: String,
    #[serde(default)]
    pub zone: String,
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
    pub prewarm: Option<Arc<Orders>>,
}

/// The largest admin request body (a plan's signed orders).
const MAX_ADMIN_BODY: usize = 16 << 20;

impl AdminState {
    pub async fn status(&self) -> Status {
        let p2p = match &self.swarm {
            Some(s) => Some(P2pStatus {
                peer_id: s.peer_id().to_string(),
                region: s.region().to_string(),
                zone: s.zone().to_string(),
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
        let route = (req.method().clone(), req.uri().path().to_string());
        match (route.0, route.1.as_str()) {
            (http::Method::GET, "/status") => json(&self.status().await),
            (method, path) if path.starts_with("/prewarm/") => {
                let Some(orders) = self.prewarm.clone() else {
                    return reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", b"this node takes no prewarm orders\n".to_vec());
                };
                match (method, path) {
                    (http::Method::GET, "/prewarm/status") => json(&orders.site().await),
                    (http::Method::POST, "/prewarm/orders") => match read_json::<Vec<p2p_node::prewarm::order::SignedOrder>>(req).await {
                        Ok(list) => {
                            let deliveries: Vec<Delivery> =
                                futures_util::future::join_all(list.into_iter().map(|s| orders.deliver(s))).await;
                            json(&deliveries)
                        }
                        Err(r) => r,
                    },
                    (http::Method::POST, "/prewarm/progress") => match read_json::<Vec<ProgressQuery>>(req).await {
                        Ok(queries) => {
                            let reports: Vec<Report> = futures_util::future::join_all(queries.into_iter().map(|q| orders.report(q))).await;
                            json(&reports)
                        }
                        Err(r) => r,
                    },
                    _ => reply(StatusCode::NOT_FOUND, "text/plain", b"not found: try POST /prewarm/orders\n".to_vec()),
                }
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

/// `value` as a JSON reply.
fn json(value: &impl serde::Serialize) -> Response<Body> {
    reply(StatusCode::OK, "application/json", serde_json::to_vec_pretty(value).unwrap_or_default())
}

/// The request's JSON body (at most [`MAX_ADMIN_BODY`]), or the error reply.
async fn read_json<T: serde::de::DeserializeOwned>(req: http::Request<Incoming>) -> Result<T, Response<Body>> {
    let bad = |why: String| reply(StatusCode::BAD_REQUEST, "text/plain", format!("{why}\n").into_bytes());
    let body = http_body_util::Limited::new(req.into_body(), MAX_ADMIN_BODY)
        .collect()
        .await
        .map_err(|e| bad(format!("reading the request body: {e}")))?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| bad(format!("malformed request body: {e}")))
}

fn reply(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Body> {
    let mut r = Response::new(full(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
    r
}

/// Asks the node behind `socket` for its status.
pub async fn fetch_status(socket: &Path) -> Result<Status, Error> {
    call(socket, http::Method::GET, "/status", None::<&()>).await
}

/// Hands signed orders to the node behind `socket`, which delivers each to its node.
pub async fn deliver_orders(socket: &Path, orders: &[p2p_node::prewarm::order::SignedOrder]) -> Result<Vec<Delivery>, Error> {
    call(socket, http::Method::POST, "/prewarm/orders", Some(&orders)).await
}

/// How the orders in `queries` are going, as their nodes say.
pub async fn order_progress(socket: &Path, queries: &[ProgressQuery]) -> Result<Vec<Report>, Error> {
    call(socket, http::Method::POST, "/prewarm/progress", Some(&queries)).await
}

/// Every order of the node behind `socket` and of its named peers.
pub async fn prewarm_status(socket: &Path) -> Result<Vec<Report>, Error> {
    call(socket, http::Method::GET, "/prewarm/status", None::<&()>).await
}

/// Calls the admin API behind `socket`: `body` sent as JSON, the answer read as JSON.
async fn call<T: serde::de::DeserializeOwned>(
    socket: &Path,
    method: http::Method,
    path: &str,
    body: Option<&impl serde::Serialize>,
) -> Result<T, Error> {
    let io_err = |what: &str, e: std::io::Error| Error::Io { what: format!("{what} {}", socket.display()), source: e };
    let other = |what: &str, e: &dyn std::fmt::Display| io_err(what, std::io::Error::other(e.to_string()));
    let stream = tokio::net::UnixStream::connect(socket).await.map_err(|e| io_err("connecting to the admin socket", e))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| other("talking to", &e))?;
    tokio::spawn(conn);
    let body = match body {
        Some(b) => Bytes::from(serde_json::to_vec(b).map_err(|e| other("encoding a request for", &e))?),
        None => Bytes::new(),
    };
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, "ferry")
        .header(header::CONTENT_TYPE, "application/json")
        .body(http_body_util::Full::new(body))
        .map_err(|e| other("building a request for", &e))?;
    let resp = sender.send_request(req).await.map_err(|e| other(&format!("requesting {path} from"), &e))?;
    let status = resp.status();
    let body = resp.into_body().collect().await.map_err(|e| other(&format!("reading {path} from"), &e))?.to_bytes();
    if !status.is_success() {
        let text = String::from_utf8_lossy(&body);
        return Err(other(&format!("{path}: {status}: {} from", text.trim()), &""));
    }
    serde_json::from_slice(&body).map_err(|e| other(&format!("decoding {path} from"), &e))
}
