use std::io::Write as _;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use p2p_node::Digest;
use proptest::prelude::*;

use super::writer::ustar_header;
use super::*;
use crate::blob::ReadAt;
use crate::toc::{Chunk, Kind};

const CHUNK: u64 = 64 << 10;

fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
    (0..n as u64).map(|i| ((i ^ seed << 40).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8).collect()
}

/// A tree with every kind of entry the round trip must carry.
fn make_tree(root: &Path) {
    let w = |p: &str, data: &[u8]| std::fs::write(root.join(p), data).expect("write file");
    std::fs::create_dir_all(root.join("sub/deeper")).expect("mkdir");
    w("empty", b"");
    w("one", b"x");
    w("sub/five_k", &pseudo_random(5000, 1));
    w("big", &pseudo_random(3 * CHUNK as usize + 12_345, 2)); // 4 chunks, the last partial
    w("exact", &pseudo_random(CHUNK as usize, 3)); // one full chunk
    w("sub/deeper/zeros", &vec![0u8; 300_000]);
    std::os::unix::fs::symlink("sub/five_k", root.join("link")).expect("symlink");
    std::fs::hard_link(root.join("one"), root.join("sub/hard")).expect("hardlink");
    let long_dir = root.join("x".repeat(120));
    std::fs::create_dir(&long_dir).expect("long dir");
    std::fs::write(long_dir.join("y".repeat(200)), b"long name").expect("long file");
}

fn tar_of(root: &Path, format: &str) -> Vec<u8> {
    let out = Command::new("tar")
        .args(["--sort=name", &format!("--format={format}"), "-C"])
        .arg(root)
        .args(["-cf", "-", "."])
        .output()
        .expect("run GNU tar");
    assert!(out.status.success(), "tar: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

fn opts() -> WriteOptions {
    WriteOptions { chunk_size: CHUNK, level: 6, prioritized: Vec::new() }
}

fn write_vec(tar: &[u8], opts: &WriteOptions) -> (Vec<u8>, Written) {
    let mut blob = Vec::new();
    let written = write(tar, &mut blob, opts).expect("write eStargz");
    (blob, written)
}

fn gunzip_all(blob: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(blob), &mut out).expect("gunzip");
    out
}

/// Reads every file of the layer through the index and compares it with the tree on disk.
fn check_against_tree(blob: &Vec<u8>, index: &EstargzIndex, root: &Path) {
    let mut regular = 0;
    for e in &index.toc.entries {
        if e.name == PREFETCH_LANDMARK || e.name == NO_PREFETCH_LANDMARK {
            assert_eq!(read_chunk(blob, &e.chunks[0]).expect("landmark"), [LANDMARK_CONTENT]);
            continue;
        }
        let path = root.join(&e.name);
        let meta = std::fs::symlink_metadata(&path).unwrap_or_else(|err| panic!("{}: {err}", e.name));
        match e.kind {
            Kind::Reg => {
                let mut content = Vec::new();
                for c in &e.chunks {
                    assert_eq!(c.file_offset, content.len() as u64, "{}: chunks in order", e.name);
                    content.extend(read_chunk(blob, c).expect("read chunk"));
                }
                assert_eq!(content, std::fs::read(&path).expect("read original"), "{}", e.name);
                assert_eq!(e.size, meta.len(), "{}", e.name);
                regular += 1;
            }
            Kind::Dir => assert!(meta.is_dir(), "{}", e.name),
            Kind::Symlink => assert_eq!(std::fs::read_link(&path).expect("readlink").to_str(), Some(e.link_name.as_str())),
            Kind::Hardlink => {
                let target = std::fs::metadata(root.join(&e.link_name)).expect("hardlink target");
                assert_eq!(std::os::unix::fs::MetadataExt::ino(&meta), std::os::unix::fs::MetadataExt::ino(&target), "{}", e.name);
            }
            other => panic!("unexpected {other:?} {}", e.name),
        }
    }
    assert!(regular >= 7, "only {regular} regular files were checked");
}

#[test]
fn round_trip_of_gnu_and_pax_tars() {
    let dir = tempfile::tempdir().expect("tempdir");
    make_tree(dir.path());
    for format in ["gnu", "pax"] {
        let tar = tar_of(dir.path(), format);
        let (blob, written) = write_vec(&tar, &opts());
        assert_eq!(written.compressed_size, blob.len() as u64);
        assert_eq!(written.compressed_digest, Digest::of(&blob));
        let plain = gunzip_all(&blob);
        assert_eq!(written.diff_id, Digest::of(&plain), "{format}: the diff ID is the decompressed stream's");
        assert_eq!(written.uncompressed_size, plain.len() as u64);

        let index = open(&blob, Some(&written.toc_digest)).expect("open");
        assert_eq!(index.toc_digest, written.toc_digest);
        assert_eq!(&blob[blob.len() - 51..], &footer(index.toc_offset)[..]);
        let entry = |name: &str| index.toc.entries.iter().find(|e| e.name == name).unwrap_or_else(|| panic!("{name} in the TOC"));
        assert_eq!(index.toc.entries[0].name, NO_PREFETCH_LANDMARK, "{format}: the landmark opens the layer");
        let sizes: Vec<u64> = entry("big").chunks.iter().map(|c| c.size).collect();
        assert_eq!(sizes, vec![CHUNK, CHUNK, CHUNK, 12_345]);
        assert_eq!(entry("exact").chunks.len(), 1);
        assert_eq!(entry("empty").chunks.len(), 0);
        assert_eq!(entry("sub/hard").kind, Kind::Hardlink);
        assert_eq!(entry("sub/hard").link_name, "one");
        assert_eq!(entry("link").link_name, "sub/five_k");
        assert!(entry(&format!("{}/{}", "x".repeat(120), "y".repeat(200))).size == 9);
        // Every chunk starts its own gzip member with the payload at its very beginning.
        for (_, c) in index.toc.chunks() {
            assert_eq!(c.inner_offset, 0);
            assert_eq!(&blob[c.blob_range.start as usize..][..3], &[0x1f, 0x8b, 0x08]);
        }
        check_against_tree(&blob, &index, dir.path());
    }
}

fn listing(cmd: &str) -> Vec<String> {
    let out = Command::new("sh").args(["-c", cmd]).output().expect("run sh");
    assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8 listing").lines().map(str::to_string).collect()
}

#[test]
fn gzip_dc_gives_the_same_tar_plus_landmark_and_toc() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("t");
    std::fs::create_dir(&root).expect("mkdir");
    make_tree(&root);
    let tar = tar_of(&root, "gnu");
    let (blob, _) = write_vec(&tar, &opts());
    std::fs::write(dir.path().join("orig.tar"), &tar).expect("write tar");
    std::fs::write(dir.path().join("layer.gz"), &blob).expect("write blob");
    let d = dir.path().display();
    let original = listing(&format!("tar -tvf {d}/orig.tar"));
    let converted = listing(&format!("gzip -dc {d}/layer.gz | tar -tvf -"));
    let is_extra = |l: &String| l.ends_with(" .no.prefetch.landmark") || l.ends_with(" stargz.index.json");
    let extras: Vec<&String> = converted.iter().filter(|l| is_extra(l)).collect();
    assert_eq!(extras.len(), 2, "{extras:?}");
    assert!(converted[0].ends_with(" .no.prefetch.landmark") && converted[converted.len() - 1].ends_with(" stargz.index.json"));
    let rest: Vec<String> = converted.into_iter().filter(|l| !is_extra(l)).collect();
    assert_eq!(rest, original);
    assert!(original.len() >= 12, "{original:?}");
}

