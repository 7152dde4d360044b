//! Filling a run of pieces from the site: peers first, the origin for what no peer can give.
//!
//! For each piece of the run, in order:
//! 1. the peers whose have-map shows it — connected peers, or, when none has any of the blob, the
//!    providers the DHT names — same region first, then same zone, then the fastest measured,
//!    then the fewest failures ([`site::rank`]); a request not answered in [`HEDGE_AFTER`] is repeated to the next holder;
//! 2. else the piece's *owner*: the member of the site (this node and its connected same-region
//!    peers) that [`site::owner`] picks for the piece's segment, asked with an origin hint; it
//!    fetches the segment from the origin if nobody there has, and the asker waits (`NotYet`).
//!    If the owner fails (it died), the owner the segment has without it, likewise: every node
//!    computes the same one, so a dead node's segments still cross the WAN once, not per node;
//! 3. else, and for pieces this node owns or that no peer delivered within half the piece timeout,
//!    the origin, contiguous pieces in one range request.
//!
//! So a blob crosses the WAN about once per site whether its nodes want it at once, one after
//! another, or only one of them does.
//!
//! Peer bytes are written as untrusted pieces (see `p2p_node::store::partial`) and recorded in
//! the [`Ledger`]. When the blob then fails its digest, the store drops them and the blob is
//! completed from the origin; each origin piece is compared with what the peer had sent, and a
//! peer whose piece differed is banned.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use p2p_node::store::Bitmap;
use p2p_node::store::Partial;
use p2p_node::swarm::{site, Client, Origin, PeerId, PieceAnswer, SitePeer};
use p2p_node::Digest;
use tokio::sync::mpsc;

use crate::fetcher::join_error;
use crate::fill::Fill;
use crate::Error;

/// Piece requests in flight per fill.
const CONCURRENCY: usize = 32;
/// A have-map question gets this long.
const MAP_TIMEOUT: Duration = Duration::from_secs(3);
/// One piece request gets this long (the peer may wait 4 s for a piece it is fetching).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A request to a peer that holds the piece and has not answered after this long is hedged.
const HEDGE_AFTER: Duration = Duration::from_millis(1500);
/// How long a peer that served bad bytes is refused.
pub const BAN: Duration = Duration::from_secs(600);

/// Per piece index: the peer that sent it, and the sha256 of what it sent.
type Senders = HashMap<u32, (PeerId, Digest)>;

/// Which peer sent which piece (and its sha256), per blob, until the blob is verified.
#[derive(Default)]
pub struct Ledger(Mutex<HashMap<Digest, Senders>>);

impl Ledger {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, Senders>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, blob: Digest, piece: u32, peer: PeerId, hash: Digest) {
        self.lock().entry(blob).or_default().insert(piece, (peer, hash));
    }

    /// Whether some peer sent piece `piece` of `blob` (the origin's copy should be compared).
    pub fn has(&self, blob: &Digest, piece: u32) -> bool {
        self.lock().get(blob).is_some_and(|m| m.contains_key(&piece))
    }

    /// The peer whose copy of `piece` differed from the origin's `hash`, if one did.
    pub fn liar(&self, blob: &Digest, piece: u32, hash: &Digest) -> Option<PeerId> {
        let mut map = self.lock();
        let (peer, theirs) = map.get_mut(blob)?.remove(&piece)?;
        (theirs != *hash).then_some(peer)
    }

    pub fn forget(&self, blob: &Digest) {
        self.lock().remove(blob);
    }
}

pub(crate) struct SiteFill {
    pub swarm: Client,
    pub origin: Fill,
    pub ledger: Arc<Ledger>,
    /// How long peers get to deliver a piece before the origin is asked.
    pub piece_timeout: Duration,
}

/// Who may serve one piece, best first.
struct Job {
    piece: u32,
    candidates: Vec<PeerId>,
    /// How many of the candidates hold the piece now (the rest are its segment's owner and the
    /// owner after it, asked to fetch it).
    holders: usize,
}

impl Job {
    /// Whether candidate `k` is one of the piece's owners, asked with the origin hint.
    fn is_owner(&self, k: usize) -> bool {
        k >= self.holders
    }
}

