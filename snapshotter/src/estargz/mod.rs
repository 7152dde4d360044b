//! eStargz layers (stargz-snapshotter's `estargz` package): a gzip layer that any tar reader can
//! unpack, laid out so that each file can be fetched and decompressed on its own.
//!
//! Layout, as `ctr-remote image convert --oci --estargz` (stargz-snapshotter 0.12) writes it and
//! as [`write()`] writes it:
//!
//! ```text
//! member 0:   tar header(s) up to and including the first non-empty regular file's header
//! member 1:   that file's first chunk (innerOffset 0), its tar padding, the headers of the
//!             entries that follow, up to and including the next non-empty file's header
//! member ...: one member per chunk of each regular file (TOC `offset` = the member's start)
//! TOC member: a tar holding one regular file `stargz.index.json` (the JSON TOC), then the
//!             end-of-archive marker
//! footer:     51 bytes, an empty gzip member whose Extra field is
//!             `SG` + LE16 22 + `%016x` (TOC member offset) + `STARGZ`
//! ```
//!
//! `ctr-remote` compresses the layer in parallel parts, so a member also ends at each part's end
//! (for instance right after a chunk's padding); [`write()`] writes one part.
//! Every chunk's payload starts at the very beginning of its member, so the `innerOffset` of
//! those layers is 0 (the field is absent); newer stargz-snapshotters pack small files into one
//! member and give the position with `innerOffset`, which [`read_chunk`] honours. The legacy
//! stargz footer (47 bytes: the Extra field is only `%016xSTARGZ`) is accepted too. A layer
//! opens with the file `.no.prefetch.landmark`, or has the file `.prefetch.landmark` right after
//! the files to prefetch (which come first); both hold the one byte 0x0f. The image manifest annotates the layer with the sha256 of the TOC JSON.

mod reader;
mod writer;

pub use reader::{open, read_chunk, EstargzIndex, MAX_CHUNK_SIZE, MAX_INNER_OFFSET, MAX_TOC_COMPRESSED, MAX_TOC_UNCOMPRESSED};
pub use writer::{write, WriteOptions, Written};

use std::io::Read;

use crate::Error;

/// The name of the TOC inside the TOC member's tar.
pub const TOC_TAR_NAME: &str = "stargz.index.json";
/// Manifest layer annotation: sha256 of the uncompressed TOC JSON.
pub const TOC_DIGEST_ANNOTATION: &str = "containerd.io/snapshot/stargz/toc.digest";
/// Manifest layer annotation: size of the layer's decompressed stream.
pub const UNCOMPRESSED_SIZE_ANNOTATION: &str = "io.containers.estargz.uncompressed-size";
/// Marks the end of the files to prefetch.
pub const PREFETCH_LANDMARK: &str = ".prefetch.landmark";
/// Says the layer has no files to prefetch.
pub const NO_PREFETCH_LANDMARK: &str = ".no.prefetch.landmark";
/// The one byte of content of both landmark files.
pub const LANDMARK_CONTENT: u8 = 0x0f;
pub const FOOTER_SIZE: u64 = 51;
pub const LEGACY_FOOTER_SIZE: u64 = 47;

/// The eStargz footer pointing at the TOC member at `toc_offset`: byte for byte what Go's
/// `compress/gzip` writes with `NoCompression` (header with FEXTRA, an empty stored block,
/// CRC 0, size 0).
pub fn footer(toc_offset: u64) -> [u8; FOOTER_SIZE as usize] {
    let mut f = [0u8; FOOTER_SIZE as usize];
    f[..4].copy_from_slice(&[0x1f, 0x8b, 0x08, 0x04]);
    f[9] = 0xff; // OS: unknown
    f[10..12].copy_from_slice(&26u16.to_le_bytes());
    f[12..14].copy_from_slice(b"SG");
    f[14..16].copy_from_slice(&22u16.to_le_bytes());
    f[16..38].copy_from_slice(format!("{toc_offset:016x}STARGZ").as_bytes());
    f[38..43].copy_from_slice(&[0x01, 0x00, 0x00, 0xff, 0xff]);
    f
}

/// The legacy stargz footer (47 bytes).
pub fn legacy_footer(toc_offset: u64) -> [u8; LEGACY_FOOTER_SIZE as usize] {
    let mut f = [0u8; LEGACY_FOOTER_SIZE as usize];
    f[..4].copy_from_slice(&[0x1f, 0x8b, 0x08, 0x04]);
    f[9] = 0xff;
    f[10..12].copy_from_slice(&22u16.to_le_bytes());
    f[12..34].copy_from_slice(format!("{toc_offset:016x}STARGZ").as_bytes());
    f[34..39].copy_from_slice(&[0x01, 0x00, 0x00, 0xff, 0xff]);
    f
}

/// Parses a footer of either size (`f.len()` is 51 or 47) into the TOC offset it names.
/// Strict: gzip magic, FLG = FEXTRA only, the exact Extra length and layout, 16 hex digits,
/// `STARGZ`, and a body that is a complete gzip member decompressing to nothing with a correct
/// CRC and size, ending exactly at the end of the blob.
pub fn parse_footer(f: &[u8]) -> Result<u64, Error> {
    let bad = |why: String| Error::malformed("eStargz footer", why);
    let (xlen, subfield) = match f.len() as u64 {
        FOOTER_SIZE => (26usize, 16usize),
        LEGACY_FOOTER_SIZE => (22, 12),
        n => return Err(bad(format!("{n} bytes, not {FOOTER_SIZE} or {LEGACY_FOOTER_SIZE}"))),
    };
    if f[..3] != [0x1f, 0x8b, 0x08] {
        return Err(bad("no gzip magic".into()));
    }
    if f[3] != 0x04 {
        return Err(bad(format!("gzip flags {:#04x}, expected FEXTRA only", f[3])));
    }
    let got_xlen = u16::from_le_bytes([f[10], f[11]]) as usize;
    if got_xlen != xlen {
        return Err(bad(format!("extra field of {got_xlen} bytes, expected {xlen}")));
    }
    if subfield == 16 {
        let len = u16::from_le_bytes([f[14], f[15]]);
        if &f[12..14] != b"SG" || len != 22 {
            return Err(bad("extra field is not an `SG` subfield of 22 bytes".into()));
        }
    }
    let hex_part = &f[subfield..subfield + 16];
    if &f[subfield + 16..subfield + 22] != b"STARGZ" {
        return Err(bad("no STARGZ magic".into()));
    }
    if !hex_part.iter().all(u8::is_ascii_hexdigit) {
        return Err(bad(format!("TOC offset {:?} is not 16 hex digits", String::from_utf8_lossy(hex_part))));
    }
    let text = std::str::from_utf8(hex_part).map_err(|_| bad("TOC offset is not text".into()))?;
    let offset = u64::from_str_radix(text, 16).map_err(|e| bad(format!("TOC offset {text:?}: {e}")))?;
    // The rest must be a well-formed, empty gzip member (this checks the CRC and size too).
    let mut dec = flate2::bufread::GzDecoder::new(f);
    let mut out = Vec::new();
    (&mut dec).take(1).read_to_end(&mut out).map_err(|e| bad(format!("not a gzip member: {e}")))?;
    if !out.is_empty() {
        return Err(bad("the footer's gzip member is not empty".into()));
    }
    if !dec.into_inner().is_empty() {
        return Err(bad("bytes after the footer's gzip member".into()));
    }
    Ok(offset)
}

#[cfg(test)]
mod tests;
