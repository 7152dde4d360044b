use super::*;

fn blob(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

fn pieces(data: &[u8]) -> Vec<&[u8]> {
    data.chunks(PIECE_SIZE as usize).collect()
}

fn claim_all(p: &Partial) {
    assert!(matches!(p.poll(0..p.size()), RangeState::Claimed(_)));
}

#[test]
fn out_of_order_pieces_complete_only_when_verified() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), StoreConfig::default()).expect("open");
    let data = blob(3 * PIECE_SIZE as usize + 17, 1);
    let d = Digest::of(&data);
    let p = store.begin(&d, data.len() as u64).expect("begin").expect("new");
    claim_all(&p);
    let ps = pieces(&data);
    for i in [3, 1, 0] {
        p.write_piece(i, ps[i as usize], true).expect("write");
        assert!(!p.is_complete());
        assert!(matches!(store.state(&d), BlobState::Partial { .. }));
    }
    p.write_piece(2, ps[2], true).expect("last piece");
    assert!(p.is_complete());
    assert_eq!(store.state(&d), BlobState::Complete { size: data.len() as u64 });
    let r = store.open_blob(&d).expect("open").expect("complete");
    let mut back = vec![0; data.len()];
    r.read_at(&mut back, 0).expect("read");
    assert_eq!(back, data);
    assert!(!dir.path().join("partial").join(format!("{}.data", d.hex())).exists());
    assert!(!dir.path().join("partial").join(format!("{}.map", d.hex())).exists());
}

#[test]
fn bad_peer_pieces_are_dropped_and_the_blob_repaired_from_trusted_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), StoreConfig::default()).expect("open");
    let data = blob(3 * PIECE_SIZE as usize, 9);
    let d = Digest::of(&data);
    let p = store.begin(&d, data.len() as u64).expect("begin").expect("new");
    claim_all(&p);
    let ps = pieces(&data);
    let mut lie = ps[1].to_vec();
    lie[3] ^= 1;
    p.write_piece(0, ps[0], true).expect("origin piece");
    p.write_piece(2, ps[2], false).expect("honest peer piece");
    // Untrusted pieces are neither offered to peers nor served before the blob is verified.
    assert!(p.trusted(0..1) && !p.trusted(2..3));
    assert_eq!(store.read_piece(&d, 2).expect("read"), None);
    assert!(store.have_map(&d).expect("map").1.get(0) && !store.have_map(&d).expect("map").1.get(2));
    let err = p.write_piece(1, &lie, false).expect_err("the lie is caught");
    assert!(matches!(err, Error::Repairing { pieces: 2, .. }), "{err}");
    assert!(p.origin_only() && !p.is_complete());
    assert_eq!(p.present().count(), 1, "only the trusted piece is kept");
    assert_eq!(p.poll(0..data.len() as u64), RangeState::Claimed(vec![1..3]));
    p.write_piece(2, ps[2], true).expect("origin piece");
    p.write_piece(1, ps[1], true).expect("origin piece");
    assert!(p.is_complete());
    assert_eq!(store.state(&d), BlobState::Complete { size: data.len() as u64 });
}

#[test]
fn wrong_bytes_are_never_marked_complete() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), StoreConfig::default()).expect("open");
    let data = blob(2 * PIECE_SIZE as usize, 2);
    let d = Digest::of(&data);
    let p = store.begin(&d, data.len() as u64).expect("begin").expect("new");
    claim_all(&p);
    let mut bad = data.clone();
    bad[PIECE_SIZE as usize + 5] ^= 0xff;
    p.write_piece(0, &bad[..PIECE_SIZE as usize], true).expect("first");
    let err = p.write_piece(1, &bad[PIECE_SIZE as usize..], true).expect_err("mismatch");
    assert!(err.to_string().contains("digest mismatch"), "{err}");
    assert!(matches!(p.poll(0..1), RangeState::Failed(_)));
    assert_eq!(store.state(&d), BlobState::Absent);
    assert!(store.open_blob(&d).expect("open").is_none());
    assert_eq!(std::fs::read_dir(dir.path().join("partial")).expect("ls").count(), 0);
    assert_eq!(store.usage().used, 0);
}

