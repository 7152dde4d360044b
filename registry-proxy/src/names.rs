//! Repository names, references and byte ranges, parsed once and validated before anything
//! is sent upstream.

use std::fmt;
use std::ops::Range;

use p2p_node::Digest;

use crate::Error;

/// A repository name as the OCI distribution spec allows it (`library/ubuntu`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Repo(String);

impl Repo {
    pub fn parse(s: &str) -> Result<Repo, Error> {
        let bad = || Error::NameInvalid(s.chars().take(300).collect());
        if s.is_empty() || s.len() > 255 {
            return Err(bad());
        }
        s.split('/').all(valid_component).then(|| Repo(s.to_string())).ok_or_else(bad)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-')) {
            return false;
        }
    }
    true
}

impl fmt::Display for Repo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a manifest request names: a tag (mutable) or a digest (immutable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Tag(String),
    Digest(Digest),
}

impl Reference {
    pub fn parse(s: &str) -> Result<Reference, Error> {
        if s.contains(':') {
            return Ok(Reference::Digest(s.parse()?));
        }
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 128
            && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
            && b.iter().all(|&x| x.is_ascii_alphanumeric() || matches!(x, b'_' | b'.' | b'-'));
        ok.then(|| Reference::Tag(s.to_string())).ok_or_else(|| Error::ReferenceInvalid(s.chars().take(200).collect()))
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => f.write_str(t),
            Reference::Digest(d) => write!(f, "{d}"),
        }
    }
}

/// One byte range as a `Range` header gives it, before the blob size is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=a-b` (inclusive) or `bytes=a-` (`end` = None).
    From { start: u64, end: Option<u64> },
    /// `bytes=-n`: the last n bytes.
    Suffix(u64),
}

impl ByteRange {
    /// Parses a `Range` header value. Only one range is supported.
    pub fn parse(header: &str) -> Result<ByteRange, Error> {
        let bad = |why| Error::RangeInvalid(header.chars().take(100).collect(), why);
        let spec = header.trim().strip_prefix("bytes=").ok_or_else(|| bad("only 'bytes=' ranges are supported"))?;
        if spec.contains(',') {
            return Err(bad("only a single range is supported"));
        }
        let (a, b) = spec.split_once('-').ok_or_else(|| bad("expected 'start-end'"))?;
        let num = |s: &str| -> Result<u64, Error> {
            if s.is_empty() || s.len() > 19 || !s.bytes().all(|c| c.is_ascii_digit()) {
                return Err(bad("positions must be decimal numbers"));
            }
            s.parse().map_err(|_| bad("position out of range"))
        };
        match (a.trim(), b.trim()) {
            ("", n) => Ok(ByteRange::Suffix(num(n)?)),
            (s, "") => Ok(ByteRange::From { start: num(s)?, end: None }),
            (s, e) => {
                let (start, end) = (num(s)?, num(e)?);
                if end < start {
                    return Err(bad("end before start"));
                }
                Ok(ByteRange::From { start, end: Some(end) })
            }
        }
    }

    /// The half-open byte range within a blob of `size` bytes, or 416 when unsatisfiable.
    pub fn resolve(self, size: u64) -> Result<Range<u64>, Error> {
        let r = match self {
            ByteRange::From { start, end } if start < size => start..end.map_or(size, |e| e.saturating_add(1).min(size)),
            ByteRange::Suffix(n) if n > 0 && size > 0 => size.saturating_sub(n)..size,
            _ => 0..0,
        };
        if r.is_empty() {
            return Err(Error::RangeNotSatisfiable { range: format!("{self:?}"), size });
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_names_follow_the_distribution_grammar() {
        for ok in ["a", "library/ubuntu", "my-org/my--img", "a.b_c__d/e0", "x/y/z"] {
            assert!(Repo::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "A", "a/../b", "..", "a/", "/a", "a//b", "a_", "-a", "a.-b", "a___b", "a b", "a%2fb", &"a".repeat(256)] {
            assert!(Repo::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn references_are_tags_or_digests() {
        assert_eq!(Reference::parse("v1.2_x-y").expect("tag"), Reference::Tag("v1.2_x-y".into()));
        assert!(matches!(Reference::parse(&Digest::of(b"x").to_string()), Ok(Reference::Digest(_))));
        for bad in ["", ".x", "-x", "a/b", "sha256:abc", &"t".repeat(129), "a..b/"] {
            assert!(Reference::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ranges_parse_and_resolve() {
        let r = |s: &str| ByteRange::parse(s).and_then(|r| r.resolve(100));
        assert_eq!(r("bytes=0-9").expect("ok"), 0..10);
        assert_eq!(r("bytes=90-").expect("ok"), 90..100);
        assert_eq!(r("bytes=95-1000").expect("ok"), 95..100);
        assert_eq!(r("bytes=-10").expect("ok"), 90..100);
        assert_eq!(r("bytes=-1000").expect("ok"), 0..100);
        for bad in
            ["bytes=100-", "bytes=-0", "bytes=5-2", "bytes=0-1,3-4", "items=0-1", "bytes=x-1", "bytes=99999999999999999999-", "bytes=-"]
        {
            assert!(r(bad).is_err(), "{bad}");
        }
        assert!(ByteRange::parse("bytes=0-0").expect("ok").resolve(0).is_err(), "nothing is satisfiable in an empty blob");
    }
}
