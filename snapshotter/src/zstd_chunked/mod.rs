//! zstd:chunked layers, as containers/storage (podman, buildah) and stargz-snapshotter write them.
//!
//! Layout: zstd frames; each regular file's content starts a new frame, and each chunk of it is
//! its own frame, so the layer still decompresses with stock `zstd -d` into the original tar.
//! Then skippable frames: the zstd-compressed TOC ("manifest"), optionally tar-split data, and a
//! footer. The footer is 64 bytes (`GNUlInUx`, current containers/storage) or 40 bytes
//! (`GnUlInUx`, older writers such as stargz-snapshotter 0.12); both are read.
//!
//! Trust: the TOC is verified against the `manifest-checksum` annotation of the image manifest
//! (sha256 of the compressed TOC bytes) before anything in it is believed.

mod writer;

use std::collections::BTreeMap;
use std::io::Read;

use p2p_node::Digest;
pub use writer::{write_tar, ChunkedWriter, ContentReader, WriteOptions, Written};

use crate::blob::{read_vec, ReadAt};
use crate::toc::{RawToc, Toc};
use crate::Error;

pub const SKIPPABLE_MAGIC: [u8; 4] = [0x50, 0x2a, 0x4d, 0x18];
const MAGIC_V2: &[u8; 8] = b"GNUlInUx";
const MAGIC_V1: &[u8; 8] = b"GnUlInUx";
pub const ANNOTATION_CHECKSUM: &str = "io.github.containers.zstd-chunked.manifest-checksum";
pub const ANNOTATION_POSITION: &str = "io.github.containers.zstd-chunked.manifest-position";
pub const ANNOTATION_TARSPLIT_POSITION: &str = "io.github.containers.zstd-chunked.tarsplit-position";
const LEGACY_CHECKSUM: &str = "io.containers.zstd-chunked.manifest-checksum";
const LEGACY_POSITION: &str = "io.containers.zstd-chunked.manifest-position";
/// The CRFS-compatible TOC, the only manifest type there is.
const MANIFEST_TYPE_CRFS: u64 = 1;
/// Bounds on the TOC before it is fetched or decompressed.
pub const MAX_TOC_COMPRESSED: u64 = 64 << 20;
pub const MAX_TOC: u64 = 256 << 20;

/// Where the TOC is: offset and length of its compressed bytes, and its uncompressed length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TocPosition {
    pub offset: u64,
    pub length: u64,
    pub uncompressed: u64,
}

/// An opened zstd:chunked layer.
#[derive(Debug, Clone)]
pub struct ZstdChunkedIndex {
    pub toc: Toc,
    /// sha256 of the compressed TOC bytes (what the manifest annotation names).
    pub toc_digest: Digest,
    pub position: TocPosition,
}

/// The TOC checksum and position a layer descriptor's annotations give, if it is zstd:chunked.
pub fn from_annotations(annotations: &BTreeMap<String, String>) -> Result<Option<(Digest, TocPosition)>, Error> {
    let get = |k1: &str, k2: &str| annotations.get(k1).or_else(|| annotations.get(k2));
    let (Some(sum), Some(pos)) = (get(ANNOTATION_CHECKSUM, LEGACY_CHECKSUM), get(ANNOTATION_POSITION, LEGACY_POSITION)) else {
        return Ok(None);
    };
    let bad = |why: &str| Error::malformed("zstd:chunked annotations", format!("{why}: {pos:?}"));
    let digest: Digest = sum.parse().map_err(|_| Error::malformed("zstd:chunked annotations", format!("bad manifest-checksum {sum:?}")))?;
    let parts: Vec<u64> = pos.split(':').map(|p| p.parse::<u64>()).collect::<Result<_, _>>().map_err(|_| bad("position is not numbers"))?;
    match parts[..] {
        [offset, length, uncompressed, MANIFEST_TYPE_CRFS] => Ok(Some((digest, TocPosition { offset, length, uncompressed }))),
        [_, _, _, _] => Err(bad("unsupported manifest type")),
        _ => Err(bad("expected offset:length:uncompressed:type")),
    }
}

/// Reads the footer at the end of the blob (either version).
pub fn read_footer(blob: &dyn ReadAt) -> Result<TocPosition, Error> {
    let size = blob.size();
    let bad = |why: String| Error::malformed("zstd:chunked footer", why);
    for (content_len, magic) in [(64u64, MAGIC_V2), (40, MAGIC_V1)] {
        let total = content_len + 8;
        if size < total {
            continue;
        }
        let f = read_vec(blob, size - total, total).map_err(|e| Error::io("reading the zstd:chunked footer", e))?;
        if &f[total as usize - 8..] != magic {
            continue;
        }
        if f[..4] != SKIPPABLE_MAGIC || u32::from_le_bytes([f[4], f[5], f[6], f[7]]) as u64 != content_len {
            return Err(bad("the footer is not a skippable frame of the right size".into()));
        }
        let n = |i: usize| u64::from_le_bytes(f[8 + i * 8..16 + i * 8].try_into().unwrap_or([0; 8]));
        if n(3) != MANIFEST_TYPE_CRFS {
            return Err(bad(format!("unsupported manifest type {}", n(3))));
        }
        return Ok(TocPosition { offset: n(0), length: n(1), uncompressed: n(2) });
    }
    Err(bad("no zstd:chunked footer magic at the end of the blob".into()))
}