#[test]
fn wrong_piece_length_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), StoreConfig::default()).expect("open");
    let d = Digest::of(b"x");
    let p = store.begin(&d, PIECE_SIZE + 1).expect("begin").expect("new");
    assert!(p.write_piece(1, &[0, 0], true).is_err());
    assert!(p.write_piece(2, &[0], true).is_err());
    assert!(p.write_piece(0, &[0; 10], true).is_err());
}

#[test]
fn claims_make_one_fetcher_per_piece() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), StoreConfig::default()).expect("open");
    let data = blob(4 * PIECE_SIZE as usize, 3);
    let d = Digest::of(&data);
    let p = store.begin(&d, data.len() as u64).expect("begin").expect("new");
    assert_eq!(p.poll(PIECE_SIZE..PIECE_SIZE + 2), RangeState::Claimed(vec![1..2]));
    assert_eq!(p.poll(0..4 * PIECE_SIZE), RangeState::Claimed(vec![0..1, 2..4]));
    assert_eq!(p.poll(0..10), RangeState::Pending);
    p.unclaim(0..1);
    assert_eq!(p.poll(0..10), RangeState::Claimed(vec![0..1]));
    p.write_piece(0, &data[..PIECE_SIZE as usize], true).expect("write");
    assert_eq!(p.poll(0..10), RangeState::Ready);
    assert_eq!(p.poll(0..0), RangeState::Ready);
}

#[test]
fn reopen_keeps_only_persisted_pieces() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = blob(3 * PIECE_SIZE as usize, 4);
    let d = Digest::of(&data);
    {
        let store = Store::open(dir.path(), StoreConfig::default()).expect("open");
        let p = store.begin(&d, data.len() as u64).expect("begin").expect("new");
        claim_all(&p);
        p.write_piece(0, &data[..PIECE_SIZE as usize], true).expect("write");
        p.persist().expect("persist");
        // Written but not persisted: as after a kill -9 before the next bitmap write.
        p.write_piece(2, &data[2 * PIECE_SIZE as usize..], true).expect("write");
        std::fs::write(dir.path().join("tmp/leftover"), b"junk").expect("junk");
    }
    let store = Store::open(dir.path(), StoreConfig::default()).expect("reopen");
    assert_eq!(store.state(&d), BlobState::Partial { size: data.len() as u64, present: PIECE_SIZE });
    assert_eq!(std::fs::read_dir(dir.path().join("tmp")).expect("ls").count(), 0);
    let p = store.begin(&d, data.len() as u64).expect("begin").expect("resumed");
    assert_eq!(p.poll(0..data.len() as u64), RangeState::Claimed(vec![1..3]));
    p.write_piece(1, &data[PIECE_SIZE as usize..2 * PIECE_SIZE as usize], true).expect("write");
    p.write_piece(2, &data[2 * PIECE_SIZE as usize..], true).expect("write");
    assert!(p.is_complete(), "resumed blob verifies over old and new pieces");
}

#[test]
fn damaged_piece_map_discards_the_partial() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = blob(2 * PIECE_SIZE as usize, 5);
    let d = Digest::of(&data);
    {
        let store = Store::open(dir.path(), StoreConfig::default()).expect("open");
        let p = store.begin(&d, data.len() as u64).expect("begin").expect("new");
        claim_all(&p);
        p.write_piece(0, &data[..PIECE_SIZE as usize], true).expect("write");
        p.persist().expect("persist");
    }
    let map = dir.path().join("partial").join(format!("{}.map", d.hex()));
    let mut bytes = std::fs::read(&map).expect("map");
    let n = bytes.len();
    bytes.truncate(n - 3);
    std::fs::write(&map, bytes).expect("damage");
    let store = Store::open(dir.path(), StoreConfig::default()).expect("reopen");
    assert_eq!(store.state(&d), BlobState::Absent);
    assert_eq!(std::fs::read_dir(dir.path().join("partial")).expect("ls").count(), 0);
}

