//! The validated table of contents of a lazy layer: what [`raw::RawToc`] says, checked once so
//! that every later reader can rely on it.
//!
//! Invariants of a [`Toc`]: every name is a clean relative path (no `..`, no `.`, no empty or
//! absolute component); every regular file's chunks are contiguous, cover exactly its size,
//! carry a sha256 digest from the TOC, and point inside the blob's data region; sizes and counts
//! are below fixed limits. A TOC that breaks any of these is refused, never repaired.

pub mod raw;
mod time;

use std::collections::BTreeMap;
use std::ops::Range;

use base64::Engine as _;
use p2p_node::Digest;
pub use raw::{RawEntry, RawToc};
pub use time::Timestamp;

use crate::Error;

/// Limits that keep a hostile TOC from exhausting memory or overflowing arithmetic.
pub const MAX_ENTRIES: usize = 4_000_000;
pub const MAX_FILE_SIZE: u64 = 1 << 40;
pub const MAX_PATH: usize = 4096;
pub const MAX_XATTR_VALUE: usize = 64 * 1024;
/// A chunk is read, decompressed and verified whole: bounded, so one read never needs gigabytes.
/// A layer with bigger chunks is refused for lazy loading (and pulled the ordinary way).
pub const MAX_CHUNK: u64 = 64 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    Reg,
    Symlink,
    Hardlink,
    Char,
    Block,
    Fifo,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "dir" => Kind::Dir,
            "reg" => Kind::Reg,
            "symlink" => Kind::Symlink,
            "hardlink" => Kind::Hardlink,
            "char" => Kind::Char,
            "block" => Kind::Block,
            "fifo" => Kind::Fifo,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Dir => "dir",
            Kind::Reg => "reg",
            Kind::Symlink => "symlink",
            Kind::Hardlink => "hardlink",
            Kind::Char => "char",
            Kind::Block => "block",
            Kind::Fifo => "fifo",
        }
    }
}

/// One file-system object of the layer.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Clean relative path (`usr/bin/python3`); never empty.
    pub name: String,
    pub kind: Kind,
    pub size: u64,
    /// Permission bits plus setuid/setgid/sticky (`0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: Timestamp,
    /// Symlink target (as stored) or hardlink target (a clean path of an earlier entry).
    pub link_name: String,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// sha256 of the whole content (regular files with content).
    pub digest: Option<Digest>,
    /// The content's chunks, in file order (regular files with content).
    pub chunks: Vec<Chunk>,
}

/// A piece of a regular file stored as its own compressed stream (zstd frames or gzip member).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Where in the file this chunk starts.
    pub file_offset: u64,
    /// Uncompressed length.
    pub size: u64,
    /// The compressed bytes to fetch from the blob.
    pub blob_range: Range<u64>,
    /// Where the chunk's data starts in the decompressed stream at `blob_range.start`.
    pub inner_offset: u64,
    /// sha256 of the chunk's uncompressed bytes.
    pub digest: Digest,
    /// Read at startup: prefetch it first.
    pub prefetch: bool,
}

/// A validated table of contents.
#[derive(Debug, Clone, PartialEq)]
pub struct Toc {
    pub entries: Vec<Entry>,
}

/// Cleans a tar/TOC path: strips leading `./` and `/` and a trailing `/`; refuses `..`, `.`,
/// empty components, NUL and overlong names. The layer root is `""`.
pub fn clean_path(raw: &str) -> Result<String, Error> {
    let unsafe_path = |why| Error::UnsafePath { path: raw.chars().take(300).collect(), why };
    if raw.len() > MAX_PATH {
        return Err(unsafe_path("longer than 4096 bytes"));
    }
    if raw.contains('\0') {
        return Err(unsafe_path("contains NUL"));
    }
    let mut s = raw;
    loop {
        if let Some(rest) = s.strip_prefix("./") {
            s = rest;
        } else if let Some(rest) = s.strip_prefix('/') {
            s = rest;
        } else {
            break;
        }
    }
    let s = s.strip_suffix('/').unwrap_or(s);
    if s.is_empty() || s == "." {
        return Ok(String::new());
    }
    for c in s.split('/') {
        match c {
            "" => return Err(unsafe_path("empty path component")),
            "." => return Err(unsafe_path("'.' path component")),
            ".." => return Err(unsafe_path("'..' path component")),
            c if c.len() > 255 => return Err(unsafe_path("component longer than 255 bytes")),
            _ => {}
        }
    }
    Ok(s.to_string())
}