/// A small valid layer, built once.
fn sample() -> &'static (Vec<u8>, Written) {
    static SAMPLE: OnceLock<(Vec<u8>, Written)> = OnceLock::new();
    SAMPLE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a"), b"hello").expect("write");
        std::fs::write(dir.path().join("b"), pseudo_random(70_000, 9)).expect("write");
        std::os::unix::fs::symlink("a", dir.path().join("c")).expect("symlink");
        write_vec(&tar_of(dir.path(), "gnu"), &WriteOptions { chunk_size: 32 << 10, level: 1, prioritized: Vec::new() })
    })
}

#[test]
fn footer_and_landmark_header_match_ctr_remote_byte_for_byte() {
    let blob = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/estargz-busybox.layer")).expect("fixture");
    let tail = &blob[blob.len() - 51..];
    let offset = parse_footer(tail).expect("ctr-remote footer");
    assert_eq!(tail, &footer(offset)[..]);
    let mut first = [0u8; 512];
    std::io::Read::read_exact(&mut flate2::read::GzDecoder::new(&blob[..]), &mut first).expect("first header");
    assert_eq!(first, ustar_header(NO_PREFETCH_LANDMARK, 1));
}

#[test]
fn legacy_footer_is_accepted() {
    let (blob, written) = sample();
    let index = open(blob, None).expect("open");
    let mut legacy = blob[..blob.len() - 51].to_vec();
    legacy.extend_from_slice(&legacy_footer(index.toc_offset));
    let again = open(&legacy, Some(&written.toc_digest)).expect("open with the legacy footer");
    assert_eq!(again, index);
}