#[test]
fn eviction_is_lru_and_spares_held_blobs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = StoreConfig { capacity: 10_000, high_watermark: 0.9, low_watermark: 0.5 };
    let store = Store::open(dir.path(), cfg).expect("open");
    let blobs: Vec<Vec<u8>> = (0..4).map(|i| blob(2_000, i)).collect();
    let ds: Vec<Digest> = blobs.iter().map(|b| Digest::of(b)).collect();
    for (b, d) in blobs.iter().zip(&ds).take(4) {
        store.put(d, b).expect("put");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // Hold the oldest; touch the second oldest so the third is now least recently used.
    let held = store.open_blob(&ds[0]).expect("open").expect("present");
    drop(store.open_blob(&ds[1]).expect("open"));
    let fifth = blob(2_000, 9);
    store.put(&Digest::of(&fifth), &fifth).expect("put");
    // 10_000 > 9_000: evict unheld LRU (2, then 3, then 1) down to 5_000.
    assert_eq!(store.state(&ds[0]), BlobState::Complete { size: 2_000 }, "held blob stays");
    assert_eq!(store.state(&ds[2]), BlobState::Absent);
    assert_eq!(store.state(&ds[3]), BlobState::Absent);
    assert_eq!(store.state(&ds[1]), BlobState::Absent);
    assert!(matches!(store.state(&Digest::of(&fifth)), BlobState::Complete { .. }));
    let u = store.usage();
    assert_eq!((u.used, u.evicted_blobs), (4_000, 3));
    assert!(!dir.path().join("blobs/sha256").join(ds[2].hex()).exists());
    drop(held);
}

#[test]
fn a_partial_blob_being_read_is_evicted_after_one_nobody_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = StoreConfig { capacity: 10 * PIECE_SIZE, high_watermark: 0.9, low_watermark: 0.8 };
    let store = Store::open(dir.path(), cfg).expect("open");
    let (read, unread) = (Digest::of(b"a lazy layer being read"), Digest::of(b"a layer nobody reads"));
    drop(store.begin(&read, 2 * PIECE_SIZE).expect("begin"));
    std::thread::sleep(std::time::Duration::from_millis(5));
    drop(store.begin(&unread, 2 * PIECE_SIZE).expect("begin"));
    std::thread::sleep(std::time::Duration::from_millis(5));
    // The older one is read (each of a lazy layer's range reads asks for its partial).
    drop(store.partial(&read).expect("partial"));
    // 10 pieces > 9: one 2-piece partial goes, down to 8.
    let big = blob(6 * PIECE_SIZE as usize, 3);
    store.put(&Digest::of(&big), &big).expect("put");
    assert!(matches!(store.state(&read), BlobState::Partial { .. }), "the partial being read stays");
    assert_eq!(store.state(&unread), BlobState::Absent, "the one nobody read goes first");
    assert_eq!(store.usage().evicted_blobs, 1);
}

#[test]
fn a_put_during_a_fill_keeps_its_leases_and_counts_the_bytes_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = StoreConfig { capacity: 6 * PIECE_SIZE, high_watermark: 0.9, low_watermark: 0.5 };
    let store = Store::open(dir.path(), cfg).expect("open");
    let data = blob(2 * PIECE_SIZE as usize, 11);
    let d = Digest::of(&data);
    let p = store.begin(&d, data.len() as u64).expect("begin").expect("new");
    claim_all(&p);
    p.write_piece(0, &data[..PIECE_SIZE as usize], true).expect("write");
    // The same blob arrives whole meanwhile (a manifest fetched by digest twice), and is read.
    store.put(&d, &data).expect("put");
    let held = store.open_blob(&d).expect("open").expect("complete");
    p.write_piece(1, &data[PIECE_SIZE as usize..], true).expect("last piece");
    assert!(p.is_complete());
    assert_eq!(store.usage().used, data.len() as u64, "one blob, counted once");
    // Fill the store past its high watermark: the held blob, oldest of all, stays.
    for seed in 20..23 {
        let other = blob(3 * PIECE_SIZE as usize / 2, seed);
        store.put(&Digest::of(&other), &other).expect("put");
    }
    assert!(store.usage().evicted_blobs > 0, "the store evicted");
    assert_eq!(store.state(&d), BlobState::Complete { size: data.len() as u64 }, "the lease taken after the put still holds");
    let mut back = vec![0; data.len()];
    held.read_at(&mut back, 0).expect("read");
    assert_eq!(back, data);
}

