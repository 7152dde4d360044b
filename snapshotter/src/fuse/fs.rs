//! The FUSE filesystem of one lazy layer: read-only, built from the TOC's [`Tree`]. A read is
//! answered from the layer's [`Source`] (local files, cached chunks, or fetched and verified
//! chunks). Reads run on their own threads, so one slow chunk does not hold up the others;
//! a chunk that cannot be had is EIO, logged and counted. The kernel keeps the page cache
//! (`FOPEN_KEEP_CACHE`, long attribute and entry timeouts): the layer never changes.
//!
//! A file the cache holds whole is opened with FUSE passthrough where the kernel offers it: the
//! kernel then reads the local file itself and no read reaches this process (see [`super::opens`]
//! for when it may). Recording mounts never pass through: every read must be seen.

use std::ffi::OsStr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner,
    OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyXattr, Request,
};

use super::opens::{Opened, Opens};
use super::recorder::{Access, Recorder};
use super::source::Source;
use super::tree::{xattr_list, NodeKind, Tree};
use crate::toc::Entry;

/// The layer is immutable: the kernel may keep names and attributes this long.
const TTL: Duration = Duration::from_secs(3600);
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

pub struct LayerFs {
    tree: Tree,
    pub source: Arc<Source>,
    /// Where reads are recorded, and this layer's number there.
    recorder: Option<(Arc<Recorder>, usize)>,
    /// The kernel took FUSE passthrough at init.
    passthrough: bool,
    opens: Opens<BackingId>,
}

impl LayerFs {
    pub fn new(source: Arc<Source>, recorder: Option<(Arc<Recorder>, usize)>) -> LayerFs {
        let tree = Tree::build(&source.layer.toc);
        LayerFs { tree, source, recorder, passthrough: false, opens: Opens::default() }
    }

    fn entry(&self, ino: u64) -> Option<&Entry> {
        self.tree.get(ino)?.entry.map(|i| &self.source.layer.toc.entries[i])
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
            ino: INodeNo(ino),
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

impl LayerFs {
    /// The local file to pass `ino` through to: its assembled file, on a passthrough mount.
    fn backing(&self, index: Option<usize>, reply: &ReplyOpen) -> Option<std::io::Result<BackingId>> {
        let index = index.filter(|_| self.passthrough)?;
        let file = std::fs::File::open(self.source.cache.file_path(index)).ok()?;
        Some(reply.open_backing(file))
    }
}

impl Filesystem for LayerFs {
    /// Reads of up to 1 MiB (a chunk) per request, readahead to match, and passthrough of
    /// local files where the kernel has it.
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_readahead(1 << 20);
        // Read-only, but the kernel sizes its requests by the larger of the two.
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_background(64);
        // Depth 1: backing files on a plain filesystem, and overlayfs may stack on this mount.
        if self.recorder.is_none() && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok() {
            self.passthrough = config.set_max_stack_depth(1).is_ok();
        }
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.tree.lookup(parent.0, name).and_then(|ino| self.attr(ino)) {
            Some(attr) => reply.entry(&TTL, &attr, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino.0) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.entry(ino.0) {
            Some(e) if self.tree.node(ino.0).kind == NodeKind::Symlink => reply.data(e.link_name.as_bytes()),
            _ => reply.error(Errno::EINVAL),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        let index = match self.tree.get(ino.0) {
            Some(n) if n.kind == NodeKind::Reg => n.entry,
            Some(_) => return reply.error(Errno::EINVAL),
            None => return reply.error(Errno::ENOENT),
        };
        match self.opens.open(ino.0, || self.backing(index, &reply)) {
            Opened::Passthrough(fh, id) => {
                self.source.stats.passthrough_opens.fetch_add(1, Ordering::Relaxed);
                reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id);
            }
            Opened::Cached(fh) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.opens.release(fh.0);
        reply.ok();
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock: Option<LockOwner>,
        reply: ReplyData,
    ) {
        // The thread finds the entry by index in the shared TOC: no copy of its chunk list per read.
        let Some(index) = self.tree.get(ino.0).and_then(|n| n.entry) else { return reply.error(Errno::ENOENT) };
        let source = self.source.clone();
        if let Some((recorder, layer_no)) = &self.recorder {
            let end = offset + u64::from(size);
            for c in source.layer.toc.entries[index].chunks.iter().filter(|c| c.file_offset < end && c.file_offset + c.size > offset) {
                recorder.touch(Access { layer: *layer_no, entry: index, offset: c.file_offset, len: c.size });
            }
        }
        let work = move || {
            let stats = &source.stats;
            stats.reading.fetch_add(1, Ordering::Relaxed);
            let result = source.read(index, offset, size);
            stats.reading.fetch_sub(1, Ordering::Relaxed);
            match result {
                Ok(data) => reply.data(&data),
                Err(why) => {
                    stats.read_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(file = %source.layer.toc.entries[index].name, offset, size, %why, "lazy read failed: EIO");
                    reply.error(Errno::EIO);
                }
            }
        };
        // Every read on its own thread: the kernel sends several (readahead) at once, and disk
        // reads of cached chunks overlap as well as fetches do.
        std::thread::spawn(work);
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let Some(node) = self.tree.get(ino.0) else { return reply.error(Errno::ENOENT) };
        if node.kind != NodeKind::Dir {
            return reply.error(Errno::ENOTDIR);
        }
        let dots = [(ino.0, FileType::Directory, OsStr::new(".")), (node.parent, FileType::Directory, OsStr::new(".."))];
        let children = node.children.iter().map(|(name, &child)| {
            let kind = self.attr(child).map_or(FileType::RegularFile, |a| a.kind);
            (child, kind, name.as_os_str())
        });
        for (i, (child, kind, name)) in dots.into_iter().chain(children).enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let Some(node) = self.tree.get(ino.0) else { return reply.error(Errno::ENOENT) };
        let value: Option<Vec<u8>> = if node.opaque && name == OPAQUE_XATTR {
            Some(b"y".to_vec())
        } else {
            self.entry(ino.0).and_then(|e| e.xattrs.get(name.to_str()?).cloned())
        };
        match value {
            None => reply.error(Errno::ENODATA),
            Some(v) if size == 0 => reply.size(v.len() as u32),
            Some(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
            Some(v) => reply.data(&v),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let Some(node) = self.tree.get(ino.0) else { return reply.error(Errno::ENOENT) };
        let opaque = node.opaque.then_some(OPAQUE_XATTR);
        let names = xattr_list(opaque.into_iter().chain(self.entry(ino.0).into_iter().flat_map(|e| e.xattrs.keys().map(String::as_str))));
        match size {
            0 => reply.size(names.len() as u32),
            s if names.len() > s as usize => reply.error(Errno::ERANGE),
            _ => reply.data(&names),
        }
    }
}
