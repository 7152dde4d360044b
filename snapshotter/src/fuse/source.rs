//! Where a mounted layer's bytes come from: its whole local files, its cached chunks, or the blob
//! (fetched, decompressed and verified against the chunk's digest before any byte of it is
//! returned, then cached). Chunks that share a compressed range (small files packed in one frame)
//! are fetched and cached together: reading a directory of small files costs one fetch per frame,
//! not one per file. Shared by the filesystem's reads and the background prefetch.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use p2p_node::layers::LazyStats;

use super::cache::LayerCache;
use crate::blob::ReadAt;
use crate::layer::LazyLayer;
use crate::toc::Chunk;
use crate::Error;

pub struct Source {
    pub layer: Arc<LazyLayer>,
    pub blob: Arc<dyn ReadAt>,
    pub cache: LayerCache,
    /// Counts what the layer does (shared with the node's other lazy layers, or not).
    pub stats: Arc<LazyStats>,
    /// Compressed ranges that hold several chunks: range start → (entry, chunk number) of each.
    shared: HashMap<u64, Vec<(usize, usize)>>,
    /// One fetch of a compressed range at a time (striped by range): the kernel's readahead sends
    /// several requests into one chunk at once, and they must not all fetch it.
    fetching: Vec<Mutex<()>>,
}

const STRIPES: u64 = 64;

impl Source {
    pub fn new(layer: Arc<LazyLayer>, blob: Arc<dyn ReadAt>, cache: LayerCache, stats: Arc<LazyStats>) -> Source {
        let mut by_start: HashMap<u64, Vec<(usize, usize)>> = HashMap::new();
        for (index, entry) in layer.toc.entries.iter().enumerate() {
            for (n, chunk) in entry.chunks.iter().enumerate() {
                by_start.entry(chunk.blob_range.start).or_default().push((index, n));
            }
        }
        by_start.retain(|_, chunks| chunks.len() > 1);
        Source { layer, blob, cache, stats, shared: by_start, fetching: (0..STRIPES).map(|_| Mutex::new(())).collect() }
    }

    /// Held while fetching `chunk`'s compressed range; check the cache again once it is held.
    pub fn fetching(&self, chunk: &Chunk) -> MutexGuard<'_, ()> {
        let stripe = (chunk.blob_range.start % STRIPES) as usize;
        self.fetching[stripe].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fetches `chunk` (verified), caching the other chunks of its compressed range on the way
    /// (those of files not yet whole on disk).
    pub fn fetch(&self, chunk: &Chunk) -> Result<Vec<u8>, Error> {
        let entries = &self.layer.toc.entries;
        let siblings: Vec<&Chunk> = self.shared.get(&chunk.blob_range.start).map_or_else(Vec::new, |all| {
            all.iter()
                .filter(|&&(index, _)| !self.cache.has_file(index))
                .map(|&(index, n)| &entries[index].chunks[n])
                .filter(|c| c.digest != chunk.digest && c.blob_range == chunk.blob_range)
                .collect()
        });
        let mut wanted = vec![chunk];
        wanted.extend(siblings);
        let mut data = self.layer.read_chunks(self.blob.as_ref(), &wanted)?.into_iter();
        let ours = data.next().unwrap_or_default();
        for (c, d) in wanted[1..].iter().zip(data) {
            self.cache.put_chunk(&c.digest, &d);
        }
        Ok(ours)
    }

    /// Reads `size` bytes at `offset` of TOC entry `index` (fewer at the end of the file).
    pub fn read(&self, index: usize, offset: u64, size: u32) -> Result<Vec<u8>, String> {
        let entry = &self.layer.toc.entries[index];
        let end = (offset + u64::from(size)).min(entry.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut out = vec![0u8; (end - offset) as usize];
        if self.cache.read_file_at(index, &mut out, offset) {
            return Ok(out);
        }
        let mut filled = 0usize;
        for chunk in entry.chunks.iter().filter(|c| c.file_offset < end && c.file_offset + c.size > offset) {
            let from = offset.max(chunk.file_offset) - chunk.file_offset;
            let to = end.min(chunk.file_offset + chunk.size) - chunk.file_offset;
            let dst = &mut out[filled..filled + (to - from) as usize];
            // A cached chunk is read in part; a missing one is fetched, verified and kept whole
            // (the file may have been assembled meanwhile, its chunks gone).
            let cached = |dst: &mut [u8]| {
                self.cache.read_chunk_at(&chunk.digest, dst, from) || self.cache.read_file_at(index, dst, chunk.file_offset + from)
            };
            if !cached(dst) {
                let _one = self.fetching(chunk);
                if !cached(dst) {
                    let data = self.fetch(chunk).map_err(|e| format!("chunk at {} of {}: {e}", chunk.file_offset, entry.name))?;
                    self.stats.chunks_fetched.fetch_add(1, Ordering::Relaxed);
                    self.stats.bytes_fetched.fetch_add(chunk.blob_range.end - chunk.blob_range.start, Ordering::Relaxed);
                    self.cache.put_chunk(&chunk.digest, &data);
                    dst.copy_from_slice(&data[from as usize..to as usize]);
                }
            }
            filled += (to - from) as usize;
        }
        if filled as u64 != end - offset {
            return Err(format!("the chunks of {} do not cover bytes {offset}..{end}", entry.name));
        }
        Ok(out)
    }
}