#[test]
fn footer_is_parsed_strictly() {
    let good = footer(0x1234);
    assert_eq!(parse_footer(&good).expect("good"), 0x1234);
    let bad = |f: &[u8], why: &str| match parse_footer(f) {
        Err(Error::Malformed { what: "eStargz footer", .. }) => {}
        other => panic!("{why}: {other:?}"),
    };
    // (byte, new value, what it breaks)
    for (at, value, why) in [
        (43, 0x01, "CRC"),
        (50, 0x01, "ISIZE"),
        (10, 25, "XLEN"),
        (14, 21, "subfield length"),
        (33, b'X', "STARGZ magic"),
        (20, b'g', "hex digit"),
        (3, 0x0c, "flags FEXTRA|FNAME"),
        (38, 0x00, "a stored block that is not final"),
    ] {
        let mut f = good;
        f[at] = value;
        bad(&f, why);
    }
    bad(&good[..50], "short");
    bad(&[0u8; 51], "zeros");
}

#[test]
fn every_truncation_of_the_footer_is_refused() {
    let (blob, _) = sample();
    for k in 1..=51 {
        assert!(open(&blob[..blob.len() - k].to_vec(), None).is_err(), "truncated by {k}");
    }
    for len in 0..60 {
        assert!(open(&blob[..len].to_vec(), None).is_err());
    }
}

#[test]
fn a_flipped_byte_in_the_toc_member_is_refused() {
    let (blob, written) = sample();
    let index = open(blob, None).expect("open");
    let (mut refused, mut total) = (0, 0);
    for at in index.toc_offset as usize..blob.len() - 51 {
        let mut damaged = blob.clone();
        damaged[at] ^= 0xff;
        total += 1;
        // A flip may leave the decompressed bytes as they were (the gzip header's MTIME, XFL and
        // OS bytes; a code length of an unused deflate symbol): then the TOC must be the same.
        match open(&damaged, None) {
            Ok(i) => assert_eq!(i, index, "a flipped byte at {at} changed the TOC unnoticed"),
            Err(_) => refused += 1,
        }
        if let Ok(i) = open(&damaged, Some(&written.toc_digest)) {
            assert_eq!(i, index, "byte {at}");
        }
    }
    assert!(refused * 10 >= total * 9, "only {refused} of {total} flips were refused");
}

#[test]
fn toc_digest_mismatch_is_refused() {
    let (blob, written) = sample();
    match open(blob, Some(&Digest::of(b"another TOC"))) {
        Err(Error::DigestMismatch { got, .. }) => assert_eq!(got, written.toc_digest),
        other => panic!("{other:?}"),
    }
}

#[test]
fn toc_offsets_outside_the_toc_region_are_refused() {
    let (blob, _) = sample();
    let index = open(blob, None).expect("open");
    let body = &blob[..blob.len() - 51];
    let with_footer = |offset: u64| [body, &footer(offset)[..]].concat();
    for offset in [blob.len() as u64 + 100, blob.len() as u64 - 51, u64::MAX] {
        assert!(matches!(open(&with_footer(offset), None), Err(Error::Malformed { what: "eStargz footer", .. })), "{offset}");
    }
    // Inside the blob but not at a TOC member: file data, or the TOC member's middle.
    for offset in [0, 1, index.toc.entries[1].chunks[0].blob_range.start, index.toc_offset - 1, index.toc_offset + 1] {
        assert!(open(&with_footer(offset), None).is_err(), "TOC offset {offset}");
    }
    // A TOC member followed by junk before the footer.
    let mut b = body.to_vec();
    b.push(0);
    b.extend_from_slice(&footer(index.toc_offset));
    assert!(matches!(open(&b, None), Err(Error::Malformed { .. })));
}

fn gzip(data: &[u8], level: u32) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
    enc.write_all(data).expect("gzip");
    enc.finish().expect("gzip")
}

fn chunk_over(blob: &[u8], size: u64, inner_offset: u64, digest: Digest) -> Chunk {
    Chunk { file_offset: 0, size, blob_range: 0..blob.len() as u64, inner_offset, digest, prefetch: false }
}

