//! One upstream fetch of a run of pieces into a partial blob: a Range GET (or the whole-blob GET
//! that opened it), cut into pieces as the bytes arrive, each written before the next is read.
//! Retried from the first missing piece a few times; on giving up, the caller unclaims the rest.
//! Origin pieces are trusted; one that a peer had sent before (a repair) is compared with the
//! peer's copy, and a peer whose copy differed is banned.

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue, Method, StatusCode};
use p2p_node::store::Partial;
use tokio_util::sync::CancellationToken;

use crate::fetcher::join_error;
use crate::metrics::{KindLabel, Metrics};
use crate::names::Repo;
use crate::site::{Ledger, BAN};
use crate::upstream::Upstream;
use crate::Error;

const ATTEMPTS: u32 = 3;

pub(crate) struct Fill {
    pub up: Arc<Upstream>,
    pub name: Repo,
    pub p: Arc<Partial>,
    pub metrics: Arc<Metrics>,
    pub cancel: CancellationToken,
    pub ledger: Arc<Ledger>,
    pub swarm: Option<p2p_node::swarm::Client>,
}

impl Fill {
    /// Fetches `run`; on failure returns the error and the pieces still unfetched (claimed).
    pub async fn run(&self, run: Range<u32>, mut resp: Option<(reqwest::Response, Instant)>) -> Result<(), (Error, Range<u32>)> {
        let mut next = run.start;
        let mut attempt = 0;
        loop {
            let started = resp.as_ref().map_or_else(Instant::now, |(_, t)| *t);
            let result = self.once(next..run.end, resp.take().map(|(r, _)| r), &mut next).await;
            self.metrics.fetch_duration.get_or_create(&KindLabel { kind: "blob" }).observe(started.elapsed().as_secs_f64());
            match result {
                Ok(()) => return Ok(()),
                Err(e) => {
                    attempt += 1;
                    let retry = attempt < ATTEMPTS && !self.cancel.is_cancelled() && e.is_upstream_failure();
                    if !retry {
                        return Err((e, next..run.end));
                    }
                    tracing::info!(digest = %self.p.digest(), error = %e, attempt, "retrying fetch from piece {next}");
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
            }
        }
    }

    async fn once(&self, run: Range<u32>, resp: Option<reqwest::Response>, next: &mut u32) -> Result<(), Error> {
        let p = &self.p;
        let bytes = p.piece_range(run.start).start..p.piece_range(run.end - 1).end;
        let what = format!("blob {} bytes {}-{}", p.digest(), bytes.start, bytes.end - 1);
        let mut resp = match resp {
            Some(r) => r,
            None => {
                let mut h = HeaderMap::new();
                let whole = bytes.start == 0 && bytes.end == p.size();
                if !whole {
                    let v = format!("bytes={}-{}", bytes.start, bytes.end - 1);
                    h.insert(http::header::RANGE, HeaderValue::from_str(&v).map_err(|_| Error::Config("bad range".into()))?);
                }
                let r = self.up.request(Method::GET, &self.name, &format!("blobs/{}", p.digest()), h).await?;
                self.metrics.upstream(if whole { "blob" } else { "blob_range" }, r.status().as_u16());
                r
            }
        };
        // A 200 to a Range request carries the whole blob: skip to where we need to be.
        let mut skip = match resp.status() {
            StatusCode::PARTIAL_CONTENT => 0,
            StatusCode::OK => bytes.start,
            s => return Err(self.up.status_error(what, s)),
        };
        let mut buf: Vec<u8> = Vec::with_capacity(piece_len(p, *next));
        let mut offset = bytes.start;
        loop {
            let chunk = tokio::select! {
                c = self.up.chunk(&mut resp, &what) => c?,
                () = self.cancel.cancelled() => return Err(Error::ShuttingDown),
            };
            let Some(mut chunk) = chunk else { break };
            self.metrics.origin_bytes.inc_by(chunk.len() as u64);
            if skip > 0 {
                let n = skip.min(chunk.len() as u64);
                skip -= n;
                chunk = chunk.slice(n as usize..);
            }
            while !chunk.is_empty() {
                if *next >= run.end {
                    return Err(Error::UpstreamBad { upstream: self.up.host.clone(), what, reason: "more bytes than asked for".into() });
                }
                let want = piece_len(p, *next) - buf.len();
                let take = want.min(chunk.len());
                buf.extend_from_slice(&chunk[..take]);
                chunk = chunk.slice(take..);
                offset += take as u64;
                if buf.len() == piece_len(p, *next) {
                    buf = self.write(*next, buf).await?;
                    buf.clear();
                    *next += 1;
                    if p.persist_due() {
                        let p = p.clone();
                        tokio::task::spawn_blocking(move || p.persist());
                    }
                }
            }
        }
        if *next < run.end {
            return Err(Error::UpstreamUnreachable {
                upstream: self.up.host.clone(),
                what,
                reason: format!("body ended early at byte {offset}"),
            });
        }
        Ok(())
    }

    async fn write(&self, index: u32, buf: Vec<u8>) -> Result<Vec<u8>, Error> {
        let p = self.p.clone();
        let d = p.digest();
        let compare = self.ledger.has(&d, index);
        let (buf, r, hash) = tokio::task::spawn_blocking(move || {
            let hash = compare.then(|| p2p_node::Digest::of(&buf));
            let r = p.write_piece(index, &buf, true);
            (buf, r, hash)
        })
        .await
        .map_err(join_error)?;
        if let Some(liar) = hash.and_then(|h| self.ledger.liar(&d, index, &h)) {
            self.metrics.peer_bans.inc();
            if let Some(s) = &self.swarm {
                let why = format!("piece {index} of {d} differed from the origin's");
                let _ = s.ban(liar, BAN, why).await;
            }
        }
        match r {
            // The piece is written; the blob failed its digest because of peer pieces and goes on
            // from the origin alone.
            Ok(()) | Err(p2p_node::Error::Repairing { .. }) => Ok(buf),
            Err(e) => Err(Error::from(e)),
        }
    }
}

fn piece_len(p: &Partial, i: u32) -> usize {
    let r = p.piece_range(i);
    (r.end - r.start) as usize
}
