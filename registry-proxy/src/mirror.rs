//! The mirror endpoint's handlers: one function per [`Route`], errors answered in the OCI error
//! format exactly once, at [`Mirror::handle`].

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};

use crate::fetcher::Fetcher;
use crate::manifests::Manifests;
use crate::metrics::{KindLabel, Metrics, RequestLabel};
use crate::names::{ByteRange, Reference, Repo};
use crate::route::{Request, Route};
use crate::serve::Body;
use crate::upstream::Upstreams;
use crate::Error;

pub struct Mirror {
    pub upstreams: Upstreams,
    pub fetcher: Arc<Fetcher>,
    pub manifests: Manifests,
    pub metrics: Arc<Metrics>,
    /// Indexes image layers for the snapshotter, when it is on.
    pub layer_index: Option<crate::layer_index::LayerIndex>,
}

/// Request header by which a client of a byte range says it verifies what it reads (value
/// `chunks`), so bytes from peers may reach it before the whole blob is verified.
pub const CLIENT_VERIFIES: &str = "x-ferry-client-verifies";

impl Mirror {
    pub async fn handle(self: Arc<Self>, req: http::Request<Incoming>) -> Response<Body> {
        let started = Instant::now();
        let parsed = Request::parse(req.method(), req.uri());
        let kind = match &parsed {
            Ok(Request { route: Route::Blob { .. }, .. }) => "blob",
            Ok(Request { route: Route::Manifest { .. }, .. }) => "manifest",
            Ok(Request { route: Route::Base, .. }) => "base",
            Err(_) => "invalid",
        };
        let result = match parsed {
            Ok(r) => self.dispatch(r, req.headers()).await,
            Err(e) => Err(e),
        };
        let resp = result.unwrap_or_else(|e| {
            let (status, _) = e.oci();
            if status >= 500 {
                tracing::warn!(method = %req.method(), uri = %req.uri(), error = %e, "request failed");
            } else {
                tracing::debug!(method = %req.method(), uri = %req.uri(), error = %e, "request refused");
            }
            error_response(&e)
        });
        self.metrics.requests.get_or_create(&RequestLabel { kind, status: resp.status().as_u16() }).inc();
        self.metrics.request_duration.get_or_create(&KindLabel { kind }).observe(started.elapsed().as_secs_f64());
        resp
    }

    async fn dispatch(&self, req: Request, headers: &http::HeaderMap) -> Result<Response<Body>, Error> {
        match req.route {
            Route::Base => Ok(base_response(StatusCode::OK).body(full(Bytes::from_static(b"{}"))).map_err(internal)?),
            Route::Manifest { name, reference } => self.manifest(req.ns.as_deref(), &name, &reference, req.head).await,
            Route::Blob { name, digest } => {
                // Validate the Range before anything goes upstream.
                let range = match headers.get(header::RANGE) {
                    Some(v) => Some(ByteRange::parse(v.to_str().map_err(|_| Error::RangeInvalid("<non-ASCII>".into(), "not ASCII"))?)?),
                    None => None,
                };
                let up = self.upstreams.select(req.ns.as_deref())?;
                if req.head {
                    let (size, cached) = self.fetcher.head(&up, &name, &digest).await?;
                    let b = blob_head(StatusCode::OK, size, &digest, cached);
                    return b.body(empty()).map_err(internal);
                }
                // A client that checks what it reads itself (the snapshotter: every chunk against
                // the TOC) may take peer bytes before the whole blob is verified.
                let client_verifies = range.is_some() && headers.get(CLIENT_VERIFIES).is_some_and(|v| v == "chunks");
                self.blob(up, &name, digest, range, client_verifies).await
            }
        }
    }

    async fn manifest(&self, ns: Option<&str>, name: &Repo, reference: &Reference, head: bool) -> Result<Response<Body>, Error> {
        let up = self.upstreams.select(ns)?;
        let m = match (self.manifests.get(&up, name, reference).await, reference) {
            // The origin is down: a manifest named by digest can come from peers, verified by it.
            (Err(e), Reference::Digest(d)) if e.is_upstream_failure() && self.fetcher.has_peers() => {
                tracing::info!(%name, digest = %d, error = %e, "the origin failed; asking peers for the manifest");
                self.fetcher.fetch_small(&up, name, d, crate::upstream::MAX_MANIFEST).await.map_err(|_| e)?;
                self.manifests.adopt(d)?
            }
            (result, _) => result?,
        };
        if let Some(layers) = &self.layer_index {
            if let Err(e) = layers.index(&self.fetcher, &up, name, m.digest, &m.bytes).await {
                tracing::info!(%name, manifest = %m.digest, error = %e, "cannot index the image's layers for the snapshotter");
            }
        }
        let b = base_response(StatusCode::OK)
            .header(header::CONTENT_TYPE, header_value(&m.media_type))
            .header(header::CONTENT_LENGTH, m.bytes.len())
            .header("docker-content-digest", header_value(&m.digest.to_string()))
            .header("x-ferry-source", m.source);
        if !head {
            self.metrics.served(m.source, m.bytes.len() as u64);
        }
        b.body(if head { empty() } else { full(m.bytes) }).map_err(internal)
    }

