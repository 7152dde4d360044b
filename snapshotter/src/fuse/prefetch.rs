//! Background prefetch of a mounted layer: first the chunks the layer marks for startup (the
//! zstd:chunked prefetch marks, the eStargz landmark), then every other chunk in blob order, each
//! verified and cached like an on-demand read (with the other chunks of its compressed range). Each regular file whose chunks are all cached is
//! assembled into a whole local file (see [`super::cache`]), which later opens pass through to.
//! It yields to on-demand reads (it waits while any is fetching), keeps to a byte rate, and stops
//! when the layer is unmounted or a chunk fails (on-demand reads still fetch what is missing).
//! Once it has run through, the layer is readable with the network gone.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::source::Source;
use crate::layer::LazyLayer;
use p2p_node::Digest;

pub struct Prefetch {
    pub source: Arc<Source>,
    /// Set once every chunk is cached.
    pub done: Arc<AtomicBool>,
    /// Bytes per second fetched at most (compressed); 0: no cap.
    pub rate: u64,
    pub stop: Arc<AtomicBool>,
}

impl Prefetch {
    /// Runs until every chunk is cached, the layer is unmounted, or a chunk fails. Blocking.
    pub fn run(self) {
        let Source { layer, cache, stats, .. } = &*self.source;
        let toc = &layer.toc;
        // Files already assembled (an earlier mount of this layer) need nothing more.
        let todo: Vec<usize> = (0..toc.entries.len()).filter(|&i| !toc.entries[i].chunks.is_empty() && !cache.has_file(i)).collect();
        let mut missing: HashMap<usize, usize> = todo.iter().map(|&i| (i, toc.entries[i].chunks.len())).collect();
        let shared = shared_chunks(layer);
        let mut order: Vec<_> = todo.iter().flat_map(|&i| toc.entries[i].chunks.iter().map(move |c| (i, c))).collect();
        order.sort_by_key(|(_, c)| (!c.prefetch, c.blob_range.start));
        let started = Instant::now();
        let mut fetched: u64 = 0;
        let mut seen: HashSet<Digest> = HashSet::new();
        for (index, chunk) in order {
            if self.stop.load(Ordering::Relaxed) {
                return;
            }
            if !seen.insert(chunk.digest) || cache.has_chunk(&chunk.digest) {
                self.one_more(index, &mut missing, &shared);
                continue;
            }
            while stats.reading.load(Ordering::Relaxed) > 0 && !self.stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let one = self.source.fetching(chunk);
            if cache.has_chunk(&chunk.digest) {
                drop(one);
                self.one_more(index, &mut missing, &shared);
                continue;
            }
            let result = self.source.fetch(chunk);
            match result {
                Ok(data) => {
                    cache.put_chunk(&chunk.digest, &data);
                    let n = chunk.blob_range.end - chunk.blob_range.start;
                    fetched += n;
                    stats.prefetched_bytes.fetch_add(n, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::info!(error = %e, "prefetch stopped; reads still fetch what they need");
                    return;
                }
            }
            drop(one);
            self.one_more(index, &mut missing, &shared);
            if self.rate > 0 {
                let due = Duration::from_secs_f64(fetched as f64 / self.rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        }
        self.done.store(true, Ordering::Relaxed);
    }

    /// Counts one more chunk of entry `index` as cached; assembles the file when it was the last.
    fn one_more(&self, index: usize, missing: &mut HashMap<usize, usize>, shared: &HashSet<Digest>) {
        let Some(left) = missing.get_mut(&index) else { return };
        *left -= 1;
        if *left == 0 {
            missing.remove(&index);
            let entry = &self.source.layer.toc.entries[index];
            if let Err(e) = self.source.cache.assemble(index, entry, |d| shared.contains(d)) {
                tracing::debug!(file = %entry.name, error = %e, "cannot assemble a file; reads use its chunks");
            }
        }
    }
}

/// Chunks that more than one file of the layer has (identical files, identical pieces): they stay
/// cached when one of those files is assembled.
fn shared_chunks(layer: &LazyLayer) -> HashSet<Digest> {
    let mut owner: HashMap<Digest, usize> = HashMap::new();
    let mut shared = HashSet::new();
    for (index, chunk) in layer.toc.chunks() {
        if *owner.entry(chunk.digest).or_insert(index) != index {
            shared.insert(chunk.digest);
        }
    }
    shared
}