/// Opens a zstd:chunked layer: locates the TOC (annotations, else footer), checks it against
/// `expected` (the manifest-checksum annotation) when given, and validates it.
pub fn open(blob: &dyn ReadAt, position: Option<TocPosition>, expected: Option<&Digest>) -> Result<ZstdChunkedIndex, Error> {
    let pos = match position {
        Some(p) => p,
        None => read_footer(blob)?,
    };
    if pos.length > MAX_TOC_COMPRESSED {
        return Err(Error::TooLarge { what: "zstd:chunked TOC".into(), size: pos.length, limit: MAX_TOC_COMPRESSED });
    }
    if pos.uncompressed > MAX_TOC {
        return Err(Error::TooLarge { what: "zstd:chunked TOC (uncompressed)".into(), size: pos.uncompressed, limit: MAX_TOC });
    }
    let frame_start = pos
        .offset
        .checked_sub(8)
        .ok_or_else(|| Error::malformed("zstd:chunked TOC position", "offset before the skippable frame header"))?;
    if pos.offset.checked_add(pos.length).is_none_or(|end| end > blob.size()) {
        return Err(Error::malformed(
            "zstd:chunked TOC position",
            format!("{}+{} past the {}-byte blob", pos.offset, pos.length, blob.size()),
        ));
    }
    let header = read_vec(blob, frame_start, 8).map_err(|e| Error::io("reading the TOC frame header", e))?;
    if header[..4] != SKIPPABLE_MAGIC || u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as u64 != pos.length {
        return Err(Error::malformed("zstd:chunked TOC position", "no skippable frame of that length there"));
    }
    let compressed = read_vec(blob, pos.offset, pos.length).map_err(|e| Error::io("reading the zstd:chunked TOC", e))?;
    let toc_digest = Digest::of(&compressed);
    if let Some(expected) = expected {
        if *expected != toc_digest {
            return Err(Error::DigestMismatch { what: "the zstd:chunked TOC".into(), expected: *expected, got: toc_digest });
        }
    }
    let json = decompress_bounded(&compressed, pos.uncompressed.min(MAX_TOC), "the zstd:chunked TOC")?;
    let raw: RawToc = serde_json::from_slice(&json).map_err(|e| Error::malformed("zstd:chunked TOC", e.to_string()))?;
    let toc = Toc::from_raw(&raw, frame_start)?;
    Ok(ZstdChunkedIndex { toc, toc_digest, position: pos })
}

/// Decompresses zstd `data`, refusing more than `limit` bytes of output.
pub fn decompress_bounded(data: &[u8], limit: u64, what: &str) -> Result<Vec<u8>, Error> {
    let decoder = zstd::stream::read::Decoder::with_buffer(data).map_err(|e| Error::io(format!("decompressing {what}"), e))?;
    let mut out = Vec::new();
    decoder.take(limit + 1).read_to_end(&mut out).map_err(|e| Error::malformed("zstd stream", format!("{what}: {e}")))?;
    if out.len() as u64 > limit {
        return Err(Error::TooLarge { what: what.to_string(), size: out.len() as u64, limit });
    }
    Ok(out)
}

#[cfg(test)]
mod tests;

/// Reads one chunk: fetches its frames, decompresses at most what the chunk needs, and returns the
/// bytes only if they match the chunk digest.
pub fn read_chunk(blob: &dyn ReadAt, chunk: &crate::toc::Chunk) -> Result<Vec<u8>, Error> {
    let frame = read_frame(blob, &chunk.blob_range, chunk.inner_offset + chunk.size)?;
    cut_chunk(&frame, chunk)
}

/// The first `len` decompressed bytes of the zstd frames at `range` (not verified: several
/// chunks may share them, see [`cut_chunk`]).
pub fn read_frame(blob: &dyn ReadAt, range: &std::ops::Range<u64>, len: u64) -> Result<Vec<u8>, Error> {
    let what = || format!("chunk at {}..{} of the layer", range.start, range.end);
    let compressed = read_vec(blob, range.start, range.end - range.start).map_err(|e| Error::io(what(), e))?;
    let decoder = zstd::stream::read::Decoder::with_buffer(&compressed[..]).map_err(|e| Error::io(what(), e))?;
    let mut out = Vec::with_capacity(len as usize);
    decoder.take(len).read_to_end(&mut out).map_err(|e| Error::malformed("zstd stream", format!("{}: {e}", what())))?;
    if (out.len() as u64) < len {
        return Err(Error::malformed("zstd stream", format!("{} holds {} bytes, {len} expected", what(), out.len())));
    }
    Ok(out)
}

/// `chunk`'s bytes out of its decompressed frame, if they match the chunk digest.
pub fn cut_chunk(frame: &[u8], chunk: &crate::toc::Chunk) -> Result<Vec<u8>, Error> {
    let what = || format!("chunk at {}..{} of the layer", chunk.blob_range.start, chunk.blob_range.end);
    let Some(data) = frame.get(chunk.inner_offset as usize..(chunk.inner_offset + chunk.size) as usize) else {
        let want = chunk.inner_offset + chunk.size;
        return Err(Error::malformed("zstd stream", format!("{} holds {} bytes, {want} expected", what(), frame.len())));
    };
    let got = Digest::of(data);
    if got != chunk.digest {
        return Err(Error::DigestMismatch { what: what(), expected: chunk.digest, got });
    }
    Ok(data.to_vec())
}
