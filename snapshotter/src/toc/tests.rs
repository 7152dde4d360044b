use super::*;

fn reg(name: &str, size: i64, offset: i64) -> RawEntry {
    RawEntry { kind: "reg".into(), name: name.into(), size, offset, digest: Digest::of(name.as_bytes()).to_string(), ..Default::default() }
}

fn chunk(name: &str, chunk_offset: i64, chunk_size: i64, offset: i64) -> RawEntry {
    RawEntry {
        kind: "chunk".into(),
        name: name.into(),
        chunk_offset,
        chunk_size,
        offset,
        chunk_digest: Digest::of(&chunk_offset.to_le_bytes()).to_string(),
        ..Default::default()
    }
}

fn toc(entries: Vec<RawEntry>) -> RawToc {
    RawToc { version: 1, entries, ..Default::default() }
}

#[test]
fn paths_are_cleaned_or_refused() {
    assert_eq!(clean_path("./usr/bin/").expect("ok"), "usr/bin");
    assert_eq!(clean_path("/etc/passwd").expect("ok"), "etc/passwd");
    assert_eq!(clean_path("./").expect("root"), "");
    for bad in ["a/../b", "..", "../x", "a//b", "a/./b", "x\0y", &"a/".repeat(3000), &"n".repeat(256)] {
        assert!(clean_path(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn chunked_file_ranges_follow_the_streams() {
    // estargz style: a reg with a first chunk, then chunk entries; TOC data ends at 1000.
    let mut first = reg("big", 300, 100);
    first.chunk_size = 100;
    first.chunk_digest = Digest::of(b"c0").to_string();
    let raw = toc(vec![
        RawEntry { kind: "dir".into(), name: "./".into(), ..Default::default() },
        first,
        chunk("big", 100, 100, 200),
        chunk("big", 200, 0, 350),
        reg("small", 10, 600),
    ]);
    let t = Toc::from_raw(&raw, 1000).expect("valid");
    assert_eq!(t.entries.len(), 2, "the root is not an entry");
    let big = &t.entries[0];
    let ranges: Vec<_> = big.chunks.iter().map(|c| (c.file_offset, c.size, c.blob_range.clone())).collect();
    assert_eq!(ranges, vec![(0, 100, 100..200), (100, 100, 200..350), (200, 100, 350..600)]);
    assert_eq!(t.entries[1].chunks[0].blob_range, 600..1000, "the last stream ends where the TOC starts");
    assert_eq!(t.entries[1].chunks[0].digest, Digest::of(b"small"), "a one-chunk file is verified by its digest");
}

#[test]
fn zstd_chunked_end_offset_bounds_the_last_chunk() {
    let mut r = reg("f", 5, 100);
    r.end_offset = 150;
    let t = Toc::from_raw(&toc(vec![r, reg("g", 5, 400)]), 1000).expect("valid");
    assert_eq!(t.entries[0].chunks[0].blob_range, 100..150);
}

#[test]
fn landmark_marks_what_comes_before_it_for_prefetch() {
    let raw = toc(vec![reg("early", 5, 100), reg(".prefetch.landmark", 1, 200), reg("late", 5, 300)]);
    let t = Toc::from_raw(&raw, 1000).expect("valid");
    let prefetch: Vec<bool> = t.entries.iter().map(|e| e.chunks[0].prefetch).collect();
    assert_eq!(prefetch, vec![true, false, false]);
}

#[test]
fn hostile_tocs_are_refused() {
    let mut gap = reg("f", 300, 100);
    gap.chunk_size = 100;
    gap.chunk_digest = Digest::of(b"x").to_string();
    let mut no_digest = reg("f", 5, 100);
    no_digest.digest.clear();
    let mut negative = reg("f", 5, 100);
    negative.size = -1;
    let mut huge = reg("f", 5, 100);
    huge.size = 1 << 41;
    let mut bad_link = RawEntry { kind: "hardlink".into(), name: "l".into(), link_name: "../../etc/shadow".into(), ..Default::default() };
    let dangling = RawEntry { kind: "hardlink".into(), name: "l".into(), link_name: "nothing".into(), ..Default::default() };
    let cases: Vec<(&str, RawToc, u64)> = vec![
        ("dotdot", toc(vec![reg("../escape", 5, 100)]), 1000),
        ("absolute dotdot", toc(vec![reg("/a/../../b", 5, 100)]), 1000),
        ("offset past the data", toc(vec![reg("f", 5, 2000)]), 1000),
        ("zero offset", toc(vec![reg("f", 5, 0)]), 1000),
        ("chunk gap", toc(vec![gap, chunk("f", 150, 150, 300)]), 1000),
        ("chunk overlap past end", toc(vec![reg("f", 5, 100), chunk("f", 0, 10, 200)]), 1000),
        ("orphan chunk", toc(vec![chunk("f", 0, 5, 100)]), 1000),
        (
            "chunk of another file",
            toc(vec![
                {
                    let mut r = reg("f", 10, 100);
                    r.chunk_size = 5;
                    r.chunk_digest = Digest::of(b"y").to_string();
                    r
                },
                chunk("g", 5, 5, 200),
            ]),
            1000,
        ),
        ("no digest", toc(vec![no_digest]), 1000),
        ("negative size", toc(vec![negative]), 1000),
        ("absurd size", toc(vec![huge]), 1000),
        ("hardlink escape", toc(vec![std::mem::take(&mut bad_link)]), 1000),
        ("dangling hardlink", toc(vec![dangling]), 1000),
        ("unknown type", toc(vec![RawEntry { kind: "socket".into(), name: "s".into(), ..Default::default() }]), 1000),
        ("version", RawToc { version: 2, ..Default::default() }, 1000),
        ("chunk over the limit", toc(vec![reg("huge", (MAX_CHUNK + 1) as i64, 100)]), 1000),
        (
            "inner offset over the limit",
            toc(vec![{
                let mut r = reg("f", 5, 100);
                r.inner_offset = (MAX_CHUNK + 1) as i64;
                r
            }]),
            1000,
        ),
        (
            "bad xattr",
            toc(vec![RawEntry {
                kind: "dir".into(),
                name: "d".into(),
                xattrs: [("user.x".into(), "!!".into())].into(),
                ..Default::default()
            }]),
            1000,
        ),
    ];
    for (what, raw, end) in cases {
        assert!(Toc::from_raw(&raw, end).is_err(), "{what} was accepted");
    }
}
