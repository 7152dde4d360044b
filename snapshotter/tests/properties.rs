//! Property tests over random and mutated inputs: the footer, TOC and tar parsers never panic,
//! and whatever they accept satisfies the TOC's invariants.

use p2p_node::Digest;
use proptest::prelude::*;
use snapshotter::tar::TarReader;
use snapshotter::toc::{Kind, RawEntry, RawToc, Toc};
use snapshotter::zstd_chunked::{self, WriteOptions};

/// A small valid zstd:chunked layer to mutate (built once).
fn valid_layer() -> Vec<u8> {
    static LAYER: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    LAYER.get_or_init(build_layer).clone()
}

fn build_layer() -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("a"), vec![1u8; 300_000]).expect("write");
    std::fs::write(dir.path().join("b"), b"bee").expect("write");
    let tar =
        std::process::Command::new("tar").args(["--format=posix", "-cf", "-", "-C"]).arg(dir.path()).arg(".").output().expect("tar").stdout;
    let opts = WriteOptions { chunk_size: 128 << 10, threads: 2, ..WriteOptions::default() };
    zstd_chunked::write_tar(&tar[..], Vec::new(), opts).expect("write").0
}

fn check_invariants(toc: &Toc, data_end: u64) {
    for e in &toc.entries {
        assert!(!e.name.is_empty() && e.name.split('/').all(|c| !c.is_empty() && c != "." && c != ".."), "unsafe name {:?}", e.name);
        if e.kind == Kind::Reg && e.size > 0 {
            let mut at = 0;
            for c in &e.chunks {
                assert_eq!(c.file_offset, at, "chunks of {} are contiguous", e.name);
                assert!(c.size > 0 && c.blob_range.start < c.blob_range.end && c.blob_range.end <= data_end);
                at += c.size;
            }
            assert_eq!(at, e.size, "chunks of {} cover it", e.name);
        } else {
            assert!(e.chunks.is_empty());
        }
    }
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{1,8}(/[a-z]{1,8}){0,3}",
        Just("../x".to_string()),
        Just("a/../../b".to_string()),
        Just("./".to_string()),
        Just("/abs/path".to_string()),
        Just("a//b".to_string()),
        "[ -~]{0,20}",
    ]
}

fn raw_entry() -> impl Strategy<Value = RawEntry> {
    (
        prop_oneof![Just("reg"), Just("dir"), Just("chunk"), Just("symlink"), Just("hardlink"), Just("fifo"), Just("bogus")],
        name(),
        -5i64..5_000_000,
        -5i64..2_000_000,
        -5i64..3_000_000,
        -5i64..3_000_000,
        any::<bool>(),
        name(),
    )
        .prop_map(|(kind, name, size, offset, chunk_offset, chunk_size, digested, link)| RawEntry {
            kind: kind.to_string(),
            name,
            size,
            offset,
            chunk_offset,
            chunk_size,
            link_name: link,
            digest: if digested { Digest::of(b"x").to_string() } else { String::new() },
            chunk_digest: if digested && chunk_size != 0 { Digest::of(b"y").to_string() } else { String::new() },
            ..RawEntry::default()
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_tocs_are_refused_or_safe(entries in prop::collection::vec(raw_entry(), 0..12), data_end in 1u64..4_000_000) {
        let raw = RawToc { version: 1, entries, ..RawToc::default() };
        if let Ok(toc) = Toc::from_raw(&raw, data_end) {
            check_invariants(&toc, data_end);
        }
    }

    #[test]
    fn random_bytes_never_open_as_a_layer(bytes in prop::collection::vec(any::<u8>(), 0..4096)) {
        let _ = zstd_chunked::open(&bytes, None, None);
        let mut r = TarReader::new(&bytes[..]);
        let mut buf = [0u8; 512];
        while let Ok(Some(_)) = r.next_entry() {
            while let Ok(n) = r.content(&mut buf) { if n == 0 { break; } }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn mutated_layer_tails_fail_cleanly(flips in prop::collection::vec((0usize..2048, any::<u8>()), 1..6), cut in 0usize..64) {
        let layer = valid_layer();
        let mut bad = layer.clone();
        let n = bad.len();
        for (back, byte) in flips {
            let i = n - 1 - back.min(n - 1);
            bad[i] ^= byte | 1;
        }
        bad.truncate(n - cut);
        if let Ok(index) = zstd_chunked::open(&bad, None, None) {
            check_invariants(&index.toc, bad.len() as u64);
            for (_, c) in index.toc.chunks() {
                // Either verified bytes of the right length, or an error: never wrong bytes.
                if let Ok(data) = zstd_chunked::read_chunk(&bad, c) {
                    prop_assert_eq!(data.len() as u64, c.size);
                    prop_assert_eq!(Digest::of(&data), c.digest);
                }
            }
        }
    }
}
