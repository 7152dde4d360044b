//! The `--prioritize` file: what a workload read at startup, in first-access order. Each line is
//! `PATH` (the whole file) or `PATH OFFSET LENGTH` (a byte range, decimal); a PATH with spaces is
//! written as a JSON string. Blank lines and `#` comments are ignored.

use std::collections::HashMap;
use std::ops::Range;

use crate::toc::clean_path;
use crate::Error;

/// Paths in first-access order, each with the byte ranges read from it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Priorities {
    order: Vec<String>,
    ranges: HashMap<String, Vec<Range<u64>>>,
}

impl Priorities {
    pub fn parse(text: &str) -> Result<Priorities, Error> {
        let mut p = Priorities::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |why: &str| {
                Error::malformed("prioritize file", format!("line {}: {why}: {:?}", i + 1, line.chars().take(200).collect::<String>()))
            };
            let (path, rest) = if line.starts_with('"') {
                let mut de = serde_json::Deserializer::from_str(line).into_iter::<String>();
                let path = de.next().and_then(Result::ok).ok_or_else(|| bad("bad quoted path"))?;
                (path, line[de.byte_offset()..].trim().to_string())
            } else {
                let mut parts = line.splitn(2, char::is_whitespace);
                (parts.next().unwrap_or_default().to_string(), parts.next().unwrap_or_default().trim().to_string())
            };
            let name = clean_path(&path).map_err(|e| bad(&e.to_string()))?;
            if name.is_empty() {
                return Err(bad("the layer root is not a file"));
            }
            let range = match rest.split_whitespace().collect::<Vec<_>>()[..] {
                [] => 0..u64::MAX,
                [off, len] => {
                    let off: u64 = off.parse().map_err(|_| bad("OFFSET is not a number"))?;
                    let len: u64 = len.parse().map_err(|_| bad("LENGTH is not a number"))?;
                    if len == 0 {
                        return Err(bad("LENGTH is 0"));
                    }
                    off..off.saturating_add(len)
                }
                _ => return Err(bad("expected PATH or PATH OFFSET LENGTH")),
            };
            if !p.ranges.contains_key(&name) {
                p.order.push(name.clone());
            }
            p.ranges.entry(name).or_default().push(range);
        }
        Ok(p)
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Listed paths (cleaned), first access first.
    pub fn paths(&self) -> &[String] {
        &self.order
    }

    /// The ranges read from `name` (empty when it is not listed).
    pub fn ranges(&self, name: &str) -> &[Range<u64>] {
        self.ranges.get(name).map_or(&[], Vec::as_slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_files_ranges_and_quoted_paths() {
        let p = Priorities::parse(
            "# startup\n/usr/bin/python3\nusr/lib/libtorch.so 4096 8192\n\n\"/opt/a b\" 0 10\nusr/lib/libtorch.so 0 100\n",
        )
        .expect("ok");
        assert_eq!(p.paths(), ["usr/bin/python3", "usr/lib/libtorch.so", "opt/a b"]);
        assert_eq!(p.ranges("usr/lib/libtorch.so"), [4096..12288, 0..100]);
        assert_eq!(p.ranges("usr/bin/python3"), [0..u64::MAX]);
        assert!(p.ranges("other").is_empty());
    }

    #[test]
    fn garbage_names_its_line() {
        for (text, line) in [("a\nb x\n", 2), ("../etc/shadow\n", 1), ("a 1 0\n", 1), ("a 1 2 3\n", 1), ("/\n", 1), ("\"unterminated\n", 1)]
        {
            let e = Priorities::parse(text).expect_err(text).to_string();
            assert!(e.contains(&format!("line {line}")), "{text:?}: {e}");
        }
    }
}