    async fn blob(
        &self,
        up: Arc<crate::upstream::Upstream>,
        name: &Repo,
        digest: p2p_node::Digest,
        range: Option<ByteRange>,
        client_verifies: bool,
    ) -> Result<Response<Body>, Error> {
        let blob = self.fetcher.open(&up, name, &digest, range.is_none()).await?;
        self.metrics.hit("blob", blob.cached);
        let size = blob.size;
        let cached = blob.cached;
        let (status, bytes) = match range {
            Some(r) => (StatusCode::PARTIAL_CONTENT, r.resolve(size)?),
            None => (StatusCode::OK, 0..size),
        };
        let mut b = blob_head(status, bytes.end - bytes.start, &digest, cached);
        if status == StatusCode::PARTIAL_CONTENT {
            b = b.header(header::CONTENT_RANGE, format!("bytes {}-{}/{size}", bytes.start, bytes.end - 1));
        }
        if bytes.is_empty() {
            return b.body(empty()).map_err(internal);
        }
        // Wait for the first chunk before answering, so a failure before any byte is a clean error.
        let mut rx = self.fetcher.stream(blob, bytes, range.is_none(), client_verifies);
        let first = match rx.recv().await {
            Some(Ok(first)) => first,
            Some(Err(e)) => return Err(e),
            None => {
                return Err(Error::Io {
                    what: format!("streaming {digest}"),
                    source: std::io::Error::other("stream ended before any byte"),
                })
            }
        };
        let rest = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item.map(Frame::data), rx)) });
        let stream = futures_util::stream::once(async move { Ok(Frame::data(first)) });
        let body = StreamBody::new(futures_util::StreamExt::chain(stream, rest));
        b.body(BodyExt::boxed(body)).map_err(internal)
    }
}

impl Mirror {
    /// Carries out the fetch orders of peers: each names a piece of a segment this node owns.
    /// Only allow-listed registries are fetched from, with this node's own access.
    pub async fn carry_out(
        self: Arc<Self>,
        mut orders: tokio::sync::mpsc::Receiver<p2p_node::swarm::FetchOrder>,
        cancel: tokio_util::sync::CancellationToken,
    ) {
        loop {
            let order = tokio::select! {
                o = orders.recv() => match o { Some(o) => o, None => return },
                () = cancel.cancelled() => return,
            };
            let me = self.clone();
            tokio::spawn(async move {
                let up = me.upstreams.select(Some(&order.origin.registry));
                let name = Repo::parse(&order.origin.repo);
                let result = match (up, name) {
                    (Ok(up), Ok(name)) => me.fetcher.fetch_for_peer(&up, &name, &order.digest, order.index, order.origin.size).await,
                    (Err(e), _) | (_, Err(e)) => Err(e),
                };
                if let Err(e) = result {
                    tracing::info!(peer = %order.from, digest = %order.digest, error = %e, "cannot fetch a piece for a peer");
                }
            });
        }
    }
}

fn blob_head(status: StatusCode, len: u64, digest: &p2p_node::Digest, cached: bool) -> http::response::Builder {
    base_response(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, len)
        .header(header::ACCEPT_RANGES, "bytes")
        .header("docker-content-digest", header_value(&digest.to_string()))
        .header("x-ferry-source", if cached { "cache" } else { "origin" })
}

fn base_response(status: StatusCode) -> http::response::Builder {
    Response::builder().status(status).header("docker-distribution-api-version", "registry/2.0")
}

fn header_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"))
}

pub fn full(b: Bytes) -> Body {
    Full::new(b).map_err(|never| match never {}).boxed()
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

fn internal(e: http::Error) -> Error {
    Error::Io { what: "building a response".into(), source: std::io::Error::other(e) }
}

/// The OCI error JSON for `e`, with its status.
pub fn error_response(e: &Error) -> Response<Body> {
    let (status, code) = e.oci();
    let body = serde_json::json!({ "errors": [{ "code": code, "message": e.to_string(), "detail": null }] });
    let mut resp = Response::new(full(Bytes::from(body.to_string())));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.headers_mut().insert("docker-distribution-api-version", HeaderValue::from_static("registry/2.0"));
    resp
}