fn non_negative(what: &'static str, v: i64, max: u64) -> Result<u64, Error> {
    u64::try_from(v).ok().filter(|&v| v <= max).ok_or_else(|| Error::malformed("TOC", format!("{what} {v} out of range")))
}

fn parse_digest(what: &str, s: &str) -> Result<Digest, Error> {
    s.parse().map_err(|_| Error::malformed("TOC", format!("bad digest {s:?} for {what}")))
}

impl Toc {
    /// Validates `raw`. `data_end` is where the layer's file data ends (the TOC's own position);
    /// every chunk must lie before it.
    pub fn from_raw(raw: &RawToc, data_end: u64) -> Result<Toc, Error> {
        if raw.version != 1 {
            return Err(Error::malformed("TOC", format!("unsupported version {}", raw.version)));
        }
        if raw.entries.len() > MAX_ENTRIES {
            return Err(Error::TooLarge { what: "TOC".into(), size: raw.entries.len() as u64, limit: MAX_ENTRIES as u64 });
        }
        // Each data stream ends where the next one (or the TOC) begins.
        let mut starts: Vec<u64> = raw.entries.iter().filter(|e| e.offset > 0).map(|e| e.offset as u64).collect();
        starts.push(data_end);
        starts.sort_unstable();
        starts.dedup();
        let stream_end = |start: u64| starts.iter().copied().find(|&s| s > start);

        let prefetch_until = raw.entries.iter().position(|e| clean_path(&e.name).is_ok_and(|n| n == ".prefetch.landmark"));
        let mut entries: Vec<Entry> = Vec::with_capacity(raw.entries.len());
        let mut names: std::collections::HashSet<String> = std::collections::HashSet::new();
        let mut i = 0;
        while i < raw.entries.len() {
            let r = &raw.entries[i];
            let name = clean_path(&r.name)?;
            if r.kind == "chunk" {
                return Err(Error::malformed("TOC", format!("chunk entry for {name:?} follows no regular file")));
            }
            let kind =
                Kind::parse(&r.kind).ok_or_else(|| Error::malformed("TOC", format!("unknown entry type {:?} for {name:?}", r.kind)))?;
            // The chunk entries that follow a regular file belong to it.
            let mut j = i + 1;
            while j < raw.entries.len() && raw.entries[j].kind == "chunk" {
                j += 1;
            }
            if name.is_empty() {
                i = j; // the layer root itself: nothing to create
                continue;
            }
            let mut e = Entry {
                name: name.clone(),
                kind,
                size: non_negative("size", r.size, MAX_FILE_SIZE)?,
                mode: (non_negative("mode", r.mode, u32::MAX as u64)? & 0o7777) as u32,
                uid: non_negative("uid", r.uid, u32::MAX as u64)? as u32,
                gid: non_negative("gid", r.gid, u32::MAX as u64)? as u32,
                mtime: if r.modtime.is_empty() { Timestamp::default() } else { Timestamp::parse(&r.modtime)? },
                link_name: r.link_name.clone(),
                dev_major: non_negative("devMajor", r.dev_major, u32::MAX as u64)? as u32,
                dev_minor: non_negative("devMinor", r.dev_minor, u32::MAX as u64)? as u32,
                xattrs: BTreeMap::new(),
                digest: None,
                chunks: Vec::new(),
            };
            for (k, v) in &r.xattrs {
                let value = base64::engine::general_purpose::STANDARD
                    .decode(v)
                    .map_err(|_| Error::malformed("TOC", format!("xattr {k:?} of {name:?} is not base64")))?;
                if value.len() > MAX_XATTR_VALUE {
                    return Err(Error::TooLarge {
                        what: format!("xattr {k} of {name}"),
                        size: value.len() as u64,
                        limit: MAX_XATTR_VALUE as u64,
                    });
                }
                e.xattrs.insert(k.clone(), value);
            }
            match kind {
                Kind::Hardlink => {
                    let target = clean_path(&r.link_name)?;
                    if !names.contains(&target) {
                        return Err(Error::malformed(
                            "TOC",
                            format!("hardlink {name:?} points to {target:?}, which comes nowhere before it"),
                        ));
                    }
                    e.link_name = target;
                }
                Kind::Symlink if r.link_name.is_empty() => return Err(Error::malformed("TOC", format!("symlink {name:?} has no target"))),
                Kind::Reg if e.size > 0 => {
                    let prefetch = prefetch_until.is_some_and(|p| i < p);
                    e.digest = if r.digest.is_empty() { None } else { Some(parse_digest(&name, &r.digest)?) };
                    e.chunks = chunks_of(&e, &raw.entries[i..j], prefetch, &stream_end, data_end)?;
                }
                _ => {}
            }
            if j > i + 1 && !(kind == Kind::Reg && e.size > 0) {
                return Err(Error::malformed("TOC", format!("chunk entries follow {name:?}, which has no content")));
            }
            names.insert(name);
            entries.push(e);
            i = j;
        }
        Ok(Toc { entries })
    }

