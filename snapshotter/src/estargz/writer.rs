//! Writing eStargz layers from a tar stream, laid out as stargz-snapshotter lays them out (see the
//! module documentation). Streams: holds one small buffer and the TOC, never a whole file.

use std::collections::BTreeSet;
use std::io::{self, BufReader, Read, Write};

use base64::Engine as _;
use flate2::write::GzEncoder;
use flate2::Compression;
use p2p_node::{Digest, Hasher};

use super::{footer, LANDMARK_CONTENT, NO_PREFETCH_LANDMARK, PREFETCH_LANDMARK, TOC_TAR_NAME};
use crate::tar::{TarEntry, TarReader, BLOCK};
use crate::toc::{clean_path, Kind, RawEntry, RawToc, Timestamp};
use crate::Error;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOptions {
    /// Files larger than this are split into chunks of this size, each its own gzip member.
    pub chunk_size: u64,
    /// gzip level, 0–9 (stargz-snapshotter's default is 9).
    pub level: u32,
    /// Paths to prefetch. The writer streams and does not reorder: `.prefetch.landmark` goes
    /// right after the last of these paths (so they had better come first in the input), and
    /// every path must occur. Empty: `.no.prefetch.landmark` opens the layer.
    pub prioritized: Vec<String>,
}

impl Default for WriteOptions {
    fn default() -> WriteOptions {
        WriteOptions { chunk_size: 4 << 20, level: 9, prioritized: Vec::new() }
    }
}

/// What a written layer is known by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// sha256 of the TOC JSON: the `containerd.io/snapshot/stargz/toc.digest` annotation.
    pub toc_digest: Digest,
    /// sha256 of the whole decompressed stream: the layer's diff ID.
    pub diff_id: Digest,
    /// Length of the decompressed stream (`io.containers.estargz.uncompressed-size`).
    pub uncompressed_size: u64,
    pub compressed_size: u64,
    pub compressed_digest: Digest,
}

/// Counts and digests what goes to the output.
struct Counter<W> {
    inner: W,
    n: u64,
    hash: Hasher,
}

impl<W: Write> Write for Counter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

enum State<W: Write> {
    Closed(Counter<W>),
    Open(GzEncoder<Counter<W>>),
    Failed,
}

/// The output as a sequence of gzip members; tracks the decompressed stream's digest.
struct Members<W: Write> {
    state: State<W>,
    level: Compression,
    diff: Hasher,
    uncompressed: u64,
}

fn out_err(e: io::Error) -> Error {
    Error::io("writing the eStargz layer", e)
}

impl<W: Write> Members<W> {
    /// Appends decompressed bytes to the current member, opening one if none is open.
    fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        if let State::Closed(_) = self.state {
            if let State::Closed(c) = std::mem::replace(&mut self.state, State::Failed) {
                self.state = State::Open(GzEncoder::new(c, self.level));
            }
        }
        let State::Open(gz) = &mut self.state else { return Err(out_err(io::Error::other("an earlier write failed"))) };
        gz.write_all(data).map_err(out_err)?;
        self.diff.update(data);
        self.uncompressed += data.len() as u64;
        Ok(())
    }

    /// Ends the current member (if any); returns the offset the next member will start at.
    fn close(&mut self) -> Result<u64, Error> {
        match std::mem::replace(&mut self.state, State::Failed) {
            State::Open(gz) => self.state = State::Closed(gz.finish().map_err(out_err)?),
            other => self.state = other,
        }
        match &self.state {
            State::Closed(c) => Ok(c.n),
            _ => Err(out_err(io::Error::other("an earlier write failed"))),
        }
    }

    fn into_output(mut self) -> Result<Counter<W>, Error> {
        self.close()?;
        match self.state {
            State::Closed(c) => Ok(c),
            _ => Err(out_err(io::Error::other("an earlier write failed"))),
        }
    }
}

