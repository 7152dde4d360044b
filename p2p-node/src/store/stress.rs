//! The store under load: reader threads hold leases on random complete blobs and check every
//! byte, while writer threads (`put`, and partial fills that commit or are abandoned half way)
//! keep it above its high watermark, so it evicts all the time — including blobs it evicted a
//! moment before and that were written again. Runs `FERRY_STORE_STRESS_SECS` seconds (3 by
//! default).
//!
//! What must hold: a read never fails or returns wrong bytes; while a lease is held, its blob
//! stays complete and its file stays in `blobs/`; no write fails; at the end the bookkeeping
//! matches the folders exactly and the store is within its capacity.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;

/// Blobs the writers pick from: about three times the store's capacity, so evicted blobs come
/// back again and again.
const POOL: u64 = 40;
const CAPACITY: u64 = 16 << 20;

/// A small xorshift generator: the test needs no cryptographic randomness, only variety.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Blob `seed` of the pool: 0.25 to 2.25 MiB (one to three pieces) of seeded bytes.
fn content(seed: u64) -> Vec<u8> {
    let mut rng = Rng::new(seed + 1);
    let len = (PIECE_SIZE / 4 + rng.below(2 * PIECE_SIZE)) as usize;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        out.extend_from_slice(&rng.next().to_le_bytes());
    }
    out.truncate(len);
    out
}

struct Shared {
    store: Store,
    pool: Vec<(Digest, Vec<u8>)>,
    stop: AtomicBool,
    problems: Mutex<Vec<String>>,
    reads: AtomicU64,
    /// Leases during which the store evicted something: proof that leases met eviction.
    leases_across_evictions: AtomicU64,
    commits: AtomicU64,
}

impl Shared {
    fn problem(&self, what: String) {
        let mut p = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        if p.len() < 20 {
            p.push(what);
        }
    }
}

/// Opens random blobs and reads each whole in random slices, checking the bytes and, between
/// slices, that the leased blob is still complete and still on disk.
fn reader(s: &Shared, seed: u64) {
    let mut rng = Rng::new(seed);
    while !s.stop.load(Ordering::Relaxed) {
        let (d, bytes) = &s.pool[rng.below(POOL) as usize];
        let r = match s.store.open_blob(d) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => {
                s.problem(format!("opening {d}: {e}"));
                continue;
            }
        };
        let evicted_before = s.store.usage().evicted_blobs;
        let size = bytes.len() as u64;
        if r.size() != size {
            s.problem(format!("{d} opened with size {}, not {size}", r.size()));
        }
        let path = s.store.root().join("blobs/sha256").join(d.hex());
        let mut offset = 0u64;
        while offset < size {
            let len = (1 + rng.below(256 << 10)).min(size - offset);
            let mut buf = vec![0; len as usize];
            match r.read_at(&mut buf, offset) {
                Ok(()) if buf[..] == bytes[offset as usize..(offset + len) as usize] => {}
                Ok(()) => s.problem(format!("wrong bytes in {d} at {offset}..{}", offset + len)),
                Err(e) => s.problem(format!("reading {d} at {offset} under a lease: {e}")),
            }
            offset += len;
            // Give the writers time to evict around the lease.
            std::thread::sleep(Duration::from_micros(200));
            if s.store.state(d) != (BlobState::Complete { size }) {
                s.problem(format!("{d} is {:?} while a lease on it is held", s.store.state(d)));
            }
            if !path.exists() {
                s.problem(format!("{} is gone while a lease on {d} is held", path.display()));
            }
        }
        if s.store.usage().evicted_blobs > evicted_before {
            s.leases_across_evictions.fetch_add(1, Ordering::Relaxed);
        }
        s.reads.fetch_add(1, Ordering::Relaxed);
        drop(r);
    }
}

/// Writes random blobs of the pool with `put`.
fn putter(s: &Shared, seed: u64) {
    let mut rng = Rng::new(seed);
    while !s.stop.load(Ordering::Relaxed) {
        let (d, bytes) = &s.pool[rng.below(POOL) as usize];
        if let Err(e) = s.store.put(d, bytes) {
            s.problem(format!("put {d}: {e}"));
        }
    }
}

