//! A streaming tar reader that keeps each entry's raw header bytes (PAX and GNU long-name
//! records included), so a converter can write them back verbatim, and that bounds every size
//! before allocating for it.

use std::collections::BTreeMap;
use std::io::{self, Read};

use crate::toc::{Kind, Timestamp, MAX_FILE_SIZE};
use crate::Error;

pub const BLOCK: u64 = 512;
/// Largest PAX or GNU long-name record this reader accepts.
const MAX_EXTENSION: u64 = 1 << 20;

/// One entry of the archive: its metadata and the raw bytes of all its header blocks.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TarEntry {
    /// Every header block of the entry (extension headers, their data, the main header).
    pub header_bytes: Vec<u8>,
    pub path: String,
    pub kind: Option<Kind>,
    pub size: u64,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub uname: String,
    pub gname: String,
    pub mtime: Timestamp,
    pub link_name: String,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

/// Reads entries one after another; [`TarReader::content`] reads the current entry's data.
pub struct TarReader<R> {
    inner: R,
    /// Content of the current entry not read yet.
    remaining: u64,
    /// Padding after the current entry's content.
    padding: u64,
    finished: bool,
}

fn bad(why: impl Into<String>) -> Error {
    Error::malformed("tar stream", why)
}

fn read_exact_or_eof<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<bool, Error> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(bad("truncated header")),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("reading the tar stream", e)),
        }
    }
    Ok(true)
}

fn field_str(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// Octal (NUL/space terminated) or GNU base-256 numbers.
fn field_num(b: &[u8], what: &str) -> Result<u64, Error> {
    if b.first().is_some_and(|&c| c & 0x80 != 0) {
        if b[0] & 0x40 != 0 {
            return Err(bad(format!("negative {what}")));
        }
        let mut v: u64 = u64::from(b[0] & 0x3f);
        for &c in &b[1..] {
            v = v.checked_mul(256).and_then(|v| v.checked_add(u64::from(c))).ok_or_else(|| bad(format!("{what} overflows")))?;
        }
        return Ok(v);
    }
    let s: String = b.iter().map(|&c| c as char).take_while(|&c| c != '\0').collect();
    let s = s.trim_matches(|c: char| c == ' ');
    if s.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(s, 8).map_err(|_| bad(format!("bad {what} field {s:?}")))
}

fn checksum_ok(h: &[u8; 512]) -> Result<bool, Error> {
    let stored = field_num(&h[148..156], "checksum")?;
    let sum: u64 = h.iter().enumerate().map(|(i, &c)| if (148..156).contains(&i) { u64::from(b' ') } else { u64::from(c) }).sum();
    let signed: i64 = h.iter().enumerate().map(|(i, &c)| if (148..156).contains(&i) { i64::from(b' ') } else { i64::from(c as i8) }).sum();
    Ok(stored == sum || stored as i64 == signed)
}

/// Parses PAX records (`"%d %s=%s\n"`) into `entry`.
fn apply_pax(data: &[u8], e: &mut TarEntry, size_override: &mut Option<u64>) -> Result<(), Error> {
    let mut rest = data;
    while !rest.is_empty() {
        let sp = rest.iter().position(|&c| c == b' ').ok_or_else(|| bad("PAX record without a length"))?;
        let len: usize = std::str::from_utf8(&rest[..sp]).ok().and_then(|s| s.parse().ok()).ok_or_else(|| bad("bad PAX record length"))?;
        if len <= sp + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err(bad("PAX record length does not fit"));
        }
        let record = &rest[sp + 1..len - 1];
        let eq = record.iter().position(|&c| c == b'=').ok_or_else(|| bad("PAX record without '='"))?;
        let key = String::from_utf8_lossy(&record[..eq]).into_owned();
        let value = &record[eq + 1..];
        let text = || String::from_utf8_lossy(value).into_owned();
        let number = |what: &str| text().parse::<u64>().map_err(|_| bad(format!("bad PAX {what}")));
        match key.as_str() {
            "path" => e.path = text(),
            "linkpath" => e.link_name = text(),
            "size" => *size_override = Some(number("size")?),
            "uid" => e.uid = number("uid")?,
            "gid" => e.gid = number("gid")?,
            "uname" => e.uname = text(),
            "gname" => e.gname = text(),
            "mtime" => {
                let t = text();
                let (secs, frac) = t.split_once('.').unwrap_or((&t, ""));
                let secs: i64 = secs.parse().map_err(|_| bad("bad PAX mtime"))?;
                let digits: String = frac.chars().take(9).collect();
                let nanos = if digits.is_empty() {
                    0
                } else {
                    digits.parse::<u32>().map_err(|_| bad("bad PAX mtime"))? * 10u32.pow(9 - digits.len() as u32)
                };
                e.mtime = Timestamp { secs, nanos };
            }
            k if k.starts_with("SCHILY.xattr.") => {
                e.xattrs.insert(k["SCHILY.xattr.".len()..].to_string(), value.to_vec());
            }
            _ => {}
        }
        rest = &rest[len..];
    }
    Ok(())
}

impl<R: Read> TarReader<R> {
    pub fn new(inner: R) -> TarReader<R> {
        TarReader { inner, remaining: 0, padding: 0, finished: false }
    }