/// A ustar header as Go's `archive/tar` writes it for a `tar.Header{Name, Typeflag: TypeReg,
/// Size}` (what stargz-snapshotter writes for landmarks and the TOC).
pub(super) fn ustar_header(name: &str, size: u64) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len().min(100)].copy_from_slice(&name.as_bytes()[..name.len().min(100)]);
    for (at, field) in [(100, "0000000\0"), (108, "0000000\0"), (116, "0000000\0"), (136, "00000000000\0")] {
        h[at..at + field.len()].copy_from_slice(field.as_bytes());
    }
    h[124..136].copy_from_slice(format!("{:011o}\0", size & 0o77_777_777_777).as_bytes());
    h[156] = b'0';
    h[257..265].copy_from_slice(b"ustar\x0000");
    h[329..337].copy_from_slice(b"0000000\0");
    h[337..345].copy_from_slice(b"0000000\0");
    set_checksum(&mut h);
    h
}

fn set_checksum(h: &mut [u8]) {
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&c| u32::from(c)).sum();
    h[148..156].copy_from_slice(format!("{:06o}\0 ", sum & 0o777_777).as_bytes());
}

/// Rounded to the second, as stargz-snapshotter formats `modtime`.
fn modtime(t: Timestamp) -> String {
    Timestamp { secs: t.secs + i64::from(t.nanos >= 500_000_000), nanos: 0 }.to_rfc3339()
}

fn raw_entry(e: &TarEntry, kind: Kind) -> Result<RawEntry, Error> {
    let id =
        |what: &'static str, v: u64| i64::try_from(v).map_err(|_| Error::malformed("tar stream", format!("{what} {v} of {:?}", e.path)));
    let mut r = RawEntry {
        kind: kind.as_str().into(),
        name: e.path.clone(),
        mode: i64::from(e.mode),
        size: id("size", e.size)?,
        uid: id("uid", e.uid)?,
        gid: id("gid", e.gid)?,
        user_name: e.uname.clone(),
        group_name: e.gname.clone(),
        modtime: modtime(e.mtime),
        ..RawEntry::default()
    };
    if matches!(kind, Kind::Symlink | Kind::Hardlink) {
        r.link_name = e.link_name.clone();
    }
    if matches!(kind, Kind::Char | Kind::Block) {
        r.dev_major = i64::from(e.dev_major);
        r.dev_minor = i64::from(e.dev_minor);
    }
    for (k, v) in &e.xattrs {
        r.xattrs.insert(k.clone(), base64::engine::general_purpose::STANDARD.encode(v));
    }
    Ok(r)
}

/// The entry's header blocks; a non-file's main header that claims content (which the reader
/// skipped) is rewritten to claim none, so that the output stays a valid tar.
fn header_blocks(e: &TarEntry) -> Vec<u8> {
    let mut h = e.header_bytes.clone();
    let main = h.len().saturating_sub(BLOCK as usize);
    if e.kind != Some(Kind::Reg) && h.len() >= BLOCK as usize && h[main + 124..main + 136].iter().any(|&c| !matches!(c, b'0' | b' ' | 0)) {
        h[main + 124..main + 136].copy_from_slice(b"00000000000\0");
        set_checksum(&mut h[main..]);
    }
    h
}

fn write_landmark<W: Write>(m: &mut Members<W>, toc: &mut RawToc, name: &str) -> Result<(), Error> {
    m.write(&ustar_header(name, 1))?;
    let offset = m.close()?;
    let mut block = [0u8; BLOCK as usize];
    block[0] = LANDMARK_CONTENT;
    m.write(&block)?;
    let digest = Digest::of(&[LANDMARK_CONTENT]).to_string();
    toc.entries.push(RawEntry {
        kind: "reg".into(),
        name: name.into(),
        size: 1,
        offset: offset as i64,
        digest: digest.clone(),
        chunk_digest: digest,
        ..RawEntry::default()
    });
    Ok(())
}

