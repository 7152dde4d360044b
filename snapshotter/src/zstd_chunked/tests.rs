use std::io::Write as _;
use std::process::{Command, Stdio};

use super::*;
use crate::toc::Kind;

/// A tar of a tree with a multi-chunk file, an empty file, links, a long name and an xattr.
fn sample_tar() -> (tempfile::TempDir, Vec<u8>, BTreeMap<String, Vec<u8>>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("sub")).expect("mkdir");
    let mut files = BTreeMap::new();
    let big: Vec<u8> = (0..2_500_000u32).map(|i| (i % 251) as u8 ^ (i / 7919) as u8).collect();
    for (name, data) in [
        ("big.bin", big),
        ("empty", Vec::new()),
        ("sub/small.txt", b"hello zstd:chunked\n".to_vec()),
        (&*"n".repeat(140), b"long".to_vec()),
    ] {
        std::fs::write(root.join(name), &data).expect("write");
        files.insert(name.to_string(), data);
    }
    std::os::unix::fs::symlink("sub/small.txt", root.join("link")).expect("symlink");
    std::fs::hard_link(root.join("sub/small.txt"), root.join("hard")).expect("hardlink");
    let status = Command::new("setfattr").args(["-n", "user.ferry", "-v", "1"]).arg(root.join("empty")).status().expect("setfattr");
    assert!(status.success());
    let out = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=user.*", "--sort=name", "--format=posix", "-cf", "-", "-C"])
        .arg(&root)
        .arg(".")
        .output()
        .expect("tar");
    assert!(out.status.success());
    (dir, out.stdout, files)
}

fn small_chunks() -> WriteOptions {
    WriteOptions { chunk_size: 1 << 20, threads: 3, ..WriteOptions::default() }
}

fn convert(tar: &[u8]) -> (Vec<u8>, Written) {
    write_tar(tar, Vec::new(), small_chunks()).expect("convert")
}

