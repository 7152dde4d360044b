//! Where a mounted layer's bytes come from: its whole local files, its cached chunks, or the blob
//! (fetched, decompressed and verified against the chunk's digest before any byte of it is
//! returned, then cached). Shared by the filesystem's reads and the background prefetch.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use p2p_node::layers::LazyStats;

use super::cache::LayerCache;
use crate::blob::ReadAt;
use crate::layer::LazyLayer;

pub struct Source {
    pub layer: Arc<LazyLayer>,
    pub blob: Arc<dyn ReadAt>,
    pub cache: LayerCache,
    /// Counts what the layer does (shared with the node's other lazy layers, or not).
    pub stats: Arc<LazyStats>,
}

impl Source {
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
            if !self.cache.read_chunk_at(&chunk.digest, dst, from) && !self.cache.read_file_at(index, dst, chunk.file_offset + from) {
                let data = self
                    .layer
                    .read_chunk(self.blob.as_ref(), chunk)
                    .map_err(|e| format!("chunk at {} of {}: {e}", chunk.file_offset, entry.name))?;
                self.stats.chunks_fetched.fetch_add(1, Ordering::Relaxed);
                self.stats.bytes_fetched.fetch_add(chunk.blob_range.end - chunk.blob_range.start, Ordering::Relaxed);
                self.cache.put_chunk(&chunk.digest, &data);
                dst.copy_from_slice(&data[from as usize..to as usize]);
            }
            filled += (to - from) as usize;
        }
        if filled as u64 != end - offset {
            return Err(format!("the chunks of {} do not cover bytes {offset}..{end}", entry.name));
        }
        Ok(out)
    }
}