/// Converts the tar stream `tar` into an eStargz layer written to `out`.
pub fn write(tar: impl Read, out: impl Write, opts: &WriteOptions) -> Result<Written, Error> {
    if opts.chunk_size == 0 || opts.chunk_size > super::MAX_CHUNK_SIZE {
        return Err(Error::malformed("eStargz write options", format!("chunk size {}", opts.chunk_size)));
    }
    let mut pending = BTreeSet::new();
    for p in &opts.prioritized {
        pending.insert(clean_path(p)?);
    }
    let prefetch = !pending.is_empty();
    let counter = Counter { inner: out, n: 0, hash: Hasher::new() };
    let mut m = Members { state: State::Closed(counter), level: Compression::new(opts.level.min(9)), diff: Hasher::new(), uncompressed: 0 };
    let mut toc = RawToc { version: 1, ..RawToc::default() };
    if !prefetch {
        write_landmark(&mut m, &mut toc, NO_PREFETCH_LANDMARK)?;
    }
    let mut tr = TarReader::new(BufReader::with_capacity(64 << 10, tar));
    let mut buf = vec![0u8; opts.chunk_size.min(64 << 10) as usize];
    while let Some(e) = tr.next_entry()? {
        let kind = e.kind.ok_or_else(|| Error::malformed("tar stream", format!("no type for {:?}", e.path)))?;
        m.write(&header_blocks(&e))?;
        let mut ent = raw_entry(&e, kind)?;
        if kind == Kind::Reg && e.size == 0 {
            ent.digest = Digest::of(b"").to_string();
        }
        if kind != Kind::Reg || e.size == 0 {
            toc.entries.push(ent);
        } else {
            let first = toc.entries.len();
            let mut whole = Hasher::new();
            let mut written = 0u64;
            while written < e.size {
                let offset = m.close()?; // each chunk starts a new member
                let this = opts.chunk_size.min(e.size - written);
                let mut part = Hasher::new();
                let mut left = this;
                while left > 0 {
                    let want = left.min(buf.len() as u64) as usize;
                    let n = tr.content(&mut buf[..want])?;
                    if n == 0 {
                        return Err(Error::malformed("tar stream", format!("{:?} ends early", e.path)));
                    }
                    m.write(&buf[..n])?;
                    part.update(&buf[..n]);
                    whole.update(&buf[..n]);
                    left -= n as u64;
                }
                let mut c = match written {
                    0 => ent.clone(),
                    _ => RawEntry { kind: "chunk".into(), name: e.path.clone(), ..RawEntry::default() },
                };
                c.offset = offset as i64;
                c.chunk_offset = written as i64;
                c.chunk_size = if this == opts.chunk_size { this as i64 } else { 0 };
                c.chunk_digest = part.finish().to_string();
                toc.entries.push(c);
                written += this;
            }
            toc.entries[first].digest = whole.finish().to_string();
            m.write(&vec![0u8; tr.padding() as usize])?;
        }
        if prefetch && !pending.is_empty() && clean_path(&e.path).is_ok_and(|p| pending.remove(&p)) && pending.is_empty() {
            write_landmark(&mut m, &mut toc, PREFETCH_LANDMARK)?;
        }
    }
    if let Some(missing) = pending.first() {
        return Err(Error::malformed("eStargz write options", format!("prioritized path {missing:?} is not in the layer")));
    }

    // The TOC member: a tar with stargz.index.json and the end-of-archive marker.
    let toc_offset = m.close()?;
    let mut json = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut json, serde_json::ser::PrettyFormatter::with_indent(b"\t"));
    serde::Serialize::serialize(&toc, &mut ser).map_err(|e| Error::malformed("eStargz TOC", e.to_string()))?;
    let toc_digest = Digest::of(&json);
    m.write(&ustar_header(TOC_TAR_NAME, json.len() as u64))?;
    m.write(&json)?;
    let padding = (json.len() as u64).div_ceil(BLOCK) * BLOCK - json.len() as u64;
    m.write(&vec![0u8; padding as usize + 2 * BLOCK as usize])?;
    let (diff_id, uncompressed_size) = (m.diff.clone().finish(), m.uncompressed);
    let mut out = m.into_output()?;
    out.write_all(&footer(toc_offset)).map_err(out_err)?;
    out.flush().map_err(out_err)?;
    Ok(Written { toc_digest, diff_id, uncompressed_size, compressed_size: out.n, compressed_digest: out.hash.finish() })
}
