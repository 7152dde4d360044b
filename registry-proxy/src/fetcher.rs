//! The Fetcher: gets blob bytes from the local store, else the site's peers, else the origin, and
//! streams them in order.
//!
//! A cold blob becomes a [`Partial`] in the store. Readers walk their byte range piece by piece:
//! a present piece is read from disk; a missing one that nobody fetches is claimed (together with
//! the rest of the reader's range) and fetched by a detached task — from peers and the origin
//! ([`crate::site`]) when the node has peers, else from the origin ([`Fill`]); a piece someone else
//! fetches is waited for. So N readers of one cold blob cause one fetch, the first byte goes out
//! long before the blob is complete, and memory holds at most a piece per fetch and a few chunks
//! per reader.
//!
//! What reaches a client: origin bytes as they arrive, but a whole-blob response holds back its
//! last piece until the store has verified the digest, so no client receives a complete body that
//! does not match it; bytes from peers only once the whole blob is verified (store and forward).
//!
//! With peers, a cold blob is not opened with a whole-blob GET but with a HEAD (the origin still
//! decides whether this node may have the blob); when the origin cannot be reached at all, the
//! size peers report is used and the blob comes from them alone.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use p2p_node::store::{Bitmap, BlobReader, Partial, RangeState, Store};
use p2p_node::Digest;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::buffers::{Pool, CHUNK};
use crate::failures::Failures;
use crate::fill::Fill;
use crate::metrics::Metrics;
use crate::names::Repo;
use crate::site::{size_from_peers, Ledger, SiteFill};
use crate::upstream::Upstream;
use crate::Error;

/// Chunks a reader may run ahead of its client.
const READ_AHEAD: usize = 2;

/// Where an opened blob's bytes are.
pub enum Source {
    Complete(Arc<BlobReader>),
    Partial(Arc<Partial>),
}

/// A blob ready to be read.
pub struct OpenBlob {
    pub digest: Digest,
    pub size: u64,
    /// True when the store already held the whole blob.
    pub cached: bool,
    source: Source,
    upstream: Arc<Upstream>,
    name: Repo,
    /// Pieces present when the blob was opened: bytes from them count as served from cache.
    present_at_open: Option<Bitmap>,
}

