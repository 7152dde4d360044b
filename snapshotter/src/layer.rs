//! Opens a lazy layer of either format from its descriptor: the annotations (from a manifest
//! verified by digest) say which format it is and give the TOC digest that the TOC must match.
//! A layer without such annotations is not lazy: `Ok(None)`, and it is pulled the ordinary way.

use std::collections::BTreeMap;

use p2p_node::Digest;

use crate::blob::ReadAt;
use crate::toc::{Chunk, Toc};
use crate::{estargz, zstd_chunked, Error};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    ZstdChunked,
    Estargz,
}

/// A lazy layer's verified table of contents.
#[derive(Debug, Clone)]
pub struct LazyLayer {
    pub format: Format,
    pub toc: Toc,
    /// The digest the annotation gave and the TOC matched.
    pub toc_digest: Digest,
}

impl LazyLayer {
    /// Opens `blob` as the lazy layer its `annotations` describe.
    pub fn open(blob: &dyn ReadAt, annotations: &BTreeMap<String, String>) -> Result<Option<LazyLayer>, Error> {
        if let Some((sum, pos)) = zstd_chunked::from_annotations(annotations)? {
            let index = zstd_chunked::open(blob, Some(pos), Some(&sum))?;
            return Ok(Some(LazyLayer { format: Format::ZstdChunked, toc: index.toc, toc_digest: sum }));
        }
        if let Some(d) = annotations.get(estargz::TOC_DIGEST_ANNOTATION) {
            let sum: Digest = d.parse().map_err(|_| Error::malformed("eStargz annotations", format!("bad toc.digest {d:?}")))?;
            let index = estargz::open(blob, Some(&sum))?;
            return Ok(Some(LazyLayer { format: Format::Estargz, toc: index.toc, toc_digest: sum }));
        }
        Ok(None)
    }

    /// A chunk's bytes, verified against its digest.
    pub fn read_chunk(&self, blob: &dyn ReadAt, chunk: &Chunk) -> Result<Vec<u8>, Error> {
        let mut data = self.read_chunks(blob, &[chunk])?;
        Ok(data.pop().unwrap_or_default())
    }

    /// The bytes of `chunks`, which all lie in the same compressed range (small files packed in
    /// one zstd frame), each verified against its digest: the range is fetched and decompressed
    /// once. eStargz layers read each chunk on its own.
    pub fn read_chunks(&self, blob: &dyn ReadAt, chunks: &[&Chunk]) -> Result<Vec<Vec<u8>>, Error> {
        let read = |blob: &dyn ReadAt| -> Result<Vec<Vec<u8>>, Error> {
            match self.format {
                Format::ZstdChunked => {
                    let Some(first) = chunks.first() else { return Ok(Vec::new()) };
                    debug_assert!(chunks.iter().all(|c| c.blob_range == first.blob_range));
                    let len = chunks.iter().map(|c| c.inner_offset + c.size).max().unwrap_or(0);
                    let frame = zstd_chunked::read_frame(blob, &first.blob_range, len)?;
                    chunks.iter().map(|c| zstd_chunked::cut_chunk(&frame, c)).collect()
                }
                Format::Estargz => chunks.iter().map(|c| estargz::read_chunk(blob, c)).collect(),
            }
        };
        match (read(blob), blob.verified()) {
            // Unchecked bytes (from a peer) that fail a chunk's digest: read verified ones.
            (Err(e @ (Error::DigestMismatch { .. } | Error::Malformed { .. })), Some(verified)) => {
                let offset = chunks.first().map(|c| c.blob_range.start);
                tracing::warn!(?offset, error = %e, "a chunk failed verification; reading verified bytes");
                read(verified)
            }
            (result, _) => result,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_format_from_the_annotations_and_verifies_the_toc() {
        let fixture = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/estargz-busybox.layer")).expect("fixture");
        let toc_digest = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/estargz-busybox.layer.toc-digest"))
            .expect("digest");
        let ann = BTreeMap::from([(estargz::TOC_DIGEST_ANNOTATION.to_string(), toc_digest.trim().to_string())]);
        let layer = LazyLayer::open(&fixture, &ann).expect("opens").expect("lazy");
        assert_eq!(layer.format, Format::Estargz);
        let (_, chunk) = layer.toc.chunks().next().expect("a chunk");
        assert_eq!(layer.read_chunk(&fixture, chunk).expect("chunk").len() as u64, chunk.size);

        // Unchecked bytes that fail the chunk digest are read again from the verified source.
        struct Lying(Vec<u8>, Vec<u8>, bool);
        impl ReadAt for Lying {
            fn size(&self) -> u64 {
                self.0.len() as u64
            }
            fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
                self.0.read_at(buf, offset)
            }
            fn verified(&self) -> Option<&dyn ReadAt> {
                self.2.then_some(&self.1 as &dyn ReadAt)
            }
        }
        let mut bad = fixture.clone();
        for b in &mut bad[chunk.blob_range.start as usize..chunk.blob_range.end as usize] {
            *b ^= 0x55;
        }
        assert!(layer.read_chunk(&Lying(bad.clone(), fixture.clone(), false), chunk).is_err(), "bad bytes are refused");
        let good = layer.read_chunk(&fixture, chunk).expect("chunk");
        assert_eq!(layer.read_chunk(&Lying(bad, fixture.clone(), true), chunk).expect("read again, verified"), good);

        let wrong = BTreeMap::from([(estargz::TOC_DIGEST_ANNOTATION.to_string(), Digest::of(b"x").to_string())]);
        assert!(LazyLayer::open(&fixture, &wrong).is_err(), "a TOC that does not match its annotation is refused");
        assert!(LazyLayer::open(&fixture, &BTreeMap::new()).expect("ok").is_none(), "no annotations: not lazy");
    }
}
