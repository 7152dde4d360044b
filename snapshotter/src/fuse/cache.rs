//! Verified chunks kept on disk, named by their digest: a chunk is written (temp file, rename)
//! only after it matched its digest, so whatever is here may be served as is. Losing the cache
//! costs refetching, never correctness.

use std::path::PathBuf;

use p2p_node::Digest;

pub struct ChunkCache {
    dir: PathBuf,
}

impl ChunkCache {
    pub fn open(dir: PathBuf) -> std::io::Result<ChunkCache> {
        std::fs::create_dir_all(&dir)?;
        Ok(ChunkCache { dir })
    }

    fn path(&self, d: &Digest) -> PathBuf {
        self.dir.join(d.hex())
    }

    pub fn has(&self, d: &Digest) -> bool {
        self.path(d).exists()
    }

    /// Reads `buf.len()` bytes at `offset` of cached chunk `d`; `false` when it is not cached.
    pub fn read_at(&self, d: &Digest, buf: &mut [u8], offset: u64) -> bool {
        use std::os::unix::fs::FileExt;
        std::fs::File::open(self.path(d)).and_then(|f| f.read_exact_at(buf, offset)).is_ok()
    }

    /// Keeps a verified chunk; a failure to write only means it will be fetched again.
    pub fn put(&self, d: &Digest, data: &[u8]) {
        let tmp = self.dir.join(format!(".{}.{}", d.hex(), std::process::id()));
        let result = std::fs::write(&tmp, data).and_then(|()| std::fs::rename(&tmp, self.path(d)));
        if let Err(e) = result {
            let _ = std::fs::remove_file(&tmp);
            tracing::debug!(chunk = %d, error = %e, "cannot cache a chunk");
        }
    }
}