pub struct Fetcher {
    store: Store,
    metrics: Arc<Metrics>,
    piece_timeout: Duration,
    /// One cold open per digest at a time, so concurrent first requests share one upstream GET.
    opening: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
    failures: Arc<Failures>,
    tasks: TaskTracker,
    cancel: CancellationToken,
    buffers: Arc<Pool>,
    /// Told about every blob this node starts to cache, so peers can find it; asked for pieces.
    swarm: Option<p2p_node::swarm::Client>,
    ledger: Arc<Ledger>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Fetcher {
    pub fn new(
        store: Store,
        metrics: Arc<Metrics>,
        piece_timeout: Duration,
        tasks: TaskTracker,
        cancel: CancellationToken,
        swarm: Option<p2p_node::swarm::Client>,
    ) -> Fetcher {
        Fetcher {
            store,
            metrics,
            piece_timeout,
            opening: Mutex::default(),
            failures: Arc::default(),
            tasks,
            cancel,
            buffers: Arc::default(),
            swarm,
            ledger: Arc::default(),
        }
    }

    /// The store blobs are kept in.
    pub fn store(&self) -> Store {
        self.store.clone()
    }

    /// Whether this node takes part in a swarm.
    pub fn has_peers(&self) -> bool {
        self.swarm.is_some()
    }

    /// The blob's size, and whether the store has it whole, without fetching its bytes.
    pub async fn head(&self, up: &Upstream, name: &Repo, d: &Digest) -> Result<(u64, bool), Error> {
        match self.store.state(d) {
            p2p_node::store::BlobState::Complete { size } => return Ok((size, true)),
            p2p_node::store::BlobState::Partial { size, .. } => return Ok((size, false)),
            p2p_node::store::BlobState::Absent => {}
        }
        Ok((self.size_of_cold(up, name, d).await?, false))
    }

    /// Asks the origin for the size of a blob (HEAD); when the origin cannot be reached, the
    /// site's peers.
    async fn size_of_cold(&self, up: &Upstream, name: &Repo, d: &Digest) -> Result<u64, Error> {
        let head = match up.request(Method::HEAD, name, &format!("blobs/{d}"), HeaderMap::new()).await {
            Ok(resp) => {
                self.metrics.upstream("blob_head", resp.status().as_u16());
                self.expect_blob(up, name, d, &resp)
            }
            Err(e) => Err(e),
        };
        match (head, &self.swarm) {
            (Err(e), Some(swarm)) if e.is_upstream_failure() => match size_from_peers(swarm, *d).await {
                Some(size) => {
                    tracing::info!(digest = %d, error = %e, "the origin is unreachable; fetching the blob from peers");
                    Ok(size)
                }
                None => Err(e),
            },
            (result, _) => result,
        }
    }

    /// Opens a blob for reading. A cold blob wanted `whole` starts one upstream GET for all of it;
    /// a cold blob wanted for a range only learns its size (HEAD) and fetches pieces on demand.
    pub async fn open(&self, up: &Arc<Upstream>, name: &Repo, d: &Digest, whole: bool) -> Result<OpenBlob, Error> {
        let blob = |source: Source, size, cached| {
            let present_at_open = match &source {
                Source::Partial(p) => Some(p.present()),
                Source::Complete(_) => None,
            };
            OpenBlob { digest: *d, size, cached, source, upstream: up.clone(), name: name.clone(), present_at_open }
        };
        if let Some(r) = self.store.open_blob(d)? {
            let size = r.size();
            return Ok(blob(Source::Complete(Arc::new(r)), size, true));
        }
        if let Some(reason) = self.failures.bad_digest(d) {
            return Err(Error::UpstreamBad { upstream: up.host.clone(), what: format!("blob {d}"), reason });
        }
        if let Some(p) = self.store.partial(d) {
            return Ok(blob(Source::Partial(p.clone()), p.size(), false));
        }
        let waiting_since = Instant::now();
        let gate = lock(&self.opening).entry(*d).or_default().clone();
        let _one = gate.lock().await;
        // If the request we queued behind failed, fail with it rather than try again in turn.
        if let Some(reason) = self.failed_since(d, waiting_since) {
            return Err(Error::UpstreamUnreachable { upstream: up.host.clone(), what: format!("blob {d}"), reason });
        }
        let result = self.open_cold(up, name, d, whole).await;
        lock(&self.opening).remove(d);
        if let Err(e) = &result {
            if e.is_upstream_failure() {
                self.failures.record(*d, e);
            }
        }
        let source = result?;
        let size = size_of(&source);
        Ok(blob(source, size, false))
    }

    async fn open_cold(&self, up: &Arc<Upstream>, name: &Repo, d: &Digest, whole: bool) -> Result<Source, Error> {
        // Someone may have opened it while we waited for the gate.
        if let Some(r) = self.store.open_blob(d)? {
            return Ok(Source::Complete(Arc::new(r)));
        }
        if let Some(p) = self.store.partial(d) {
            return Ok(Source::Partial(p));
        }
        // With peers, the pieces are spread over the site: learn the size, not the bytes.
        let with_peers = match &self.swarm {
            Some(s) => !s.site_peers().await.unwrap_or_default().is_empty(),
            None => false,
        };
        let (size, mut resp) = if whole && !with_peers {
            let started = Instant::now();
            let resp = up.request(Method::GET, name, &format!("blobs/{d}"), HeaderMap::new()).await?;
            self.metrics.upstream("blob", resp.status().as_u16());
            (self.expect_blob(up, name, d, &resp)?, Some((resp, started)))
        } else {
            (self.size_of_cold(up, name, d).await?, None)
        };
        let store = self.store.clone();
        let digest = *d;
        let partial = tokio::task::spawn_blocking(move || store.begin(&digest, size)).await.map_err(join_error)??;
        let Some(partial) = partial else {
            let r = self.store.open_blob(d)?.ok_or_else(|| Error::UpstreamBad {
                upstream: up.host.clone(),
                what: format!("blob {d}"),
                reason: "empty blob does not match its digest".into(),
            })?;
            return Ok(Source::Complete(Arc::new(r)));
        };
        if let Some(s) = &self.swarm {
            if let Err(e) = s.provide(*d).await {
                tracing::warn!(digest = %d, error = %e, "cannot announce a blob to the swarm");
            }
        }
        if whole {
            if let RangeState::Claimed(runs) = partial.poll(0..size) {
                for run in runs {
                    // The GET that opened the blob serves only a run of all of it.
                    let resp = if run == (0..partial.piece_count()) { resp.take() } else { None };
                    self.spawn_fill(up.clone(), name.clone(), partial.clone(), run, resp, true);
                }
            }
        }
        Ok(Source::Partial(partial))
    }

    /// Checks a blob response's status and returns its size.
    fn expect_blob(&self, up: &Upstream, name: &Repo, d: &Digest, resp: &reqwest::Response) -> Result<u64, Error> {
        match resp.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Err(Error::BlobUnknown { upstream: up.host.clone(), name: name.to_string(), digest: *d }),
            s => return Err(up.status_error(format!("blob {d} of {name}"), s)),
        }
        resp.headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| Error::UpstreamBad { upstream: up.host.clone(), what: format!("blob {d}"), reason: "no Content-Length".into() })
    }

    /// Fetches a blob of at most `limit` bytes whole and waits until it is verified (manifests
    /// from peers while the origin is down).
    pub async fn fetch_small(&self, up: &Arc<Upstream>, name: &Repo, d: &Digest, limit: u64) -> Result<(), Error> {
        let blob = self.open(up, name, d, true).await?;
        if blob.size > limit {
            return Err(Error::UpstreamBad { upstream: up.host.clone(), what: format!("blob {d}"), reason: format!("over {limit} bytes") });
        }
        match &blob.source {
            Source::Complete(_) => Ok(()),
            Source::Partial(p) => self.wait_verified(&blob, &p.clone()).await,
        }
    }

    /// Fetches the segment holding piece `index` from the origin for a peer that asked this node,
    /// the segment's owner. The origin is asked for the blob's size first (HEAD): it decides
    /// whether this node may have the blob; the size the peer sent must agree.
    pub async fn fetch_for_peer(&self, up: &Arc<Upstream>, name: &Repo, d: &Digest, index: u32, size: u64) -> Result<(), Error> {
        let blob = self.open(up, name, d, false).await?;
        let Source::Partial(p) = &blob.source else { return Ok(()) };
        if blob.size != size || index >= p.piece_count() {
            return Err(Error::UpstreamBad {
                upstream: up.host.clone(),
                what: format!("blob {d}"),
                reason: format!("a peer asked for piece {index} of a {size}-byte blob; it is {} bytes", blob.size),
            });
        }
        let segment = p2p_node::swarm::site::segment_of(index) * p2p_node::swarm::site::SEGMENT_PIECES;
        let pieces = segment..(segment + p2p_node::swarm::site::SEGMENT_PIECES).min(p.piece_count());
        let bytes = p.piece_range(pieces.start).start..p.piece_range(pieces.end - 1).end;
        if let RangeState::Claimed(runs) = p.poll(bytes) {
            self.metrics.fallback("owned", runs.iter().map(|r| u64::from(r.end - r.start)).sum());
            for run in runs {
                self.spawn_fill(up.clone(), name.clone(), p.clone(), run, None, false);
            }
        }
        Ok(())
    }

    /// Streams `range` of the blob in order. The first item tells whether anything can be sent;
    /// an error after that ends the body early. With `whole`, the last piece waits for verification.
    /// Peer bytes wait for the whole blob's verification unless the client verifies them itself
    /// (`client_verifies`: a lazy reader checking each chunk against its TOC).
    pub fn stream(
        self: &Arc<Self>,
        blob: OpenBlob,
        range: Range<u64>,
        whole: bool,
        client_verifies: bool,
    ) -> mpsc::Receiver<Result<Bytes, Error>> {
        let (tx, rx) = mpsc::channel(READ_AHEAD);
        let me = self.clone();
        self.tasks.spawn(async move {
            let result = match &blob.source {
                Source::Complete(r) => me.send_complete(r.clone(), range, &tx).await,
                Source::Partial(p) => me.send_partial(&blob, p.clone(), range, whole, client_verifies, &tx).await,
            };
            if let Err(e) = result {
                tracing::warn!(digest = %blob.digest, error = %e, "blob stream failed");
                let _ = tx.send(Err(e)).await;
            }
        });
        rx
    }

    async fn send_complete(&self, r: Arc<BlobReader>, range: Range<u64>, tx: &mpsc::Sender<Result<Bytes, Error>>) -> Result<(), Error> {
        let mut offset = range.start;
        while offset < range.end {
            let len = (range.end - offset).min(CHUNK as u64) as usize;
            let r = r.clone();
            let mut buf = self.buffers.take();
            let buf = tokio::task::spawn_blocking(move || r.read_at(&mut buf[..len], offset).map(|()| buf)).await.map_err(join_error)??;
            offset += len as u64;
            self.metrics.served("cache", len as u64);
            if tx.send(Ok(self.buffers.freeze(buf, len))).await.is_err() {
                return Ok(()); // the client left
            }
        }
        Ok(())
    }

    async fn send_partial(
        &self,
        blob: &OpenBlob,
        p: Arc<Partial>,
        range: Range<u64>,
        whole: bool,
        client_verifies: bool,
        tx: &mpsc::Sender<Result<Bytes, Error>>,
    ) -> Result<(), Error> {
        let mut offset = range.start;
        while offset < range.end {
            let piece_end = p.piece_range(p.pieces_of(offset..offset + 1).start).end;
            let end = piece_end.min(range.end).min(offset + CHUNK as u64);
            self.wait_ready(blob, &p, offset..end, range.end).await?;
            let piece = p.pieces_of(offset..end).start;
            // Peer bytes wait for the whole blob's verification (unless the client checks them);
            // so does the last piece of a whole-blob response.
            if (whole && end == p.size()) || (!client_verifies && !p.trusted(piece..piece + 1)) {
                self.wait_verified(blob, &p).await?;
            }
            let source = if blob.present_at_open.as_ref().is_some_and(|m| m.get(piece)) {
                "cache"
            } else if p.from_untrusted(piece) {
                "peer"
            } else {
                "origin"
            };
            let len = (end - offset) as usize;
            let p2 = p.clone();
            let start = offset;
            let mut buf = self.buffers.take();
            let buf = tokio::task::spawn_blocking(move || p2.read_at(&mut buf[..len], start).map(|()| buf)).await.map_err(join_error)??;
            offset = end;
            self.metrics.served(source, len as u64);
            if tx.send(Ok(self.buffers.freeze(buf, len))).await.is_err() {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Waits until `need` is present, claiming and fetching what nobody fetches (up to `span_end`
    /// at once).
    async fn wait_ready(&self, blob: &OpenBlob, p: &Arc<Partial>, need: Range<u64>, span_end: u64) -> Result<(), Error> {
        let started = Instant::now();
        let mut rx = p.subscribe();
        loop {
            rx.borrow_and_update();
            match p.poll(need.clone()) {
                RangeState::Ready => return Ok(()),
                RangeState::Failed(why) => return Err(Error::Store(p2p_node::Error::Failed { digest: blob.digest, why })),
                RangeState::Claimed(mut runs) => {
                    if let Some(reason) = self.failed_since(&blob.digest, started) {
                        runs.into_iter().for_each(|r| p.unclaim(r));
                        return Err(Error::UpstreamUnreachable {
                            upstream: blob.upstream.host.clone(),
                            what: format!("blob {}", blob.digest),
                            reason,
                        });
                    }
                    if let RangeState::Claimed(more) = p.poll(need.end..span_end) {
                        runs.extend(more);
                    }
                    for run in runs {
                        self.spawn_fill(blob.upstream.clone(), blob.name.clone(), p.clone(), run, None, true);
                    }
                }
                RangeState::Pending => {
                    self.wait_change(&mut rx, &blob.digest).await?;
                }
            }
        }
    }

    /// Waits until the blob is verified and complete (or failed), fetching whatever nobody fetches.
    async fn wait_verified(&self, blob: &OpenBlob, p: &Arc<Partial>) -> Result<(), Error> {
        let mut rx = p.subscribe();
        loop {
            rx.borrow_and_update();
            if p.is_complete() {
                return Ok(());
            }
            match p.poll(0..p.size()) {
                RangeState::Failed(why) => return Err(Error::Store(p2p_node::Error::Failed { digest: p.digest(), why })),
                RangeState::Claimed(runs) => {
                    for run in runs {
                        self.spawn_fill(blob.upstream.clone(), blob.name.clone(), p.clone(), run, None, true);
                    }
                }
                RangeState::Ready | RangeState::Pending => self.wait_change(&mut rx, &p.digest()).await?,
            }
        }
    }

    async fn wait_change(&self, rx: &mut tokio::sync::watch::Receiver<u64>, d: &Digest) -> Result<(), Error> {
        match tokio::time::timeout(self.piece_timeout, rx.changed()).await {
            Ok(_) => Ok(()),
            Err(_) => Err(Error::Timeout { what: format!("waiting for a piece of {d}"), secs: self.piece_timeout.as_secs() }),
        }
    }

    fn failed_since(&self, d: &Digest, since: Instant) -> Option<String> {
        self.failures.since(d, since)
    }

    /// Fetches `run` (claimed by the caller): from the site when `from_site` and the node has a
    /// swarm, else from the origin (through `resp` when the opening GET is given).
    fn spawn_fill(
        &self,
        up: Arc<Upstream>,
        name: Repo,
        p: Arc<Partial>,
        run: Range<u32>,
        resp: Option<(reqwest::Response, Instant)>,
        from_site: bool,
    ) {
        let fill = Fill {
            up,
            name,
            p,
            metrics: self.metrics.clone(),
            cancel: self.cancel.clone(),
            ledger: self.ledger.clone(),
            swarm: self.swarm.clone(),
        };
        let site = match (&self.swarm, &resp) {
            (Some(swarm), None) if from_site && !fill.p.origin_only() => Some(swarm.clone()),
            _ => None,
        };
        let failures = self.failures.clone();
        let ledger = self.ledger.clone();
        let piece_timeout = self.piece_timeout;
        self.tasks.spawn(async move {
            let p = fill.p.clone();
            let metrics = fill.metrics.clone();
            let result = match site {
                Some(swarm) => SiteFill { swarm, origin: fill, ledger: ledger.clone(), piece_timeout: piece_timeout / 2 }.run(run).await,
                None => fill.run(run, resp).await.map_err(|(e, rest)| (e, rest.collect())),
            };
            if let Err((e, rest)) = result {
                metrics.fetch_failures.inc();
                tracing::warn!(digest = %p.digest(), error = %e, "fetch failed");
                failures.record(p.digest(), &e);
                if matches!(e, Error::Store(p2p_node::Error::Io { .. })) {
                    // The store cannot take it (disk full, I/O error): free what it holds.
                    p.fail(e.to_string());
                } else {
                    rest.into_iter().for_each(|i| p.unclaim(i..i + 1));
                }
            }
            if p.is_complete() {
                ledger.forget(&p.digest());
            }
            let _ = tokio::task::spawn_blocking(move || p.persist()).await;
        });
    }
}

fn size_of(source: &Source) -> u64 {
    match source {
        Source::Complete(r) => r.size(),
        Source::Partial(p) => p.size(),
    }
}

pub(crate) fn join_error(e: tokio::task::JoinError) -> Error {
    Error::Io { what: "a blocking store task".into(), source: std::io::Error::other(e.to_string()) }
}
