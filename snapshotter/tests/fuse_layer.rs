//! A zstd:chunked layer mounted through the kernel's FUSE must look exactly like GNU tar's
//! extraction of the same layer: names, types, content, modes (setuid, sticky), owners, mtimes,
//! symlink targets, hardlinks, devices, fifos, xattrs; overlay whiteouts in overlayfs's form.
//! Reading one file fetches that file's chunks only; a blob that fails gives EIO, not a hang.
//! Needs root (mounting FUSE, mknod, chown) and GNU tar, getfattr and setfattr.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use p2p_node::Digest;
use snapshotter::blob::ReadAt;
use snapshotter::layer::LazyLayer;
use snapshotter::zstd_chunked::{write_tar, WriteOptions};

fn sh(script: &str) {
    let out = Command::new("sh").arg("-ec").arg(script).output().expect("sh");
    assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A source tree with every kind of object a layer can hold.
fn make_source(src: &Path) {
    std::fs::create_dir_all(src.join("usr/bin")).expect("mkdir");
    std::fs::write(src.join("usr/bin/big"), common::random(3 << 20 | 12345, 1)).expect("big");
    std::fs::write(src.join("usr/bin/small"), b"#!/bin/sh\necho hi\n").expect("small");
    std::fs::write(src.join("empty"), b"").expect("empty");
    std::fs::create_dir_all(src.join("etc/skel")).expect("mkdir");
    std::fs::write(src.join("etc/.wh.removed.conf"), b"").expect("whiteout");
    std::fs::create_dir_all(src.join("var/cache")).expect("mkdir");
    std::fs::write(src.join("var/cache/.wh..wh..opq"), b"").expect("opaque");
    sh(&format!(
        "cd {}; chown 1234:5678 usr/bin/small; chmod 4755 usr/bin/small; mkdir -m 1777 tmp; chmod 700 etc/skel; \
         ln -s ../usr/bin/small usr/run; ln -s /etc/absolute usr/abs; ln usr/bin/big usr/bin/big-link; \
         mkfifo -m 600 pipe; mknod -m 640 null c 1 3; chown -h 42:43 usr/run; \
         setfattr -n user.comment -v 'hello xattr' usr/bin/small; setfattr -n user.empty usr/bin/big; \
         touch -h -d '2021-02-03 04:05:06.789' usr/run; touch -d '2001-09-09 01:46:40' usr/bin/small etc/skel",
        src.display()
    ));
}

/// What a file looks like, for comparing two trees.
#[derive(Debug, PartialEq)]
struct Seen {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    size: u64,
    content: Option<Digest>,
    link: Option<PathBuf>,
    rdev: u64,
    nlink: u64,
    xattrs: String,
}

fn xattrs(path: &Path) -> String {
    let out = Command::new("getfattr")
        .args(["--absolute-names", "-h", "-d", "-m", "^user\\.", "-e", "hex"])
        .arg(path)
        .output()
        .expect("getfattr");
    String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.starts_with('#')).collect::<Vec<_>>().join("\n")
}

fn walk(root: &Path) -> BTreeMap<String, Seen> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("entry").path();
            let m = std::fs::symlink_metadata(&path).expect("lstat");
            let t = m.file_type();
            let kind = if t.is_dir() {
                stack.push(path.clone());
                "dir"
            } else if t.is_symlink() {
                "symlink"
            } else if t.is_file() {
                "reg"
            } else if t.is_fifo() {
                "fifo"
            } else if t.is_char_device() {
                "char"
            } else {
                "other"
            };
            let rel = path.strip_prefix(root).expect("under root").display().to_string();
            out.insert(
                rel,
                Seen {
                    kind,
                    mode: m.mode() & 0o7777,
                    uid: m.uid(),
                    gid: m.gid(),
                    mtime: m.mtime(),
                    size: if t.is_file() || t.is_symlink() { m.size() } else { 0 },
                    content: t.is_file().then(|| Digest::of(&std::fs::read(&path).expect("read"))),
                    link: t.is_symlink().then(|| std::fs::read_link(&path).expect("readlink")),
                    rdev: m.rdev(),
                    nlink: if t.is_dir() { 0 } else { m.nlink() },
                    xattrs: if t.is_symlink() { String::new() } else { xattrs(&path) },
                },
            );
        }
    }
    out
}

struct Failing(u64);

