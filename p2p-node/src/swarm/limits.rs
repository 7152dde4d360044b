//! What the swarm gives away: an upload rate cap (a token bucket shared by all peers), a cap on
//! the pieces served to one peer at a time, and byte counters for status and metrics. So no node
//! becomes the hot spot of a rollout, and a running workload keeps its bandwidth.

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
}

/// A snapshot of [`Counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Traffic {
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub pieces_out: u64,
}

impl Counters {
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

pub(crate) struct Limits {
    bucket: Option<Mutex<Bucket>>,
    per_peer: usize,
    peers: Mutex<HashMap<PeerId, Arc<Semaphore>>>,
    pub(crate) counters: Arc<Counters>,
}

impl Limits {
    pub(crate) fn new(upload_rate: Option<u64>, per_peer: usize, counters: Arc<Counters>) -> Limits {
        let bucket = upload_rate.filter(|&r| r > 0).map(|r| Mutex::new(Bucket { rate: r as f64, tokens: r as f64, last: Instant::now() }));
        Limits { bucket, per_peer: per_peer.max(1), peers: Mutex::new(HashMap::new()), counters }
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
        let Some(bucket) = &self.bucket else { return };
        let wait = {
            let mut b = bucket.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * b.rate).min(b.rate);
            b.last = now;
            b.tokens -= n as f64;
            if b.tokens >= 0.0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(-b.tokens / b.rate)
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_bucket_paces_what_exceeds_a_second_of_rate() {
        let limits = Limits::new(Some(1_000_000), 2, Arc::default());
        let started = Instant::now();
        limits.spend(1_000_000).await; // the first second's worth is there already
        assert!(started.elapsed() < Duration::from_millis(100));
        limits.spend(500_000).await;
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(450) && elapsed < Duration::from_millis(900), "{elapsed:?}");
        let unlimited = Limits::new(None, 2, Arc::default());
        let started = Instant::now();
        unlimited.spend(u64::MAX / 2).await;
        assert!(started.elapsed() < Duration::from_millis(50));
    }

    #[tokio::test]
    async fn a_peer_gets_at_most_its_slots() {
        let limits = Limits::new(None, 2, Arc::default());
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
