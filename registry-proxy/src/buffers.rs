//! Reusable read buffers for streaming blobs. A chunk handed to an HTTP body carries its buffer
//! back to the pool when the body drops it, so serving a blob neither allocates nor zeroes a
//! buffer per chunk. The pool keeps at most `MAX_FREE` idle buffers: memory stays bounded.

use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// Bytes per buffer: one chunk of a blob body.
pub const CHUNK: usize = 1024 * 1024;
const MAX_FREE: usize = 16;

#[derive(Debug, Default)]
pub struct Pool {
    free: Mutex<Vec<Vec<u8>>>,
}

struct Pooled {
    buf: Vec<u8>,
    len: usize,
    pool: Arc<Pool>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let mut free = self.pool.free.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < MAX_FREE {
            free.push(std::mem::take(&mut self.buf));
        }
    }
}

impl Pool {
    /// A buffer of [`CHUNK`] bytes (old contents: the caller overwrites what it uses).
    pub fn take(&self) -> Vec<u8> {
        let reused = self.free.lock().unwrap_or_else(|p| p.into_inner()).pop();
        reused.unwrap_or_else(|| vec![0; CHUNK])
    }

    /// The first `len` bytes of `buf` as `Bytes`; the buffer returns here when they are dropped.
    pub fn freeze(self: &Arc<Self>, buf: Vec<u8>, len: usize) -> Bytes {
        debug_assert!(len <= buf.len());
        Bytes::from_owner(Pooled { buf, len, pool: self.clone() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_when_bytes_drop() {
        let pool = Arc::new(Pool::default());
        let mut b = pool.take();
        b[..3].copy_from_slice(b"abc");
        let ptr = b.as_ptr();
        let bytes = pool.freeze(b, 3);
        assert_eq!(&bytes[..], b"abc");
        let clone = bytes.slice(1..);
        drop(bytes);
        assert!(pool.free.lock().expect("lock").is_empty(), "still referenced by a slice");
        drop(clone);
        let again = pool.take();
        assert_eq!(again.as_ptr(), ptr, "the same buffer is reused");
        drop(again);
        let many: Vec<Bytes> = (0..40).map(|_| pool.freeze(pool.take(), 1)).collect();
        drop(many);
        assert_eq!(pool.free.lock().expect("lock").len(), MAX_FREE, "idle buffers are bounded");
    }
}