    /// The next entry, skipping whatever of the previous entry's content was not read.
    /// `None` at the end-of-archive marker (or at a clean end of the stream).
    pub fn next_entry(&mut self) -> Result<Option<TarEntry>, Error> {
        if self.finished {
            return Ok(None);
        }
        self.skip(self.remaining + self.padding)?;
        self.remaining = 0;
        self.padding = 0;
        let mut e = TarEntry::default();
        let mut long_name: Option<String> = None;
        let mut long_link: Option<String> = None;
        let mut size_override: Option<u64> = None;
        loop {
            let mut h = [0u8; 512];
            if !read_exact_or_eof(&mut self.inner, &mut h)? {
                self.finished = true;
                return if e.header_bytes.is_empty() { Ok(None) } else { Err(bad("stream ends inside an entry's headers")) };
            }
            if h.iter().all(|&c| c == 0) {
                if !e.header_bytes.is_empty() {
                    return Err(bad("end-of-archive marker inside an entry's headers"));
                }
                self.finished = true;
                return Ok(None);
            }
            if !checksum_ok(&h)? {
                return Err(bad("header checksum mismatch"));
            }
            e.header_bytes.extend_from_slice(&h);
            let size = field_num(&h[124..136], "size")?;
            let flag = h[156];
            if matches!(flag, b'x' | b'g' | b'L' | b'K') {
                if size > MAX_EXTENSION {
                    return Err(Error::TooLarge { what: "tar extension header".into(), size, limit: MAX_EXTENSION });
                }
                let padded = size.div_ceil(BLOCK) * BLOCK;
                let mut data = vec![0u8; padded as usize];
                if !read_exact_or_eof(&mut self.inner, &mut data)? {
                    return Err(bad("stream ends inside an extension header"));
                }
                e.header_bytes.extend_from_slice(&data);
                let data = &data[..size as usize];
                match flag {
                    b'x' => apply_pax(data, &mut e, &mut size_override)?,
                    b'L' => long_name = Some(field_str(data)),
                    b'K' => long_link = Some(field_str(data)),
                    _ => {} // global PAX headers apply to nothing we track
                }
                continue;
            }
            // The main header. PAX and GNU records (already applied) win over its fields.
            let pax_path = std::mem::take(&mut e.path);
            let pax_link = std::mem::take(&mut e.link_name);
            let magic = &h[257..263];
            let mut name = field_str(&h[0..100]);
            if magic == b"ustar\0" {
                let prefix = field_str(&h[345..500]);
                if !prefix.is_empty() {
                    name = format!("{prefix}/{name}");
                }
            }
            e.path = if !pax_path.is_empty() { pax_path } else { long_name.take().unwrap_or(name) };
            e.link_name = if !pax_link.is_empty() { pax_link } else { long_link.take().unwrap_or_else(|| field_str(&h[157..257])) };
            e.mode = (field_num(&h[100..108], "mode")? & 0o7777) as u32;
            if e.uid == 0 {
                e.uid = field_num(&h[108..116], "uid")?;
            }
            if e.gid == 0 {
                e.gid = field_num(&h[116..124], "gid")?;
            }
            if e.mtime == Timestamp::default() {
                e.mtime = Timestamp { secs: field_num(&h[136..148], "mtime")? as i64, nanos: 0 };
            }
            if e.uname.is_empty() {
                e.uname = field_str(&h[265..297]);
            }
            if e.gname.is_empty() {
                e.gname = field_str(&h[297..329]);
            }
            e.dev_major = field_num(&h[329..337], "devmajor")?.min(u32::MAX as u64) as u32;
            e.dev_minor = field_num(&h[337..345], "devminor")?.min(u32::MAX as u64) as u32;
            e.kind = match flag {
                b'0' | b'\0' | b'7' => Some(Kind::Reg),
                b'1' => Some(Kind::Hardlink),
                b'2' => Some(Kind::Symlink),
                b'3' => Some(Kind::Char),
                b'4' => Some(Kind::Block),
                b'5' => Some(Kind::Dir),
                b'6' => Some(Kind::Fifo),
                other => return Err(bad(format!("unsupported entry type {:?} for {:?}", other as char, e.path))),
            };
            e.size = size_override.unwrap_or(size);
            if e.size > MAX_FILE_SIZE {
                return Err(Error::TooLarge { what: format!("tar entry {}", e.path), size: e.size, limit: MAX_FILE_SIZE });
            }
            // Only regular files carry content in a layer's tar.
            let content = if e.kind == Some(Kind::Reg) { e.size } else { 0 };
            self.remaining = content;
            self.padding = content.div_ceil(BLOCK) * BLOCK - content;
            if e.kind != Some(Kind::Reg) {
                e.size = 0;
                self.skip(size.div_ceil(BLOCK) * BLOCK)?; // a header claiming data for a non-file
            }
            return Ok(Some(e));
        }
    }

    /// Reads the current entry's content; `Ok(0)` at its end.
    pub fn content(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = buf.len().min(self.remaining as usize);
        let n = loop {
            match self.inner.read(&mut buf[..want]) {
                Ok(0) => return Err(bad("stream ends inside a file's content")),
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io("reading the tar stream", e)),
            }
        };
        self.remaining -= n as u64;
        Ok(n)
    }

    /// The zero padding that follows the current entry's content (after it was read).
    pub fn padding(&self) -> u64 {
        self.padding
    }

    fn skip(&mut self, n: u64) -> Result<(), Error> {
        let copied = io::copy(&mut (&mut self.inner).take(n), &mut io::sink()).map_err(|e| Error::io("reading the tar stream", e))?;
        if copied != n {
            return Err(bad("stream ends inside an entry"));
        }
        Ok(())
    }

    /// Everything after the end-of-archive marker's first block (read to the end).
    pub fn into_inner(self) -> R {
        self.inner
    }
}

#[cfg(test)]
mod tests;