impl SiteFill {
    fn p(&self) -> &Arc<Partial> {
        &self.origin.p
    }

    /// Fetches `run`; on failure returns the error and the pieces left unfetched (still claimed).
    pub async fn run(&self, run: Range<u32>) -> Result<(), (Error, Vec<u32>)> {
        let mut peers = self.swarm.site_peers().await.unwrap_or_default();
        if peers.is_empty() {
            return self.origin.run(run, None).await.map_err(|(e, rest)| (e, rest.collect()));
        }
        let maps = self.have_maps(&mut peers).await;
        let (jobs, mine) = self.plan(run, &peers, &maps);
        let origin = Origin { size: self.p().size(), registry: self.origin.up.host.clone(), repo: self.origin.name.to_string() };
        let origin = &origin;
        self.origin.metrics.fallback("owned", mine.len() as u64);
        let (to_origin, from_peers) = mpsc::unbounded_channel();
        for i in mine {
            let _ = to_origin.send(i);
        }
        let peers_done = async move {
            let mut jobs = jobs.into_iter();
            let mut inflight = FuturesUnordered::new();
            loop {
                while inflight.len() < CONCURRENCY {
                    let Some(job) = jobs.next() else { break };
                    inflight.push(self.fetch(job, origin));
                }
                let Some((piece, result)) = inflight.next().await else { break };
                if let Err(why) = result {
                    tracing::debug!(digest = %self.p().digest(), piece, %why, "no peer gave the piece; asking the origin");
                    self.origin.metrics.fallback(if self.p().origin_only() { "repair" } else { "no_peer" }, 1);
                    let _ = to_origin.send(piece);
                }
            }
        };
        let (_, origin) = tokio::join!(peers_done, self.fetch_from_origin(from_peers));
        origin
    }

    /// What each connected peer can hand on of the blob; when none has any, what the providers
    /// the DHT names (peers of other regions, not connected) have.
    async fn have_maps(&self, peers: &mut Vec<SitePeer>) -> HashMap<PeerId, Bitmap> {
        let maps = self.ask_maps(peers.iter().map(|p| p.id).collect()).await;
        if !maps.is_empty() {
            return maps;
        }
        let d = self.p().digest();
        let providers = tokio::time::timeout(MAP_TIMEOUT, self.swarm.providers(d)).await.ok().and_then(Result::ok).unwrap_or_default();
        let me = self.swarm.peer_id();
        let others: Vec<PeerId> = providers.into_iter().filter(|p| *p != me && !peers.iter().any(|c| c.id == *p)).collect();
        let maps = self.ask_maps(others).await;
        peers.extend(maps.keys().map(|id| SitePeer { id: *id, region: None, zone: None, name: None }));
        maps
    }

    async fn ask_maps(&self, peers: Vec<PeerId>) -> HashMap<PeerId, Bitmap> {
        let d = self.p().digest();
        let size = self.p().size();
        let asks = peers.into_iter().map(|id| async move {
            let answer = tokio::time::timeout(MAP_TIMEOUT, self.swarm.have_map(id, d)).await;
            match answer {
                Ok(Ok(Some((s, map)))) if s == size => Some((id, map)),
                Ok(Ok(Some((s, _)))) => {
                    tracing::warn!(peer = %id, digest = %d, "the peer says the blob is {s} bytes, not {size}");
                    self.swarm.failed(id);
                    None
                }
                Ok(Ok(None)) => None,
                _ => {
                    self.swarm.failed(id);
                    None
                }
            }
        });
        futures_util::future::join_all(asks).await.into_iter().flatten().collect()
    }