/// Fills random blobs of the pool piece by piece in random order; one time in four it gives up
/// half way (an idle partial the store may evict, or the next filler resumes).
fn filler(s: &Shared, seed: u64) {
    let mut rng = Rng::new(seed);
    while !s.stop.load(Ordering::Relaxed) {
        let (d, bytes) = &s.pool[rng.below(POOL) as usize];
        let size = bytes.len() as u64;
        let p = match s.store.begin(d, size) {
            Ok(Some(p)) => p,
            Ok(None) => continue, // complete already
            Err(e) => {
                s.problem(format!("begin {d}: {e}"));
                continue;
            }
        };
        let RangeState::Claimed(runs) = p.poll(0..size) else { continue };
        let mut pieces: Vec<u32> = runs.into_iter().flatten().collect();
        for i in (1..pieces.len()).rev() {
            pieces.swap(i, rng.below(i as u64 + 1) as usize);
        }
        let abandon_at = if rng.below(4) == 0 { rng.below(pieces.len() as u64) as usize } else { usize::MAX };
        for (n, &i) in pieces.iter().enumerate() {
            if n == abandon_at {
                pieces[n..].iter().for_each(|&i| p.unclaim(i..i + 1));
                break;
            }
            let r = p.piece_range(i);
            if let Err(e) = p.write_piece(i, &bytes[r.start as usize..r.end as usize], true) {
                s.problem(format!("writing piece {i} of {d}: {e}"));
                break;
            }
        }
        if p.is_complete() {
            s.commits.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[test]
fn leases_hold_while_writers_keep_the_store_evicting() {
    let secs = std::env::var("FERRY_STORE_STRESS_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(3);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = StoreConfig { capacity: CAPACITY, high_watermark: 0.9, low_watermark: 0.5 };
    let store = Store::open(dir.path(), config).expect("open");
    let pool = (0..POOL).map(content).map(|b| (Digest::of(&b), b)).collect();
    let s = Arc::new(Shared {
        store,
        pool,
        stop: AtomicBool::new(false),
        problems: Mutex::default(),
        reads: AtomicU64::new(0),
        leases_across_evictions: AtomicU64::new(0),
        commits: AtomicU64::new(0),
    });
    let mut threads = Vec::new();
    for t in 0..4 {
        let s = s.clone();
        threads.push(std::thread::spawn(move || reader(&s, 100 + t)));
    }
    for t in 0..2 {
        let s = s.clone();
        threads.push(std::thread::spawn(move || filler(&s, 200 + t)));
    }
    let putter_shared = s.clone();
    threads.push(std::thread::spawn(move || putter(&putter_shared, 300)));
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline && s.problems.lock().unwrap_or_else(|e| e.into_inner()).is_empty() {
        std::thread::sleep(Duration::from_millis(50));
    }
    s.stop.store(true, Ordering::Relaxed);
    threads.into_iter().for_each(|t| t.join().expect("thread"));

    let problems = s.problems.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(problems.is_empty(), "{} problems, first ones:\n{}", problems.len(), problems.join("\n"));
    let (reads, across, commits) =
        (s.reads.load(Ordering::Relaxed), s.leases_across_evictions.load(Ordering::Relaxed), s.commits.load(Ordering::Relaxed));
    let u = s.store.usage();
    eprintln!("{reads} leased reads ({across} across evictions), {commits} fills committed, {} blobs evicted", u.evicted_blobs);
    assert!(u.evicted_blobs > 0, "the store never evicted");
    assert!(reads > 20 && across > 0 && commits > 0, "too little happened to mean anything");

    // The bookkeeping matches the folders: every complete blob is a file of its size, every file
    // a complete blob; every partial has its data file; nothing else is counted.
    let files = read_dir(&dir.path().join("blobs/sha256")).expect("ls blobs");
    for (name, meta) in &files {
        let d: Digest = format!("sha256:{name}").parse().expect("blob file name");
        assert_eq!(s.store.state(&d), BlobState::Complete { size: meta.len() }, "blobs/sha256/{name}");
    }
    assert_eq!(files.len() as u64, u.complete_blobs, "complete blobs in the store's books vs. files in blobs/");
    let partials = s.store.partials();
    let data_files = read_dir(&dir.path().join("partial")).expect("ls partial").iter().filter(|(n, _)| n.ends_with(".data")).count();
    assert_eq!(data_files, partials.len(), "partial data files vs. partial blobs");
    let partial_bytes: u64 = partials.iter().map(|p| p.size()).sum();
    assert_eq!(u.used, u.complete_bytes + partial_bytes, "used bytes vs. what the store holds");
    drop(partials);

    // Nothing is held now: after the next write the store is at most at its high watermark.
    s.store.put(&Digest::of(b"last"), b"last").expect("put");
    let u = s.store.usage();
    assert!(u.used as f64 <= CAPACITY as f64 * 0.9, "used {} of {CAPACITY} after a write with nothing held", u.used);
}