#[test]
fn empty_blob_and_small_puts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), StoreConfig::default()).expect("open");
    let empty = Digest::of(b"");
    assert!(store.begin(&empty, 0).expect("begin").is_none());
    assert_eq!(store.state(&empty), BlobState::Complete { size: 0 });
    assert!(store.put(&empty, b"not empty").is_err());
    let m = br#"{"schemaVersion":2}"#;
    store.put(&Digest::of(m), m).expect("put");
    assert_eq!(store.read_small(&Digest::of(m), 1 << 20).expect("read").as_deref(), Some(&m[..]));
    assert!(store.read_small(&Digest::of(m), 3).is_err(), "limit applies");
}

#[test]
fn recovered_full_blob_is_verified_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = blob(2 * PIECE_SIZE as usize, 6);
    let d = Digest::of(&data);
    let bad_data = blob(2 * PIECE_SIZE as usize, 7);
    let bad = Digest::of(b"something else");
    for (digest, bytes) in [(d, &data), (bad, &bad_data)] {
        // As if killed after every piece was written and persisted, before the commit.
        let n = partial::piece_count(bytes.len() as u64);
        let mut map = Bitmap::new(n);
        (0..n).for_each(|i| map.set(i, true));
        std::fs::create_dir_all(dir.path().join("partial")).expect("mkdir");
        std::fs::write(dir.path().join("partial").join(format!("{}.data", digest.hex())), bytes).expect("data");
        std::fs::write(dir.path().join("partial").join(format!("{}.map", digest.hex())), map.encode(bytes.len() as u64, PIECE_SIZE))
            .expect("map");
    }
    let store = Store::open(dir.path(), StoreConfig::default()).expect("open");
    assert_eq!(store.state(&d), BlobState::Complete { size: data.len() as u64 });
    assert_eq!(store.state(&bad), BlobState::Absent, "a blob that does not match its name is discarded");
    assert_eq!(std::fs::read_dir(dir.path().join("partial")).expect("ls").count(), 0);
}

#[test]
fn meta_paths_stay_inside_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), StoreConfig::default()).expect("open");
    store.write_meta("tags/reg/a/b/_tags/v1", b"x").expect("write");
    assert_eq!(store.read_meta("tags/reg/a/b/_tags/v1").expect("read").as_deref(), Some(&b"x"[..]));
    for bad in ["", "../x", "a/../../x", "/etc/passwd", "a//b", "./a"] {
        assert!(store.write_meta(bad, b"x").is_err(), "{bad:?}");
        assert!(store.list_meta(bad).is_err(), "{bad:?}");
    }
    assert_eq!(store.list_meta("tags/reg/a/b/_tags").expect("list"), ["tags/reg/a/b/_tags/v1"]);
    assert!(store.list_meta("nothing/here").expect("list").is_empty());
}

#[test]
fn have_maps_and_piece_reads_for_peers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), StoreConfig::default()).expect("open");
    let data = blob(2 * PIECE_SIZE as usize + 9, 8);
    let d = Digest::of(&data);
    assert!(store.have_map(&d).is_none());
    let p = store.begin(&d, data.len() as u64).expect("begin").expect("new");
    claim_all(&p);
    p.write_piece(1, &data[PIECE_SIZE as usize..2 * PIECE_SIZE as usize], true).expect("write");
    let (size, map) = store.have_map(&d).expect("partial");
    assert_eq!((size, map.get(0), map.get(1), map.get(2)), (data.len() as u64, false, true, false));
    assert_eq!(store.read_piece(&d, 0).expect("read"), None, "a missing piece is not served");
    assert_eq!(store.read_piece(&d, 1).expect("read").as_deref(), Some(&data[PIECE_SIZE as usize..2 * PIECE_SIZE as usize]));
    p.write_piece(0, &data[..PIECE_SIZE as usize], true).expect("write");
    p.write_piece(2, &data[2 * PIECE_SIZE as usize..], true).expect("write");
    let (_, map) = store.have_map(&d).expect("complete");
    assert_eq!(map.count(), 3);
    assert_eq!(store.read_piece(&d, 2).expect("read").as_deref(), Some(&data[2 * PIECE_SIZE as usize..]));
    assert_eq!(store.read_piece(&d, 3).expect("read"), None);
}
