//! The FUSE filesystem of one lazy layer: read-only, built from the TOC's [`Tree`]. A read maps to
//! the chunks it covers; each chunk comes from the on-disk cache or from the blob (fetched,
//! decompressed and verified against its digest before any byte of it is returned, then cached).
//! Reads run on their own threads, so one slow chunk does not hold up the others;
//! a chunk that cannot be had is EIO, logged and counted. The kernel keeps the page cache
//! (`FOPEN_KEEP_CACHE`, long attribute and entry timeouts): the layer never changes.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use p2p_node::layers::LazyStats;

use fuser::{FileAttr, FileType, Filesystem, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen, ReplyXattr, Request};

use super::cache::ChunkCache;
use super::recorder::{Access, Recorder};
use super::tree::{xattr_list, NodeKind, Tree};
use crate::blob::ReadAt;
use crate::layer::LazyLayer;
use crate::toc::Entry;

/// The layer is immutable: the kernel may keep names and attributes this long.
const TTL: Duration = Duration::from_secs(3600);
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

pub struct LayerFs {
    tree: Tree,
    pub layer: Arc<LazyLayer>,
    pub blob: Arc<dyn ReadAt>,
    pub cache: Arc<ChunkCache>,
    pub stats: Arc<LazyStats>,
    /// Where reads are recorded, and this layer's number there.
    recorder: Option<(Arc<Recorder>, usize)>,
}

impl LayerFs {
    /// `stats` counts what this layer does (shared with the node's other lazy layers, or not).
    pub fn new(
        layer: Arc<LazyLayer>,
        blob: Arc<dyn ReadAt>,
        cache_dir: PathBuf,
        stats: Arc<LazyStats>,
        recorder: Option<(Arc<Recorder>, usize)>,
    ) -> std::io::Result<LayerFs> {
        let tree = Tree::build(&layer.toc);
        Ok(LayerFs { tree, layer, blob, cache: Arc::new(ChunkCache::open(cache_dir)?), stats, recorder })
    }

    fn entry(&self, ino: u64) -> Option<&Entry> {
        self.tree.get(ino)?.entry.map(|i| &self.layer.toc.entries[i])
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        let node = self.tree.get(ino)?;
        let e = self.entry(ino);
        let (kind, size, rdev) = match node.kind {
            NodeKind::Dir => (FileType::Directory, 4096, 0),
            NodeKind::Reg => (FileType::RegularFile, e.map_or(0, |e| e.size), 0),
            NodeKind::Symlink => (FileType::Symlink, e.map_or(0, |e| e.link_name.len() as u64), 0),
            NodeKind::Char => (FileType::CharDevice, 0, e.map_or(0, |e| makedev(e.dev_major, e.dev_minor))),
            NodeKind::Block => (FileType::BlockDevice, 0, e.map_or(0, |e| makedev(e.dev_major, e.dev_minor))),
            NodeKind::Fifo => (FileType::NamedPipe, 0, 0),
            NodeKind::Whiteout => (FileType::CharDevice, 0, 0),
        };
        let mtime = e.map_or(UNIX_EPOCH, |e| {
            let t = &e.mtime;
            if t.secs >= 0 {
                UNIX_EPOCH + Duration::new(t.secs as u64, t.nanos)
            } else {
                UNIX_EPOCH - Duration::from_secs(t.secs.unsigned_abs())
            }
        });
        let perm = match (node.kind, e) {
            (NodeKind::Whiteout, _) => 0,
            (_, Some(e)) => (e.mode & 0o7777) as u16,
            (_, None) => 0o755,
        };
        Some(FileAttr {
            ino,
            size,
            blocks: size.div_ceil(512),
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: mtime,
            kind,
            perm,
            nlink: node.nlink,
            uid: e.map_or(0, |e| e.uid),
            gid: e.map_or(0, |e| e.gid),
            rdev,
            blksize: 4096,
            flags: 0,
        })
    }
}

fn makedev(major: u32, minor: u32) -> u32 {
    // The kernel's old encoding, which FUSE's 32-bit rdev carries.
    ((major & 0xfff) << 8) | (minor & 0xff) | ((minor & !0xff) << 12)
}

/// Reads `size` bytes at `offset` of `entry` from its verified chunks.
fn read_range(
    entry: &Entry,
    offset: u64,
    size: u32,
    layer: &LazyLayer,
    blob: &dyn ReadAt,
    cache: &ChunkCache,
    stats: &LazyStats,
) -> Result<Vec<u8>, String> {
    let end = (offset + u64::from(size)).min(entry.size);
    if offset >= end {
        return Ok(Vec::new());
    }
    let mut out = vec![0u8; (end - offset) as usize];
    let mut filled = 0usize;
    for chunk in entry.chunks.iter().filter(|c| c.file_offset < end && c.file_offset + c.size > offset) {
        let from = offset.max(chunk.file_offset) - chunk.file_offset;
        let to = end.min(chunk.file_offset + chunk.size) - chunk.file_offset;
        let dst = &mut out[filled..filled + (to - from) as usize];
        // A cached chunk is read in part; a missing one is fetched, verified and kept whole.
        if !cache.read_at(&chunk.digest, dst, from) {
            let d = layer.read_chunk(blob, chunk).map_err(|e| format!("chunk at {} of {}: {e}", chunk.file_offset, entry.name))?;
            stats.chunks_fetched.fetch_add(1, Ordering::Relaxed);
            stats.bytes_fetched.fetch_add(chunk.blob_range.end - chunk.blob_range.start, Ordering::Relaxed);
            cache.put(&chunk.digest, &d);
            dst.copy_from_slice(&d[from as usize..to as usize]);
        }
        filled += (to - from) as usize;
    }
    if filled as u64 != end - offset {
        return Err(format!("the chunks of {} do not cover bytes {offset}..{end}", entry.name));
    }
    Ok(out)
}