    /// Splits the run into peer jobs and the pieces this node fetches from the origin.
    fn plan(&self, run: Range<u32>, peers: &[SitePeer], maps: &HashMap<PeerId, Bitmap>) -> (Vec<Job>, Vec<u32>) {
        let d = self.p().digest();
        let me = self.swarm.peer_id();
        let region = self.swarm.region();
        let same_region = |p: &SitePeer| p.region.as_deref() == Some(region);
        // Members own segments: this node and the peers of its region.
        let mut members: Vec<PeerId> = peers.iter().filter(|p| same_region(p)).map(|p| p.id).collect();
        members.push(me);
        let holders = peers.iter().filter(|p| maps.contains_key(&p.id));
        let ranked = site::rank(holders, region, self.swarm.zone(), |id| self.swarm.traffic_with(id));
        let (mut jobs, mut mine) = (Vec::new(), Vec::new());
        for piece in run {
            let mut holding: Vec<&SitePeer> = ranked.iter().copied().filter(|p| maps[&p.id].get(piece)).collect();
            // Spread the load: the best few holders of the best region and zone take turns by piece.
            let n = holding.iter().take(3).take_while(|p| (&p.region, &p.zone) == (&holding[0].region, &holding[0].zone)).count();
            if n > 1 {
                holding[..n].rotate_left(piece as usize % n);
            }
            let mut candidates: Vec<PeerId> = holding.iter().map(|p| p.id).collect();
            let holders = candidates.len();
            let segment = site::segment_of(piece);
            let owner = *site::owner(&d, segment, &members).unwrap_or(&me);
            if owner != me && !candidates.contains(&owner) {
                candidates.push(owner);
                // Should the owner fail (a node that died), the segment's next owner, as every
                // node of the site computes it without the dead one: one origin fetch, not one per node.
                let next = site::owner(&d, segment, members.iter().filter(|m| **m != owner));
                if let Some(&next) = next.filter(|n| **n != me && !candidates.contains(n)) {
                    candidates.push(next);
                }
            }
            if candidates.is_empty() {
                mine.push(piece);
            } else {
                jobs.push(Job { piece, candidates, holders });
            }
        }
        (jobs, mine)
    }

    /// Gets one piece from the job's candidates; `Err` says why none gave it.
    async fn fetch(&self, job: Job, origin: &Origin) -> (u32, Result<(), String>) {
        (job.piece, self.fetch_from(&job, origin).await)
    }

    async fn fetch_from(&self, job: &Job, origin: &Origin) -> Result<(), String> {
        let p = self.p();
        let deadline = Instant::now() + self.piece_timeout;
        let mut why = String::from("no candidate");
        for (k, &peer) in job.candidates.iter().enumerate() {
            // A hedge only between two holders: the owner is still fetching from the origin.
            let backup = job.candidates.get(k + 1).copied().filter(|_| k + 1 < job.holders);
            loop {
                if Instant::now() >= deadline || p.origin_only() {
                    return Err(format!("{why}; gave up on peers"));
                }
                let hint = job.is_owner(k).then(|| origin.clone());
                let (from, answer) = self.ask(peer, backup, job.piece, hint).await;
                match answer {
                    Ok(PieceAnswer::Data(bytes)) => return self.write(from, job.piece, bytes).await,
                    Ok(PieceAnswer::NotYet) => {
                        why = format!("{peer} is still fetching it");
                        continue;
                    }
                    Ok(PieceAnswer::NotHere) => why = format!("{peer} does not have it"),
                    Err(e) => {
                        self.swarm.failed(peer);
                        why = e;
                    }
                }
                break;
            }
        }
        Err(why)
    }

    /// Asks `peer`; after [`HEDGE_AFTER`] asks `backup` too, and takes the first piece.
    async fn ask(&self, peer: PeerId, backup: Option<PeerId>, piece: u32, hint: Option<Origin>) -> (PeerId, Result<PieceAnswer, String>) {
        let first = self.ask_one(peer, piece, hint);
        let Some(backup) = backup else { return (peer, first.await) };
        tokio::pin!(first);
        tokio::select! {
            r = &mut first => return (peer, r),
            () = tokio::time::sleep(HEDGE_AFTER) => {}
        }
        self.origin.metrics.peer_hedges.inc();
        let second = self.ask_one(backup, piece, None);
        tokio::pin!(second);
        tokio::select! {
            r = &mut first => match r {
                Ok(PieceAnswer::Data(_)) => (peer, r),
                _ => (backup, second.await),
            },
            r = &mut second => match r {
                Ok(PieceAnswer::Data(_)) => (backup, r),
                _ => (peer, first.await),
            },
        }
    }