impl ReadAt for Failing {
    fn size(&self) -> u64 {
        self.0
    }
    fn read_at(&self, _: &mut [u8], _: u64) -> std::io::Result<()> {
        Err(std::io::Error::other("the origin is unreachable"))
    }
}

/// Serves the TOC and footer from the real blob, fails every chunk read.
struct TocOnly {
    blob: Vec<u8>,
    toc_from: u64,
}

impl ReadAt for TocOnly {
    fn size(&self) -> u64 {
        self.blob.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        if offset < self.toc_from {
            return Failing(self.blob.size()).read_at(buf, offset);
        }
        self.blob.read_at(buf, offset)
    }
}

#[test]
fn a_mounted_layer_matches_tar_extraction_and_fetches_only_what_is_read() {
    if !common::is_root() {
        eprintln!("SKIPPED: needs root to mount FUSE");
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let (src, reference, mnt) = (work.path().join("src"), work.path().join("ref"), work.path().join("mnt"));
    for d in [&src, &reference, &mnt] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    make_source(&src);
    let tar = work.path().join("layer.tar");
    sh(&format!("tar --xattrs --xattrs-include='*' --numeric-owner -C {} -cf {} .", src.display(), tar.display()));
    sh(&format!("tar --xattrs --xattrs-include='*' --numeric-owner -C {} -xpf {}", reference.display(), tar.display()));
    let (blob, written) = write_tar(std::fs::File::open(&tar).expect("tar"), Vec::new(), WriteOptions::default()).expect("convert");
    let layer = Arc::new(LazyLayer::open(&blob, &written.annotations).expect("open").expect("lazy"));
    let toc_from = written
        .annotations
        .get("io.github.containers.zstd-chunked.manifest-position")
        .and_then(|p| p.split(':').next()?.parse().ok())
        .expect("toc position");
    let blob_len = blob.len() as u64;
    let mounted = snapshotter::fuse::mount(layer.clone(), Arc::new(blob.clone()), work.path().join("cache"), &mnt, Default::default())
        .expect("mount");

    // Reading one small file fetches its chunks, not the layer.
    assert_eq!(std::fs::read(mnt.join("usr/bin/small")).expect("read"), b"#!/bin/sh\necho hi\n");
    let fetched = mounted.stats.bytes_fetched.load(Ordering::Relaxed);
    assert!(fetched > 0 && fetched * 20 < blob_len, "one small file fetched {fetched} of {blob_len} bytes");

    let mut expected = walk(&reference);
    // overlayfs's form of whiteouts: `.wh.NAME` is a char device 0/0 named NAME, mode 0, owned by root.
    let wh = expected.remove("etc/.wh.removed.conf").expect("whiteout in the reference");
    expected.insert(
        "etc/removed.conf".into(),
        Seen {
            kind: "char",
            mode: 0,
            uid: 0,
            gid: 0,
            mtime: 0,
            size: 0,
            content: None,
            link: None,
            rdev: 0,
            nlink: 1,
            xattrs: String::new(),
        },
    );
    assert_eq!(wh.kind, "reg");
    expected.remove("var/cache/.wh..wh..opq").expect("opaque marker in the reference");
    let mut got = walk(&mnt);
    let opaque = got.get_mut("var/cache").map(|s| std::mem::take(&mut s.mtime));
    if let (Some(e), Some(_)) = (expected.get_mut("var/cache"), opaque) {
        e.mtime = 0;
    }
    for (path, want) in &expected {
        let have = got.get(path).unwrap_or_else(|| panic!("{path} missing from the mount"));
        assert_eq!(have, want, "{path} differs");
    }
    assert_eq!(got.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>(), "the same names");
    assert_eq!(got["usr/bin/small"].mode, 0o4755, "setuid survives");
    assert_eq!(got["tmp"].mode, 0o1777, "sticky survives");
    let big = std::fs::symlink_metadata(mnt.join("usr/bin/big")).expect("big");
    assert_eq!(big.ino(), std::fs::symlink_metadata(mnt.join("usr/bin/big-link")).expect("link").ino(), "hardlinks share an inode");
    let opaque = Command::new("getfattr")
        .args(["--absolute-names", "-n", "trusted.overlay.opaque", "--only-values"])
        .arg(mnt.join("var/cache"))
        .output()
        .expect("getfattr");
    assert_eq!(opaque.stdout, b"y", "an opaque dir carries overlayfs's xattr");
    drop(mounted);

    // A blob that cannot be read: EIO within the read, no hang.
    let failing = Arc::new(TocOnly { blob, toc_from });
    let mounted = snapshotter::fuse::mount(layer.clone(), failing, work.path().join("cache2"), &mnt, Default::default()).expect("mount");
    let started = Instant::now();
    let err = std::fs::read(mnt.join("usr/bin/big")).expect_err("a read of an unreachable chunk fails");
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(mounted.stats.read_errors.load(Ordering::Relaxed) >= 1);
    assert_eq!(std::fs::read_dir(mnt.join("usr/bin")).expect("metadata needs no chunk").count(), 3);
}

/// A blob whose reads can be switched off, as when the network goes.
/// The real blob behind two switches: offline fails every read, held makes reads wait.
struct Switch {
    blob: Vec<u8>,
    online: AtomicBool,
    held: AtomicBool,
}

impl ReadAt for Switch {
    fn size(&self) -> u64 {
        self.blob.size()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.held.load(Ordering::Relaxed) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if !self.online.load(Ordering::Relaxed) {
            return Err(std::io::Error::other("offline"));
        }
        self.blob.read_at(buf, offset)
    }
}

/// Once the prefetch has every chunk, files are whole on local disk and opens pass through to
/// them (FUSE passthrough), except while an open from before is still open (the kernel would
/// refuse a passthrough open then); the layer stays readable with the network gone.
#[test]
fn a_prefetched_layer_passes_through_and_stays_readable_with_the_network_gone() {
    if !common::is_root() {
        eprintln!("SKIPPED: needs root to mount FUSE");
        return;
    }
    let work = tempfile::tempdir().expect("tempdir");
    let (src, mnt) = (work.path().join("src"), work.path().join("mnt"));
    std::fs::create_dir_all(&mnt).expect("mkdir");
    std::fs::create_dir_all(&src).expect("mkdir");
    make_source(&src);
    let tar = work.path().join("layer.tar");
    sh(&format!("tar --numeric-owner -C {} -cf {} .", src.display(), tar.display()));
    let (blob, written) = write_tar(std::fs::File::open(&tar).expect("tar"), Vec::new(), WriteOptions::default()).expect("convert");
    let layer = Arc::new(LazyLayer::open(&blob, &written.annotations).expect("open").expect("lazy"));
    let switch = Arc::new(Switch { blob, online: true.into(), held: true.into() });
    let mounted = snapshotter::fuse::mount(
        layer,
        switch.clone(),
        work.path().join("cache"),
        &mnt,
        snapshotter::fuse::MountOptions { prefetch: Some(0), ..Default::default() },
    )
    .expect("mount");
    let passthrough = || mounted.stats.passthrough_opens.load(Ordering::Relaxed);
    let big = std::fs::read(src.join("usr/bin/big")).expect("source");
    // Nothing is local yet: this open goes through FUSE reads and stays open meanwhile.
    let mut early = std::fs::File::open(mnt.join("usr/bin/big")).expect("open early");
    switch.held.store(false, Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !mounted.prefetch_done.load(Ordering::Relaxed) {
        assert!(Instant::now() < deadline, "the prefetch did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(mounted.stats.prefetched_bytes.load(Ordering::Relaxed) > 3 << 20, "the big file was prefetched");
    let whole = std::fs::read_dir(work.path().join("cache/files")).expect("files").count();
    assert_eq!(whole, 2, "big and small are whole local files");
    assert_eq!(passthrough(), 0);
    assert_eq!(std::fs::read(mnt.join("usr/bin/big")).expect("read while the early open is open"), big);
    assert_eq!(passthrough(), 0, "no passthrough while an earlier open reads through FUSE");
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut early, &mut got).expect("read the early open");
    assert_eq!(got, big);
    drop(early);

    switch.online.store(false, Ordering::Relaxed);
    for file in ["usr/bin/small", "usr/bin/big-link"] {
        let want = std::fs::read(src.join(file)).expect("source");
        assert_eq!(std::fs::read(mnt.join(file)).expect("read offline"), want, "{file}");
    }
    assert!(passthrough() >= 1, "small was passed through");
    // The early open's release reaches the filesystem after close returns: big passes through
    // once it has.
    let before = passthrough();
    let deadline = Instant::now() + Duration::from_secs(5);
    while passthrough() == before {
        assert!(Instant::now() < deadline, "big was never passed through");
        assert_eq!(std::fs::read(mnt.join("usr/bin/big")).expect("read offline"), big);
    }
    assert_eq!(mounted.stats.read_errors.load(Ordering::Relaxed), 0);
}
