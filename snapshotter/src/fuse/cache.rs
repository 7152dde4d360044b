//! What a mounted layer keeps on disk, in two shapes, both written only after every byte was
//! verified (temp file, then rename), so whatever is here may be served as is:
//!
//! - `chunks/<digest>`: single verified chunks, as on-demand reads and the prefetch fetch them;
//! - `files/<entry>`: whole regular files (named by their TOC entry index), assembled from their
//!   chunks once all are here. These are what FUSE passthrough hands to the kernel, so a local
//!   file is read at the speed of the disk under it. The chunks of an assembled file are then
//!   removed (unless another file of the layer shares them).
//!
//! Losing any of it costs refetching, never correctness.
//!
//! What it takes on disk is counted in [`LazyStats::cache_bytes`] while the layer is mounted
//! (measured at open, kept up to date as chunks and files come and go, taken back when the cache
//! is dropped). It is not part of the store's capacity, and it is not evicted: it goes with the
//! snapshot.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use p2p_node::layers::LazyStats;
use p2p_node::Digest;

use crate::toc::Entry;

pub struct LayerCache {
    chunks: PathBuf,
    files: PathBuf,
    /// Where this cache's bytes are added up with the other mounted layers'.
    stats: Arc<LazyStats>,
    /// This cache's share of `stats.cache_bytes`, given back on drop.
    bytes: AtomicU64,
}

impl Drop for LayerCache {
    fn drop(&mut self) {
        self.shrank(self.bytes());
    }
}

impl LayerCache {
    /// Opens (creating) the cache in `dir` and counts what it already holds into `stats`.
    pub fn open(dir: PathBuf, stats: Arc<LazyStats>) -> io::Result<LayerCache> {
        let (chunks, files) = (dir.join("chunks"), dir.join("files"));
        std::fs::create_dir_all(&chunks)?;
        std::fs::create_dir_all(&files)?;
        let held = bytes_in(&chunks)? + bytes_in(&files)?;
        stats.cache_bytes.fetch_add(held, Ordering::Relaxed);
        Ok(LayerCache { chunks, files, stats, bytes: AtomicU64::new(held) })
    }

    fn grew(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
        self.stats.cache_bytes.fetch_add(n, Ordering::Relaxed);
    }

    fn shrank(&self, n: u64) {
        // Saturating: two writers of one chunk may both have counted it.
        let n = self.bytes.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| Some(b.saturating_sub(n))).map_or(0, |b| b.min(n));
        self.stats.cache_bytes.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| Some(b.saturating_sub(n))).ok();
    }

    /// This cache's bytes on disk, as counted.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn chunk_path(&self, d: &Digest) -> PathBuf {
        self.chunks.join(d.hex())
    }

    /// Where entry `index`'s whole file is, once assembled.
    pub fn file_path(&self, index: usize) -> PathBuf {
        self.files.join(index.to_string())
    }

    pub fn has_chunk(&self, d: &Digest) -> bool {
        self.chunk_path(d).exists()
    }

    pub fn has_file(&self, index: usize) -> bool {
        self.file_path(index).exists()
    }

    /// Reads `buf.len()` bytes at `offset` of cached chunk `d`; `false` when it is not cached.
    pub fn read_chunk_at(&self, d: &Digest, buf: &mut [u8], offset: u64) -> bool {
        read_exact_at(self.chunk_path(d), buf, offset)
    }

    /// Reads `buf.len()` bytes at `offset` of entry `index`'s assembled file; `false` when it is
    /// not assembled.
    pub fn read_file_at(&self, index: usize, buf: &mut [u8], offset: u64) -> bool {
        read_exact_at(self.file_path(index), buf, offset)
    }

    /// Keeps a verified chunk; a failure to write only means it will be fetched again.
    pub fn put_chunk(&self, d: &Digest, data: &[u8]) {
        let tmp = self.chunks.join(format!(".{}.{}", d.hex(), std::process::id()));
        let path = self.chunk_path(d);
        let replaced = size_of(&path);
        match std::fs::write(&tmp, data).and_then(|()| std::fs::rename(&tmp, &path)) {
            Ok(()) => {
                self.grew(data.len() as u64);
                self.shrank(replaced);
            }
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                tracing::debug!(chunk = %d, error = %e, "cannot cache a chunk");
            }
        }
    }

    /// Writes entry `index`'s whole file from its cached chunks, then removes those chunks that
    /// `keep` does not name. Fails (leaving the chunks) when a chunk is missing or the disk is
    /// full; a failure only means reads keep going through the chunks.
    pub fn assemble(&self, index: usize, entry: &Entry, keep: impl Fn(&Digest) -> bool) -> io::Result<()> {
        let tmp = self.files.join(format!(".{index}.{}", std::process::id()));
        let result = (|| {
            let mut out = File::create(&tmp)?;
            for chunk in &entry.chunks {
                let mut part = File::open(self.chunk_path(&chunk.digest))?;
                let n = io::copy(&mut part, &mut out)?;
                if n != chunk.size {
                    return Err(io::Error::other(format!("cached chunk {} has {n} bytes, not {}", chunk.digest, chunk.size)));
                }
            }
            let replaced = size_of(&self.file_path(index));
            std::fs::rename(&tmp, self.file_path(index))?;
            self.grew(entry.chunks.iter().map(|c| c.size).sum());
            self.shrank(replaced);
            Ok(())
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
            return result;
        }
        for chunk in entry.chunks.iter().filter(|c| !keep(&c.digest)) {
            let path = self.chunk_path(&chunk.digest);
            let size = size_of(&path);
            if std::fs::remove_file(&path).is_ok() {
                self.shrank(size);
            }
        }
        Ok(())
    }
}