    async fn ask_one(&self, peer: PeerId, piece: u32, hint: Option<Origin>) -> Result<PieceAnswer, String> {
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, self.swarm.piece(peer, self.p().digest(), piece, hint)).await;
        let result = match answer {
            Ok(Ok(a)) => Ok(a),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("{peer} did not answer within {}s", REQUEST_TIMEOUT.as_secs())),
        };
        self.origin.metrics.peer_piece(match &result {
            Ok(PieceAnswer::Data(_)) => "ok",
            Ok(PieceAnswer::NotYet) => "not_yet",
            Ok(PieceAnswer::NotHere) => "not_here",
            Err(_) => "error",
        });
        result
    }

    /// Writes a peer's piece as untrusted and records it in the ledger.
    async fn write(&self, peer: PeerId, piece: u32, bytes: Vec<u8>) -> Result<(), String> {
        let p = self.p().clone();
        let expected = p.piece_range(piece);
        if bytes.len() as u64 != expected.end - expected.start {
            self.swarm.failed(peer);
            return Err(format!("{peer} sent {} bytes for a {}-byte piece", bytes.len(), expected.end - expected.start));
        }
        self.ledger.record(p.digest(), piece, peer, Digest::of(&bytes));
        let written = tokio::task::spawn_blocking(move || p.write_piece(piece, &bytes, false)).await.map_err(|e| join_error(e).to_string());
        match written? {
            Ok(()) => Ok(()),
            // The blob failed its digest with peer pieces in it: it is being repaired from the
            // origin, and this piece (still claimed) goes there too.
            Err(e @ p2p_node::Error::Repairing { .. }) => {
                tracing::warn!(digest = %self.p().digest(), error = %e, "peer bytes failed verification");
                Err(e.to_string())
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// Fetches the pieces sent on `rx` from the origin, contiguous ones in one request. After
    /// the first failure the rest fail at once (the origin is down; each would retry in vain).
    async fn fetch_from_origin(&self, mut rx: mpsc::UnboundedReceiver<u32>) -> Result<(), (Error, Vec<u32>)> {
        let mut pending: Vec<u32> = Vec::new();
        let mut failed: Option<(Error, Vec<u32>)> = None;
        loop {
            // Take what is queued now; wait for more only when nothing is.
            while let Ok(i) = rx.try_recv() {
                pending.push(i);
            }
            if pending.is_empty() {
                match rx.recv().await {
                    Some(i) => pending.push(i),
                    None => break,
                }
                continue;
            }
            pending.sort_unstable();
            let start = pending[0];
            let len = pending.iter().zip(start..).take_while(|(a, b)| *a == b).count() as u32;
            pending.drain(..len as usize);
            let run = start..start + len;
            if let Some((_, rest)) = &mut failed {
                rest.extend(run);
                continue;
            }
            if let Err((e, rest)) = self.origin.run(run, None).await {
                failed = Some((e, rest.collect()));
            }
        }
        match failed {
            Some(f) => Err(f),
            None => Ok(()),
        }
    }
}

/// The size of `d` as the site's peers know it, for when the origin cannot be asked. Untrusted
/// like every peer answer: a wrong size only makes the blob fail its digest.
pub(crate) async fn size_from_peers(swarm: &Client, d: Digest) -> Option<u64> {
    let peers = swarm.site_peers().await.ok()?;
    let asks = peers.iter().map(|p| async move { tokio::time::timeout(MAP_TIMEOUT, swarm.have_map(p.id, d)).await });
    let sizes: Vec<u64> = futures_util::future::join_all(asks).await.into_iter().filter_map(|r| Some(r.ok()?.ok()??.0)).collect();
    // The size most peers agree on.
    let mut counts: HashMap<u64, usize> = HashMap::new();
    sizes.iter().for_each(|s| *counts.entry(*s).or_default() += 1);
    counts.into_iter().max_by_key(|(_, n)| *n).map(|(s, _)| s)
}
