//! Opening an eStargz blob (footer → TOC member → verified TOC) and reading verified chunks.

use std::io::{self, BufReader, Read};

use p2p_node::Digest;

use super::{parse_footer, FOOTER_SIZE, LEGACY_FOOTER_SIZE, TOC_TAR_NAME};
use crate::blob::{read_vec, ReadAt};
use crate::tar::TarReader;
use crate::toc::{clean_path, Chunk, Kind, RawToc, Toc};
use crate::Error;

/// Largest compressed TOC member accepted.
pub const MAX_TOC_COMPRESSED: u64 = 64 << 20;
/// Decompressing the TOC member stops past this many bytes.
pub const MAX_TOC_UNCOMPRESSED: u64 = 256 << 20;
/// Largest chunk [`read_chunk`] returns (upstream writes 4 MiB chunks).
pub const MAX_CHUNK_SIZE: u64 = 1 << 30;
/// Largest `innerOffset` [`read_chunk`] decompresses past.
pub const MAX_INNER_OFFSET: u64 = 256 << 20;

/// An opened eStargz layer.
#[derive(Debug, Clone, PartialEq)]
pub struct EstargzIndex {
    pub toc: Toc,
    /// sha256 of the TOC JSON: what the manifest annotates.
    pub toc_digest: Digest,
    /// Where the TOC member starts; the file data lies before it.
    pub toc_offset: u64,
}

/// Reads the footer, the TOC member and the TOC; checks the TOC against `expected_toc_digest`
/// (the manifest annotation) before parsing it.
pub fn open(blob: &dyn ReadAt, expected_toc_digest: Option<&Digest>) -> Result<EstargzIndex, Error> {
    let size = blob.size();
    let (toc_offset, footer_size) = read_footer(blob, size)?;
    let region = size - footer_size - toc_offset;
    if region > MAX_TOC_COMPRESSED {
        return Err(Error::TooLarge { what: "eStargz TOC member".into(), size: region, limit: MAX_TOC_COMPRESSED });
    }
    let member = read_vec(blob, toc_offset, region).map_err(|e| Error::io("reading the eStargz TOC member", e))?;
    let json = toc_json(&member)?;
    let toc_digest = Digest::of(&json);
    if let Some(&expected) = expected_toc_digest {
        if expected != toc_digest {
            return Err(Error::DigestMismatch { what: format!("eStargz TOC ({TOC_TAR_NAME})"), expected, got: toc_digest });
        }
    }
    let raw: RawToc = serde_json::from_slice(&json).map_err(|e| Error::malformed("eStargz TOC", format!("not TOC JSON: {e}")))?;
    let toc = Toc::from_raw(&raw, toc_offset)?;
    Ok(EstargzIndex { toc, toc_digest, toc_offset })
}

/// The TOC offset and the footer's size: the 51-byte eStargz footer, else the 47-byte legacy one.
fn read_footer(blob: &dyn ReadAt, size: u64) -> Result<(u64, u64), Error> {
    if size < LEGACY_FOOTER_SIZE {
        return Err(Error::malformed("eStargz footer", format!("the blob has {size} bytes, fewer than a footer")));
    }
    let tail_len = size.min(FOOTER_SIZE);
    let tail = read_vec(blob, size - tail_len, tail_len).map_err(|e| Error::io("reading the eStargz footer", e))?;
    let (offset, footer_size) = match tail.len() as u64 == FOOTER_SIZE {
        true => match parse_footer(&tail) {
            Ok(off) => (off, FOOTER_SIZE),
            Err(e) => match parse_footer(&tail[tail.len() - LEGACY_FOOTER_SIZE as usize..]) {
                Ok(off) => (off, LEGACY_FOOTER_SIZE),
                Err(_) => return Err(e),
            },
        },
        false => (parse_footer(&tail)?, LEGACY_FOOTER_SIZE),
    };
    if offset >= size - footer_size {
        return Err(Error::malformed(
            "eStargz footer",
            format!("TOC offset {offset} is not before the footer at {} of the {size}-byte blob", size - footer_size),
        ));
    }
    Ok((offset, footer_size))
}

