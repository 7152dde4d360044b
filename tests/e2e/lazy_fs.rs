//! A real distribution rootfs layer (the debootstrap'ed Debian fixture), written as zstd:chunked
//! by `ferry convert`'s writer and mounted through the kernel's FUSE, must look exactly like GNU
//! tar's extraction of the same layer — names, types, modes, owners, link counts and targets,
//! content, xattrs and mtimes — first read on demand, then again once the prefetch has made every
//! file whole on local disk and opens pass through to it.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use snapshotter::fuse::MountOptions;
use snapshotter::layer::LazyLayer;
use snapshotter::zstd_chunked::{write_tar, WriteOptions};

use crate::harness::rootfs::{assert_same_lines, debian_image, decompress_layer, extract_tar, tree_lines, GZIP_LAYER};
use crate::harness::temp_dir;

/// `tree_lines` plus every entry's mtime (the root's is the mount's or the extraction dir's own).
fn listing(root: &Path) -> Vec<String> {
    let mut lines = tree_lines(root);
    for entry in walkdir(root) {
        let rel = entry.strip_prefix(root).expect("under root").to_string_lossy().to_string();
        if rel.is_empty() {
            continue;
        }
        let meta = std::fs::symlink_metadata(&entry).expect("lstat");
        lines.push(format!("{rel} mtime={}.{:09}", meta.mtime(), meta.mtime_nsec()));
    }
    lines.sort();
    lines
}

fn walkdir(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        let p = out[i].clone();
        if std::fs::symlink_metadata(&p).expect("lstat").is_dir() {
            for e in std::fs::read_dir(&p).expect("readdir") {
                out.push(e.expect("entry").path());
            }
        }
        i += 1;
    }
    out
}

#[test]
fn a_debian_rootfs_layer_through_fuse_matches_its_extraction() {
    let Some(image) = debian_image() else { return };
    let work = temp_dir("lazy-debian");
    let tar = work.path().join("layer.tar");
    let gz = image.layout.join("blobs/sha256").join(image.layers[0].digest.trim_start_matches("sha256:"));
    decompress_layer(&gz, GZIP_LAYER, &tar);
    extract_tar(&tar, &work.path().join("x"));
    let expected = listing(&work.path().join("x"));
    assert!(expected.len() > 10000, "only {} lines", expected.len());
    let regular_with_content =
        walkdir(&work.path().join("x")).iter().filter(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file() && m.len() > 0)).count();

    let out = std::fs::File::create(work.path().join("layer.zst")).expect("create");
    let (_, written) = write_tar(std::fs::File::open(&tar).expect("tar"), out, WriteOptions::default()).expect("convert");
    let blob = || Arc::new(std::fs::File::open(work.path().join("layer.zst")).expect("blob"));
    let layer = Arc::new(LazyLayer::open(blob().as_ref(), &written.annotations).expect("open").expect("lazy"));
    let layer_size = blob().metadata().expect("stat").len();

    // On demand: every byte read through FUSE, fetched from the blob as it is read.
    let mnt = work.path().join("mnt1");
    std::fs::create_dir_all(&mnt).expect("mkdir");
    let mounted =
        snapshotter::fuse::mount(layer.clone(), blob(), work.path().join("cache1"), &mnt, MountOptions::default()).expect("mount");
    assert_same_lines("Debian layer", "extracted with tar", &expected, "through FUSE, on demand", &listing(&mnt));
    let fetched = mounted.stats.bytes_fetched.load(Ordering::Relaxed);
    eprintln!("reading every file of the {layer_size}-byte layer fetched {fetched} bytes");
    assert!(fetched > layer_size / 2 && fetched <= layer_size, "{fetched} bytes fetched of a {layer_size}-byte layer");
    assert_eq!(mounted.stats.passthrough_opens.load(Ordering::Relaxed), 0, "nothing is whole without the prefetch");
    drop(mounted);

    // Prefetched: every file with content is whole on local disk, and every open of it passes through.
    let mnt = work.path().join("mnt2");
    std::fs::create_dir_all(&mnt).expect("mkdir");
    let opts = MountOptions { prefetch: Some(0), ..Default::default() };
    let mounted = snapshotter::fuse::mount(layer, blob(), work.path().join("cache2"), &mnt, opts).expect("mount");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !mounted.prefetch_done.load(Ordering::Relaxed) {
        assert!(Instant::now() < deadline, "the prefetch did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_same_lines("Debian layer", "extracted with tar", &expected, "through FUSE, prefetched", &listing(&mnt));
    // sha256sum opened every regular file with content once (each hardlink's name too).
    assert_eq!(mounted.stats.passthrough_opens.load(Ordering::Relaxed), regular_with_content as u64);
    assert_eq!(mounted.stats.read_errors.load(Ordering::Relaxed), 0);
}
