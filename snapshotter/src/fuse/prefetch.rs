//! Background prefetch of a mounted layer: first the chunks the layer marks for startup (the
//! zstd:chunked prefetch marks, the eStargz landmark), then every other chunk in blob order, each
//! verified and cached like an on-demand read. It yields to on-demand reads (it waits while any
//! is fetching), keeps to a byte rate, and stops when the layer is unmounted or a chunk fails
//! (on-demand reads still fetch what is missing). Once it has run through, the layer is readable
//! with the network gone.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::cache::ChunkCache;
use crate::blob::ReadAt;
use crate::layer::LazyLayer;
use p2p_node::layers::LazyStats;

pub struct Prefetch {
    pub layer: Arc<LazyLayer>,
    pub blob: Arc<dyn ReadAt>,
    pub cache: Arc<ChunkCache>,
    pub stats: Arc<LazyStats>,
    /// Set once every chunk is cached.
    pub done: Arc<AtomicBool>,
    /// Bytes per second fetched at most (compressed); 0: no cap.
    pub rate: u64,
    pub stop: Arc<AtomicBool>,
}

impl Prefetch {
    /// Runs until every chunk is cached, the layer is unmounted, or a chunk fails. Blocking.
    pub fn run(self) {
        let toc = &self.layer.toc;
        let mut order: Vec<_> = toc.chunks().map(|(_, c)| c).collect();
        order.sort_by_key(|c| (!c.prefetch, c.blob_range.start));
        order.dedup_by_key(|c| c.digest);
        let started = Instant::now();
        let mut fetched: u64 = 0;
        for chunk in order {
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            if self.cache.has(&chunk.digest) {
                continue;
            }
            while self.stats.reading.load(Ordering::Relaxed) > 0 && !self.stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
            }
            match self.layer.read_chunk(self.blob.as_ref(), chunk) {
                Ok(data) => {
                    self.cache.put(&chunk.digest, &data);
                    let n = chunk.blob_range.end - chunk.blob_range.start;
                    fetched += n;
                    self.stats.prefetched_bytes.fetch_add(n, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::info!(error = %e, "prefetch stopped; reads still fetch what they need");
                    return;
                }
            }
            if self.rate > 0 {
                let due = Duration::from_secs_f64(fetched as f64 / self.rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        }
        self.done.store(true, Ordering::Relaxed);
    }
}