impl Filesystem for LayerFs {
    /// Reads of up to 1 MiB (a chunk) per request, and readahead to match.
    fn init(&mut self, _req: &Request<'_>, config: &mut fuser::KernelConfig) -> Result<(), libc::c_int> {
        let _ = config.set_max_readahead(1 << 20);
        // Read-only, but the kernel sizes its requests by the larger of the two.
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn lookup(&mut self, _req: &Request<'_>, parent: u64, name: &OsStr, reply: ReplyEntry) {
        match self.tree.lookup(parent, name).and_then(|ino| self.attr(ino)) {
            Some(attr) => reply.entry(&TTL, &attr, 0),
            None => reply.error(libc::ENOENT),
        }
    }

    fn getattr(&mut self, _req: &Request<'_>, ino: u64, _fh: Option<u64>, reply: ReplyAttr) {
        match self.attr(ino) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(libc::ENOENT),
        }
    }

    fn readlink(&mut self, _req: &Request<'_>, ino: u64, reply: ReplyData) {
        match self.entry(ino) {
            Some(e) if self.tree.node(ino).kind == NodeKind::Symlink => reply.data(e.link_name.as_bytes()),
            _ => reply.error(libc::EINVAL),
        }
    }

    fn open(&mut self, _req: &Request<'_>, ino: u64, flags: i32, reply: ReplyOpen) {
        if flags & libc::O_ACCMODE != libc::O_RDONLY {
            return reply.error(libc::EROFS);
        }
        match self.tree.get(ino) {
            Some(n) if n.kind == NodeKind::Reg => reply.opened(0, fuser::consts::FOPEN_KEEP_CACHE),
            Some(_) => reply.error(libc::EINVAL),
            None => reply.error(libc::ENOENT),
        }
    }

    fn read(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, offset: i64, size: u32, _flags: i32, _lock: Option<u64>, reply: ReplyData) {
        // The thread finds the entry by index in the shared TOC: no copy of its chunk list per read.
        let Some(index) = self.tree.get(ino).and_then(|n| n.entry) else { return reply.error(libc::ENOENT) };
        let (layer, blob, cache, stats) = (self.layer.clone(), self.blob.clone(), self.cache.clone(), self.stats.clone());
        let offset = offset.max(0) as u64;
        if let Some((recorder, layer_no)) = &self.recorder {
            let end = offset + u64::from(size);
            for c in layer.toc.entries[index].chunks.iter().filter(|c| c.file_offset < end && c.file_offset + c.size > offset) {
                recorder.touch(Access { layer: *layer_no, entry: index, offset: c.file_offset, len: c.size });
            }
        }
        let work = move || {
            let entry = &layer.toc.entries[index];
            stats.reading.fetch_add(1, Ordering::Relaxed);
            let result = read_range(entry, offset, size, &layer, blob.as_ref(), &cache, &stats);
            stats.reading.fetch_sub(1, Ordering::Relaxed);
            match result {
                Ok(data) => reply.data(&data),
                Err(why) => {
                    stats.read_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(file = %entry.name, offset, size, %why, "lazy read failed: EIO");
                    reply.error(libc::EIO);
                }
            }
        };
        // Every read on its own thread: the kernel sends several (readahead) at once, and disk
        // reads of cached chunks overlap as well as fetches do.
        std::thread::spawn(work);
    }

    fn readdir(&mut self, _req: &Request<'_>, ino: u64, _fh: u64, offset: i64, mut reply: ReplyDirectory) {
        let Some(node) = self.tree.get(ino) else { return reply.error(libc::ENOENT) };
        if node.kind != NodeKind::Dir {
            return reply.error(libc::ENOTDIR);
        }
        let dots = [(ino, FileType::Directory, OsStr::new(".")), (node.parent, FileType::Directory, OsStr::new(".."))];
        let children = node.children.iter().map(|(name, &child)| {
            let kind = self.attr(child).map_or(FileType::RegularFile, |a| a.kind);
            (child, kind, name.as_os_str())
        });
        for (i, (child, kind, name)) in dots.into_iter().chain(children).enumerate().skip(offset.max(0) as usize) {
            if reply.add(child, (i + 1) as i64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn getxattr(&mut self, _req: &Request<'_>, ino: u64, name: &OsStr, size: u32, reply: ReplyXattr) {
        let Some(node) = self.tree.get(ino) else { return reply.error(libc::ENOENT) };
        let value: Option<Vec<u8>> = if node.opaque && name == OPAQUE_XATTR {
            Some(b"y".to_vec())
        } else {
            self.entry(ino).and_then(|e| e.xattrs.get(name.to_str()?).cloned())
        };
        match value {
            None => reply.error(libc::ENODATA),
            Some(v) if size == 0 => reply.size(v.len() as u32),
            Some(v) if v.len() > size as usize => reply.error(libc::ERANGE),
            Some(v) => reply.data(&v),
        }
    }

    fn listxattr(&mut self, _req: &Request<'_>, ino: u64, size: u32, reply: ReplyXattr) {
        let Some(node) = self.tree.get(ino) else { return reply.error(libc::ENOENT) };
        let opaque = node.opaque.then_some(OPAQUE_XATTR);
        let names = xattr_list(opaque.into_iter().chain(self.entry(ino).into_iter().flat_map(|e| e.xattrs.keys().map(String::as_str))));
        match size {
            0 => reply.size(names.len() as u32),
            s if names.len() > s as usize => reply.error(libc::ERANGE),
            _ => reply.data(&names),
        }
    }
}