/// The length of the file at `path`, 0 when there is none.
fn size_of(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Bytes of the files in `dir`, leaving out temp files (`.…`: a write cut short).
fn bytes_in(dir: &Path) -> io::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        total += entry.metadata().map_or(0, |m| if m.is_file() { m.len() } else { 0 });
    }
    Ok(total)
}

fn read_exact_at(path: PathBuf, buf: &mut [u8], offset: u64) -> bool {
    use std::os::unix::fs::FileExt;
    File::open(path).and_then(|f| f.read_exact_at(buf, offset)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::toc::{Chunk, Kind, Timestamp};

    /// A regular file made of `parts`, one chunk each.
    fn file(parts: &[&[u8]]) -> Entry {
        let mut offset = 0;
        let chunks = parts
            .iter()
            .map(|p| {
                let c = Chunk {
                    file_offset: offset,
                    size: p.len() as u64,
                    blob_range: 0..1,
                    inner_offset: 0,
                    digest: Digest::of(p),
                    prefetch: false,
                };
                offset += p.len() as u64;
                c
            })
            .collect();
        Entry {
            name: "f".into(),
            kind: Kind::Reg,
            size: offset,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: Timestamp::default(),
            link_name: String::new(),
            dev_major: 0,
            dev_minor: 0,
            xattrs: Default::default(),
            digest: None,
            chunks,
        }
    }

    #[test]
    fn what_a_cache_holds_on_disk_is_counted_while_it_is_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let stats = Arc::new(LazyStats::default());
        let total = || stats.cache_bytes.load(Ordering::Relaxed);
        let (a, b) = (vec![1u8; 1000], vec![2u8; 500]);
        let cache = LayerCache::open(dir.path().join("one"), stats.clone()).expect("open");
        cache.put_chunk(&Digest::of(&a), &a);
        cache.put_chunk(&Digest::of(&b), &b);
        cache.put_chunk(&Digest::of(&a), &a);
        assert_eq!(total(), 1500, "a chunk cached twice is counted once");
        cache.assemble(0, &file(&[&a, &b]), |_| false).expect("assemble");
        assert!(cache.has_file(0) && !cache.has_chunk(&Digest::of(&a)), "the file replaced its chunks");
        assert_eq!(total(), 1500);
        let other = LayerCache::open(dir.path().join("two"), stats.clone()).expect("open");
        other.put_chunk(&Digest::of(b"x"), b"x");
        assert_eq!(total(), 1501, "every open cache adds up");
        drop(cache);
        assert_eq!(total(), 1, "an unmounted layer's cache is no longer counted");
        std::fs::write(dir.path().join("one/chunks/.partial-write"), [0u8; 64]).expect("temp file");
        let again = LayerCache::open(dir.path().join("one"), stats.clone()).expect("reopen");
        assert_eq!((again.bytes(), total()), (1500, 1501), "measured again at open, temp files left out");
    }
}