    /// Every chunk of the layer with the index of its entry, in blob order.
    pub fn chunks(&self) -> impl Iterator<Item = (usize, &Chunk)> {
        self.entries.iter().enumerate().flat_map(|(i, e)| e.chunks.iter().map(move |c| (i, c)))
    }
}

/// The chunks of one regular file: `group[0]` is its `reg` entry, the rest its `chunk` entries.
fn chunks_of(
    e: &Entry,
    group: &[RawEntry],
    prefetch: bool,
    stream_end: &dyn Fn(u64) -> Option<u64>,
    data_end: u64,
) -> Result<Vec<Chunk>, Error> {
    let bad = |why: String| Error::malformed("TOC", format!("{}: {why}", e.name));
    let mut chunks = Vec::with_capacity(group.len());
    let mut expect = 0u64;
    for (k, r) in group.iter().enumerate() {
        if k > 0 && clean_path(&r.name).ok().as_deref() != Some(e.name.as_str()) {
            return Err(bad(format!("chunk entry names {:?}", r.name)));
        }
        let file_offset = non_negative("chunkOffset", r.chunk_offset, MAX_FILE_SIZE)?;
        if file_offset != expect {
            return Err(bad(format!("chunk at {file_offset} where {expect} was expected (chunks must be contiguous)")));
        }
        let size = match non_negative("chunkSize", r.chunk_size, MAX_FILE_SIZE)? {
            0 => e.size - file_offset, // eStargz: the chunk runs to the end of the file
            n => n,
        };
        if size == 0 || file_offset + size > e.size {
            return Err(bad(format!("chunk {file_offset}+{size} outside the {}-byte file", e.size)));
        }
        if size > MAX_CHUNK {
            return Err(Error::TooLarge { what: format!("a chunk of {}", e.name), size, limit: MAX_CHUNK });
        }
        let start = non_negative("offset", r.offset, data_end)?;
        if start == 0 {
            return Err(bad("chunk without an offset".into()));
        }
        // zstd:chunked gives the end of a file's last frame; otherwise the next stream starts it.
        let end = match (k + 1 == group.len(), group[0].end_offset) {
            (true, end) if end > 0 => non_negative("endOffset", end, data_end)?,
            _ => stream_end(start).unwrap_or(data_end),
        };
        if end <= start || end > data_end {
            return Err(bad(format!("compressed range {start}..{end} outside the data region (..{data_end})")));
        }
        let digest = match (&*r.chunk_digest, &e.digest) {
            ("", Some(whole)) if group.len() == 1 => *whole,
            ("", _) => return Err(bad(format!("chunk at {file_offset} has no digest: it could not be verified"))),
            (d, _) => parse_digest(&e.name, d)?,
        };
        let inner_offset = non_negative("innerOffset", r.inner_offset, MAX_CHUNK)?;
        chunks.push(Chunk { file_offset, size, blob_range: start..end, inner_offset, digest, prefetch: prefetch || r.prefetch });
        expect = file_offset + size;
    }
    if expect != e.size {
        return Err(bad(format!("chunks cover {expect} of {} bytes", e.size)));
    }
    Ok(chunks)
}

#[cfg(test)]
mod tests;
