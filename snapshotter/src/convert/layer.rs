//! Converts one layer's tar stream into zstd:chunked. Without priorities the tar streams
//! straight through. With priorities, the tar is first spooled to a temp file and indexed, then
//! written with the listed files first (each after its parent directories and, for a hardlink,
//! its target), and the rest in their original order.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::Path;

use super::prioritize::Priorities;
use crate::tar::{TarEntry, TarReader};
use crate::toc::{clean_path, Kind};
use crate::zstd_chunked::{ChunkedWriter, ContentReader, WriteOptions, Written};
use crate::Error;

/// Converts `tar` into a zstd:chunked layer written to `out`. `spool_dir` holds the temp file
/// used when `priorities` is not empty.
pub fn convert_layer<W: Write + Send + 'static>(
    tar: impl Read,
    out: W,
    opts: &WriteOptions,
    priorities: &Priorities,
    spool_dir: &Path,
) -> Result<(W, Written), Error> {
    if priorities.is_empty() {
        return crate::zstd_chunked::write_tar(tar, out, opts.clone());
    }
    let spool = Spool::fill(tar, spool_dir)?;
    let (order, ranges) = spool.order(priorities);
    let mut w = ChunkedWriter::new(out, opts.clone());
    let mut file = BufReader::with_capacity(1 << 20, spool.file.try_clone().map_err(|e| Error::io("reopening the spool file", e))?);
    for i in order {
        let s = &spool.entries[i];
        file.seek(SeekFrom::Start(s.content_at)).map_err(|e| Error::io("reading the spool file", e))?;
        w.add(&s.entry, &mut (&mut file).take(s.entry.size), ranges.get(&i).map_or(&[], Vec::as_slice))?;
    }
    w.finish()
}

struct Spooled {
    entry: TarEntry,
    content_at: u64,
}

/// The layer's entries (headers in memory, contents in an unlinked temp file).
struct Spool {
    file: File,
    entries: Vec<Spooled>,
}

impl Spool {
    fn fill(tar: impl Read, dir: &Path) -> Result<Spool, Error> {
        let file = tempfile::tempfile_in(dir).map_err(|e| Error::io(format!("creating a spool file in {}", dir.display()), e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file.try_clone().map_err(|e| Error::io("spool file", e))?);
        let mut reader = TarReader::new(tar);
        let mut entries = Vec::new();
        let mut at = 0u64;
        while let Some(entry) = reader.next_entry()? {
            let n = std::io::copy(&mut ContentReader { tar: &mut reader }, &mut out).map_err(|e| Error::io("spooling a layer", e))?;
            entries.push(Spooled { entry, content_at: at });
            at += n;
        }
        out.flush().map_err(|e| Error::io("spooling a layer", e))?;
        Ok(Spool { file, entries })
    }

    /// Listed entries first (with what they need before them), then the rest in tar order; and
    /// the prefetch ranges of each entry (a listed hardlink's ranges go to its target, which
    /// holds the content).
    fn order(&self, priorities: &Priorities) -> (Vec<usize>, HashMap<usize, Vec<Range<u64>>>) {
        let names: HashMap<String, usize> =
            self.entries.iter().enumerate().filter_map(|(i, s)| Some((clean_path(&s.entry.path).ok()?, i))).collect();
        let mut ranges: HashMap<usize, Vec<Range<u64>>> = HashMap::new();
        let mut placed = vec![false; self.entries.len()];
        let mut order = Vec::with_capacity(self.entries.len());
        fn place(i: usize, order: &mut Vec<usize>, placed: &mut [bool]) {
            if !placed[i] {
                placed[i] = true;
                order.push(i);
            }
        }
        for path in priorities.paths() {
            let Some(&i) = names.get(path) else { continue };
            let mut needs = Vec::new();
            let e = &self.entries[i].entry;
            let mut content_holder = i;
            if e.kind == Some(Kind::Hardlink) {
                if let Some(&t) = clean_path(&e.link_name).ok().and_then(|t| names.get(&t)) {
                    needs.extend(ancestors(&self.entries[t].entry.path, &names));
                    needs.push(t);
                    content_holder = t;
                }
            }
            ranges.entry(content_holder).or_default().extend_from_slice(priorities.ranges(path));
            needs.extend(ancestors(&e.path, &names));
            needs.sort_unstable(); // parents and targets keep their original relative order
            for n in needs {
                place(n, &mut order, &mut placed);
            }
            place(i, &mut order, &mut placed);
        }
        for i in 0..self.entries.len() {
            place(i, &mut order, &mut placed);
        }
        (order, ranges)
    }
}

/// The entries of `path`'s parent directories that the layer has.
fn ancestors(path: &str, names: &HashMap<String, usize>) -> Vec<usize> {
    let clean = clean_path(path).unwrap_or_default();
    let mut out = Vec::new();
    let mut cur = clean.as_str();
    while let Some((parent, _)) = cur.rsplit_once('/') {
        if let Some(&i) = names.get(parent) {
            out.push(i);
        }
        cur = parent;
    }
    out
}
