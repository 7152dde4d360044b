//! Random access to a layer blob: a local file, bytes in memory, or (later) the node's fetcher.

use std::io;

/// A blob that can be read at any offset. Implementations may fetch lazily.
pub trait ReadAt: Send + Sync {
    /// The blob's size in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` from `offset`; an error if the blob ends first.
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// The same blob read only from bytes its source verified itself, when [`ReadAt::read_at`]
    /// may give bytes nobody checked yet (the caller checks them); `None` when it never does.
    fn verified(&self) -> Option<&dyn ReadAt> {
        None
    }
}

impl ReadAt for std::fs::File {
    fn size(&self) -> u64 {
        self.metadata().map(|m| m.len()).unwrap_or(0)
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

impl ReadAt for Vec<u8> {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        let end = start.checked_add(buf.len()).filter(|&e| e <= self.len()).ok_or(io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(&self[start..end]);
        Ok(())
    }
}

/// Reads `len` bytes at `offset` into a new buffer.
pub fn read_vec(blob: &dyn ReadAt, offset: u64, len: u64) -> io::Result<Vec<u8>> {
    let end = offset.checked_add(len).filter(|&e| e <= blob.size()).ok_or(io::ErrorKind::UnexpectedEof)?;
    let mut buf = vec![0; (end - offset) as usize];
    blob.read_at(&mut buf, offset)?;
    Ok(buf)
}