#[test]
fn a_gzip_bomb_chunk_yields_only_its_size() {
    // 512 MiB of zeros in about 500 KiB: only the chunk's 10 bytes may be produced.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..512 {
        enc.write_all(&zeros).expect("gzip");
    }
    let bomb = enc.finish().expect("gzip");
    let started = std::time::Instant::now();
    let got = read_chunk(&bomb, &chunk_over(&bomb, 10, 1000, Digest::of(&[0u8; 10]))).expect("read");
    assert_eq!(got, vec![0u8; 10]);
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "it decompressed too much: {:?}", started.elapsed());
    assert!(matches!(read_chunk(&bomb, &chunk_over(&bomb, 10, MAX_INNER_OFFSET + 1, Digest::of(b""))), Err(Error::TooLarge { .. })));
    assert!(matches!(read_chunk(&bomb, &chunk_over(&bomb, MAX_CHUNK_SIZE + 1, 0, Digest::of(b""))), Err(Error::TooLarge { .. })));
}

#[test]
fn short_corrupt_or_wrong_chunks_are_errors() {
    let data = pseudo_random(1000, 5);
    let member = gzip(&data, 6);
    let ok = chunk_over(&member, 900, 100, Digest::of(&data[100..]));
    assert_eq!(read_chunk(&member, &ok).expect("read"), &data[100..]);
    let short = chunk_over(&member, 901, 100, Digest::of(b""));
    assert!(matches!(read_chunk(&member, &short), Err(Error::Malformed { .. })), "shorter than claimed");
    let wrong = chunk_over(&member, 900, 99, Digest::of(&data[100..]));
    assert!(matches!(read_chunk(&member, &wrong), Err(Error::DigestMismatch { .. })));
    let mut corrupt = member.clone();
    corrupt[member.len() / 2] ^= 0x55; // inside the chunk's bytes, past the skipped 100
    assert!(read_chunk(&corrupt, &ok).is_err());
    let outside = Chunk { blob_range: 0..member.len() as u64 + 1, ..ok.clone() };
    assert!(read_chunk(&member, &outside).is_err());
    // Two members in one range (small files packed together): innerOffset crosses into the second.
    let mut two = gzip(&data[..300], 6);
    two.extend(gzip(&data[300..], 1));
    assert_eq!(read_chunk(&two, &chunk_over(&two, 500, 250, Digest::of(&data[250..750]))).expect("two members"), &data[250..750]);
}

struct Failing(Vec<u8>);
impl ReadAt for Failing {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_at(&self, _: &mut [u8], _: u64) -> std::io::Result<()> {
        Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "upstream timed out"))
    }
}

#[test]
fn blob_read_errors_stay_io_errors() {
    let member = gzip(b"hello", 6);
    let chunk = chunk_over(&member, 5, 0, Digest::of(b"hello"));
    assert!(matches!(read_chunk(&Failing(member.clone()), &chunk), Err(Error::Io { .. })));
    let (blob, _) = sample();
    assert!(matches!(open(&Failing(blob.clone()), None), Err(Error::Io { .. })));
}

#[test]
fn prioritized_files_come_before_the_prefetch_landmark() {
    let dir = tempfile::tempdir().expect("tempdir");
    make_tree(dir.path());
    let tar = tar_of(dir.path(), "gnu");
    let prioritized = vec!["big".to_string(), "./empty".to_string()];
    let (blob, written) = write_vec(&tar, &WriteOptions { prioritized, ..opts() });
    let index = open(&blob, Some(&written.toc_digest)).expect("open");
    let names: Vec<&str> = index.toc.entries.iter().map(|e| e.name.as_str()).collect();
    let landmark = names.iter().position(|&n| n == PREFETCH_LANDMARK).expect("landmark");
    assert_eq!(names[..landmark], ["big", "empty"], "GNU tar sorts by name; the landmark follows the last prioritized file");
    assert!(!names.contains(&NO_PREFETCH_LANDMARK));
    for (i, c) in index.toc.chunks() {
        assert_eq!(c.prefetch, i < landmark, "{}", names[i]);
    }
    check_against_tree(&blob, &index, dir.path());
    let missing = WriteOptions { prioritized: vec!["no/such/file".into()], ..opts() };
    assert!(write(&tar[..], &mut Vec::new(), &missing).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4000), with_footer: bool, offset in 0u64..5000) {
        let mut b = bytes;
        if with_footer {
            b.extend_from_slice(&footer(offset));
        }
        let _ = open(&b, None);
    }

    #[test]
    fn mutated_tails_never_panic(edits in proptest::collection::vec((0usize..1500, any::<u8>()), 1..6), cut in 0usize..100) {
        let (blob, _) = sample();
        let mut b = blob.clone();
        let len = b.len();
        for (back, value) in edits {
            let at = len - 1 - back % len.min(1500);
            b[at] = value;
        }
        b.truncate(len - cut.min(len));
        if let Ok(index) = open(&b, None) {
            for (_, c) in index.toc.chunks() {
                let _ = read_chunk(&b, c);
            }
        }
    }
}
