//! What the swarm gives away and takes: upload and download rate caps (token buckets shared by
//! all peers), a cap on the pieces served to one peer at a time, and byte counters, in total and
//! per peer, for status, metrics and choosing peers. So no node becomes the hot spot of a rollout,
//! and a running workload keeps its bandwidth.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes moved to and from peers since start.
#[derive(Debug, Default)]
pub struct Counters {
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub pieces_out: AtomicU64,
    peers: Mutex<HashMap<PeerId, PeerTraffic>>,
}

/// What this node exchanged with one peer, and how fast that peer served it.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PeerTraffic {
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Requests to this peer that failed (error, timeout) or were answered with bad bytes.
    pub failures: u64,
    /// Recent download rate from this peer, bytes per second (0 until measured).
    pub rate: f64,
}

/// A snapshot of [`Counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Traffic {
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub pieces_out: u64,
}

impl Counters {
    fn peer(&self, peer: PeerId, f: impl FnOnce(&mut PeerTraffic)) {
        f(self.peers.lock().unwrap_or_else(|p| p.into_inner()).entry(peer).or_default());
    }

    /// A piece of `len` bytes came from `peer` in `took`.
    pub(crate) fn received(&self, peer: PeerId, len: u64, took: Duration) {
        self.bytes_in.fetch_add(len, Ordering::Relaxed);
        let sample = len as f64 / took.as_secs_f64().max(1e-3);
        self.peer(peer, |t| {
            t.bytes_in += len;
            t.rate = if t.rate == 0.0 { sample } else { 0.7 * t.rate + 0.3 * sample };
        });
    }

    pub(crate) fn sent(&self, peer: PeerId, len: u64) {
        self.bytes_out.fetch_add(len, Ordering::Relaxed);
        self.pieces_out.fetch_add(1, Ordering::Relaxed);
        self.peer(peer, |t| t.bytes_out += len);
    }

    pub(crate) fn failed(&self, peer: PeerId) {
        self.peer(peer, |t| t.failures += 1);
    }

    /// What was exchanged with `peer` so far.
    pub fn of(&self, peer: &PeerId) -> PeerTraffic {
        self.peers.lock().unwrap_or_else(|p| p.into_inner()).get(peer).copied().unwrap_or_default()
    }

    pub fn snapshot(&self) -> Traffic {
        Traffic {
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out: self.bytes_out.load(Ordering::Relaxed),
            pieces_out: self.pieces_out.load(Ordering::Relaxed),
        }
    }
}

/// A token bucket holding at most one second of `rate`.
struct Bucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: Option<u64>) -> Option<Mutex<Bucket>> {
        rate.filter(|&r| r > 0).map(|r| Mutex::new(Bucket { rate: r as f64, tokens: r as f64, last: Instant::now() }))
    }

    /// Takes `n` tokens; returns how long to wait before using them.
    fn take(&mut self, n: u64) -> Duration {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.rate);
        self.last = now;
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

async fn pace(bucket: &Option<Mutex<Bucket>>, n: u64) {
    let Some(bucket) = bucket else { return };
    let wait = bucket.lock().unwrap_or_else(|p| p.into_inner()).take(n);
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
}

pub(crate) struct Limits {
    upload: Option<Mutex<Bucket>>,
    download: Option<Mutex<Bucket>>,
    per_peer: usize,
    peers: Mutex<HashMap<PeerId, Arc<Semaphore>>>,
    pub(crate) counters: Arc<Counters>,
}

impl Limits {
    pub(crate) fn new(upload_rate: Option<u64>, download_rate: Option<u64>, per_peer: usize, counters: Arc<Counters>) -> Limits {
        Limits {
            upload: Bucket::new(upload_rate),
            download: Bucket::new(download_rate),
            per_peer: per_peer.max(1),
            peers: Mutex::new(HashMap::new()),
            counters,
        }
    }

    /// A slot to serve `peer`; waits while it already has `per_peer` requests being served.
    pub(crate) async fn slot(&self, peer: PeerId) -> Option<OwnedSemaphorePermit> {
        let sem = self
            .peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(peer)
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_peer)))
            .clone();
        sem.acquire_owned().await.ok()
    }

    /// Waits until `n` bytes may be sent under the upload rate.
    pub(crate) async fn spend(&self, n: u64) {
        pace(&self.upload, n).await;
    }

    /// Waits until `n` bytes may be asked for under the download rate.
    pub(crate) async fn receive(&self, n: u64) {
        pace(&self.download, n).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_bucket_paces_what_exceeds_a_second_of_rate() {
        let limits = Limits::new(Some(1_000_000), None, 2, Arc::default());
        let started = Instant::now();
        limits.spend(1_000_000).await; // the first second's worth is there already
        assert!(started.elapsed() < Duration::from_millis(100));
        limits.spend(500_000).await;
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(450) && elapsed < Duration::from_millis(900), "{elapsed:?}");
        let unlimited = Limits::new(None, None, 2, Arc::default());
        let started = Instant::now();
        unlimited.spend(u64::MAX / 2).await;
        assert!(started.elapsed() < Duration::from_millis(50));
    }

    #[tokio::test]
    async fn a_peer_gets_at_most_its_slots() {
        let limits = Limits::new(None, None, 2, Arc::default());
        let peer = PeerId::random();
        let a = limits.slot(peer).await.expect("slot");
        let _b = limits.slot(peer).await.expect("slot");
        assert!(tokio::time::timeout(Duration::from_millis(100), limits.slot(peer)).await.is_err(), "a third slot waits");
        let _other =
            tokio::time::timeout(Duration::from_millis(100), limits.slot(PeerId::random())).await.expect("another peer is not held up");
        drop(a);
        assert!(tokio::time::timeout(Duration::from_millis(100), limits.slot(peer)).await.is_ok(), "a freed slot is given");
    }
}