/// Stops (and remembers it) once more than `left` bytes were read.
struct Limited<R> {
    inner: R,
    left: u64,
    exceeded: bool,
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let max = buf.len().min(usize::try_from(self.left.saturating_add(1)).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        if n as u64 > self.left {
            self.exceeded = true;
            return Err(io::Error::other("decompressed size limit reached"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Gunzips the TOC member (one complete gzip member, CRC checked) and returns the content of
/// its tar's first entry, which must be `stargz.index.json`.
fn toc_json(member: &[u8]) -> Result<Vec<u8>, Error> {
    let mut limited = Limited { inner: flate2::bufread::GzDecoder::new(member), left: MAX_TOC_UNCOMPRESSED, exceeded: false };
    let result = read_toc_tar(&mut limited);
    if limited.exceeded {
        return Err(Error::TooLarge {
            what: "eStargz TOC member (decompressed)".into(),
            size: MAX_TOC_UNCOMPRESSED + 1,
            limit: MAX_TOC_UNCOMPRESSED,
        });
    }
    let json = result.map_err(|e| match e {
        // Reading from memory: an I/O error is the decompressor's verdict on the bytes.
        Error::Io { source, .. } => Error::malformed("eStargz TOC member", source.to_string()),
        e => e,
    })?;
    if !limited.inner.into_inner().is_empty() {
        return Err(Error::malformed("eStargz TOC member", "bytes between the TOC's gzip member and the footer"));
    }
    Ok(json)
}

fn read_toc_tar<R: Read>(r: &mut R) -> Result<Vec<u8>, Error> {
    let mut tar = TarReader::new(&mut *r);
    let e = tar.next_entry()?.ok_or_else(|| Error::malformed("eStargz TOC member", "its tar is empty"))?;
    if e.kind != Some(Kind::Reg) || clean_path(&e.path).ok().as_deref() != Some(TOC_TAR_NAME) {
        return Err(Error::malformed("eStargz TOC member", format!("first entry is {:?}, not {TOC_TAR_NAME}", e.path)));
    }
    if e.size > MAX_TOC_UNCOMPRESSED {
        return Err(Error::TooLarge { what: TOC_TAR_NAME.into(), size: e.size, limit: MAX_TOC_UNCOMPRESSED });
    }
    let mut json = Vec::with_capacity(e.size.min(1 << 20) as usize);
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match tar.content(&mut buf)? {
            0 => break,
            n => json.extend_from_slice(&buf[..n]),
        }
    }
    // Read the rest (padding, end-of-archive marker, gzip trailer) so that the CRC is checked.
    let rest = tar.into_inner();
    io::copy(rest, &mut io::sink()).map_err(|e| Error::io("reading the eStargz TOC member", e))?;
    Ok(json)
}

/// Reads `[pos, end)` of a blob in pieces, keeping the blob's own error apart from the
/// decompressor's.
struct RangeReader<'a> {
    blob: &'a dyn ReadAt,
    pos: u64,
    end: u64,
    error: Option<io::Error>,
}

impl Read for RangeReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(usize::try_from(self.end - self.pos).unwrap_or(usize::MAX));
        if n == 0 {
            return Ok(0);
        }
        if let Err(e) = self.blob.read_at(&mut buf[..n], self.pos) {
            let copy = io::Error::new(e.kind(), e.to_string());
            self.error = Some(e);
            return Err(copy);
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// Decompresses one chunk: the gzip member(s) at `chunk.blob_range`, skipping `inner_offset`
/// bytes and decompressing no more than `inner_offset + size`; checks the chunk digest.
pub fn read_chunk(blob: &dyn ReadAt, chunk: &Chunk) -> Result<Vec<u8>, Error> {
    let range = &chunk.blob_range;
    let what = || format!("eStargz chunk at blob bytes {}..{} (file offset {})", range.start, range.end, chunk.file_offset);
    if chunk.size > MAX_CHUNK_SIZE {
        return Err(Error::TooLarge { what: what(), size: chunk.size, limit: MAX_CHUNK_SIZE });
    }
    if chunk.inner_offset > MAX_INNER_OFFSET {
        return Err(Error::TooLarge { what: format!("innerOffset of the {}", what()), size: chunk.inner_offset, limit: MAX_INNER_OFFSET });
    }
    if range.start >= range.end || range.end > blob.size() {
        return Err(Error::malformed("eStargz chunk", format!("{} outside the {}-byte blob", what(), blob.size())));
    }
    let capacity = (range.end - range.start).min(1 << 20) as usize;
    let src = RangeReader { blob, pos: range.start, end: range.end, error: None };
    let mut dec = flate2::bufread::MultiGzDecoder::new(BufReader::with_capacity(capacity, src));
    let mut data = Vec::with_capacity(chunk.size.min(16 << 20) as usize);
    let result = io::copy(&mut (&mut dec).take(chunk.inner_offset), &mut io::sink())
        .and_then(|skipped| (&mut dec).take(chunk.size).read_to_end(&mut data).map(|_| skipped));
    let skipped = match result {
        Ok(skipped) => skipped,
        Err(e) => {
            if let Some(source) = dec.get_mut().get_mut().error.take() {
                return Err(Error::io(what(), source));
            }
            return Err(Error::malformed("eStargz chunk", format!("{}: {e}", what())));
        }
    };
    if skipped < chunk.inner_offset || (data.len() as u64) < chunk.size {
        return Err(Error::malformed(
            "eStargz chunk",
            format!(
                "{} decompresses to {} bytes; innerOffset {} + size {} are needed",
                what(),
                skipped + data.len() as u64,
                chunk.inner_offset,
                chunk.size
            ),
        ));
    }
    let got = Digest::of(&data);
    if got != chunk.digest {
        return Err(Error::DigestMismatch { what: what(), expected: chunk.digest, got });
    }
    Ok(data)
}