#[test]
fn stock_zstd_decompresses_to_the_same_tar() {
    let (_d, tar, _) = sample_tar();
    let (layer, written) = convert(&tar);
    let mut child = Command::new("zstd").args(["-d", "-c"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("zstd");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = layer.clone();
    let feeder = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().expect("zstd output");
    feeder.join().expect("join").expect("feed");
    assert!(out.status.success(), "zstd -d failed");
    // Same entries and bytes: the original's blocks, then our two-block end marker.
    assert_eq!(&out.stdout[..], &tar[..out.stdout.len().min(tar.len())], "decompressed tar differs from the source");
    assert_eq!(Digest::of(&out.stdout), written.diff_id, "diff_id is the digest of what zstd -d gives");
    assert_eq!(out.stdout.len() as u64, written.uncompressed);
    assert_eq!(Digest::of(&layer), written.digest);
    assert_eq!(layer.len() as u64, written.size);
}

#[test]
fn reads_back_every_file_through_the_toc() {
    let (_d, tar, files) = sample_tar();
    let (layer, written) = convert(&tar);
    let (sum, pos) = from_annotations(&written.annotations).expect("annotations parse").expect("zstd:chunked");
    assert_eq!(sum, written.toc_digest);
    let by_annotation = open(&layer, Some(pos), Some(&sum)).expect("open by annotation");
    let by_footer = open(&layer, None, Some(&sum)).expect("open by footer");
    assert_eq!(by_annotation.toc, by_footer.toc);
    let toc = by_annotation.toc;
    for (name, data) in &files {
        let mut e = toc.entries.iter().find(|e| e.name == *name).unwrap_or_else(|| panic!("{name} missing from the TOC"));
        if e.kind == Kind::Hardlink {
            e = toc.entries.iter().find(|t| t.name == e.link_name).expect("hardlink target in the TOC");
        }
        let mut back = Vec::new();
        for c in &e.chunks {
            back.extend(read_chunk(&layer, c).expect("chunk"));
        }
        assert_eq!(&back, data, "{name}");
        assert_eq!(e.chunks.len() as u64, (data.len() as u64).div_ceil(1 << 20), "{name}: chunk count");
    }
    let kinds: BTreeMap<&str, Kind> = toc.entries.iter().map(|e| (e.name.as_str(), e.kind)).collect();
    assert_eq!(kinds.get("link"), Some(&Kind::Symlink));
    // GNU tar with --sort=name stores "hard" first: "sub/small.txt" is the link to it.
    assert_eq!(kinds.get("sub/small.txt"), Some(&Kind::Hardlink));
    assert_eq!(kinds.get("sub"), Some(&Kind::Dir));
    let empty = toc.entries.iter().find(|e| e.name == "empty").expect("empty");
    assert_eq!(empty.xattrs.get("user.ferry").map(Vec::as_slice), Some(&b"1"[..]));
    let regs = toc.entries.iter().filter(|e| e.kind == Kind::Reg).count() as u64;
    assert_eq!((written.files, written.chunks), (regs, toc.chunks().count() as u64));
    assert_eq!(written.chunks, 3 + 1 + 1, "big.bin in three 1 MiB chunks, one each for the small and the long-named file");
}

#[test]
fn identical_content_gives_identical_chunks() {
    let (_d, tar, _) = sample_tar();
    let a = open(&convert(&tar).0, None, None).expect("open").toc;
    let (_d2, tar2, _) = sample_tar();
    let b = open(&convert(&tar2).0, None, None).expect("open").toc;
    let digests = |t: &Toc| t.chunks().map(|(_, c)| c.digest).collect::<Vec<_>>();
    assert_eq!(digests(&a), digests(&b));
}

#[test]
fn a_wrong_toc_checksum_or_tampered_chunk_is_refused() {
    let (_d, tar, _) = sample_tar();
    let (layer, written) = convert(&tar);
    let other = Digest::of(b"not the toc");
    assert!(matches!(open(&layer, None, Some(&other)), Err(Error::DigestMismatch { .. })));
    let toc = open(&layer, None, Some(&written.toc_digest)).expect("open").toc;
    let (_, chunk) = toc.chunks().next().expect("a chunk");
    let mut tampered = layer.clone();
    // Re-compress different bytes of the same length into the chunk's frame: a valid frame, wrong content.
    let fake = zstd::bulk::compress(&vec![b'x'; chunk.size as usize], 3).expect("compress");
    if fake.len() as u64 <= chunk.blob_range.end - chunk.blob_range.start {
        tampered[chunk.blob_range.start as usize..chunk.blob_range.start as usize + fake.len()].copy_from_slice(&fake);
        assert!(matches!(read_chunk(&tampered, chunk), Err(Error::DigestMismatch { .. })));
    }
    let mut flipped = layer.clone();
    flipped[chunk.blob_range.start as usize + 5] ^= 0xff;
    assert!(read_chunk(&flipped, chunk).is_err(), "a damaged frame is an error, never data");
}

#[test]
fn damaged_footers_and_positions_are_refused_without_panicking() {
    let (_d, tar, _) = sample_tar();
    let (layer, written) = convert(&tar);
    let (_, pos) = from_annotations(&written.annotations).expect("ok").expect("some");
    for cut in 1..80 {
        let _ = open(&layer[..layer.len() - cut].to_vec(), None, None);
    }
    for i in layer.len() - 72..layer.len() {
        let mut bad = layer.clone();
        bad[i] ^= 0x5a;
        let _ = open(&bad, None, None);
    }
    for p in [
        TocPosition { offset: pos.offset + 1, ..pos },
        TocPosition { offset: 0, ..pos },
        TocPosition { length: u64::MAX - 3, ..pos },
        TocPosition { length: MAX_TOC_COMPRESSED + 1, ..pos },
        TocPosition { uncompressed: 10, ..pos },
        TocPosition { offset: layer.len() as u64 + 100, ..pos },
    ] {
        assert!(open(&layer, Some(p), None).is_err(), "{p:?} accepted");
    }
    for bad in ["1:2:3", "a:b:c:d", "1:2:3:2", ""] {
        let ann = BTreeMap::from([
            (ANNOTATION_CHECKSUM.to_string(), written.toc_digest.to_string()),
            (ANNOTATION_POSITION.to_string(), bad.to_string()),
        ]);
        assert!(from_annotations(&ann).is_err(), "{bad:?}");
    }
}

#[test]
fn small_files_share_frames_and_are_read_by_inner_offset() {
    let (_d, tar, files) = sample_tar();
    let (layer, _) = convert(&tar);
    let toc = open(&layer, None, None).expect("open").toc;
    let small: Vec<&crate::toc::Chunk> =
        toc.entries.iter().filter(|e| e.kind == Kind::Reg && e.size > 0 && e.size < 1000).map(|e| &e.chunks[0]).collect();
    assert!(small.len() >= 2, "{small:?}");
    assert!(
        small.windows(2).any(|w| w[0].blob_range == w[1].blob_range && w[0].inner_offset != w[1].inner_offset),
        "small files share a frame: {small:?}"
    );
    for (name, data) in files.iter().filter(|(_, d)| !d.is_empty() && d.len() < 1000) {
        let e =
            toc.entries.iter().find(|e| e.name == *name && e.kind == Kind::Reg).or_else(|| toc.entries.iter().find(|e| e.name == "hard"));
        let e = e.expect("entry");
        assert_eq!(&read_chunk(&layer, &e.chunks[0]).expect("read"), data, "{name}");
    }
    // Without packing every file has its own frame, as containers/storage writes them.
    let unpacked = write_tar(&tar[..], Vec::new(), WriteOptions { pack_below: 0, ..small_chunks() }).expect("write").0;
    let toc = open(&unpacked, None, None).expect("open").toc;
    assert!(toc.chunks().all(|(_, c)| c.inner_offset == 0));
}
