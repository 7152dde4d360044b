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

use std::fs::File;
use std::io;
use std::path::PathBuf;

use p2p_node::Digest;

use crate::toc::Entry;

pub struct LayerCache {
    chunks: PathBuf,
    files: PathBuf,
}

impl LayerCache {
    pub fn open(dir: PathBuf) -> io::Result<LayerCache> {
        let (chunks, files) = (dir.join("chunks"), dir.join("files"));
        std::fs::create_dir_all(&chunks)?;
        std::fs::create_dir_all(&files)?;
        Ok(LayerCache { chunks, files })
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
        let result = std::fs::write(&tmp, data).and_then(|()| std::fs::rename(&tmp, self.chunk_path(d)));
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            tracing::debug!(chunk = %d, error = %e, "cannot cache a chunk");
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
            std::fs::rename(&tmp, self.file_path(index))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
            return result;
        }
        for chunk in entry.chunks.iter().filter(|c| !keep(&c.digest)) {
            let _ = std::fs::remove_file(self.chunk_path(&chunk.digest));
        }
        Ok(())
    }
}

fn read_exact_at(path: PathBuf, buf: &mut [u8], offset: u64) -> bool {
    use std::os::unix::fs::FileExt;
    File::open(path).and_then(|f| f.read_exact_at(buf, offset)).is_ok()
}
