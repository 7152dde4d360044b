//! Benchmark (not a test; run it with `--ignored`): sequential read of a fully fetched file through
//! a lazy layer's FUSE mount against the same file on local disk, page cache dropped before each
//! read, rounds interleaved, medians compared as a ratio (target: FUSE ≥ 0.8× local disk).
//!
//!   sudo cargo test --release -p snapshotter --test fuse_bench -- --ignored --nocapture
//!
//! `BENCH_MIB` (default 1024) sets the file size; `ROUNDS` (default 3) the rounds. Needs root.

mod common;

use std::io::Read;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use snapshotter::layer::LazyLayer;
use snapshotter::zstd_chunked::{write_tar, WriteOptions};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn drop_caches() {
    let _ = std::process::Command::new("sync").status();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", b"3");
}

/// Reads `path` start to end in 1 MiB reads; returns MiB/s.
fn read_rate(path: &Path) -> f64 {
    drop_caches();
    let mut f = std::fs::File::open(path).expect("open");
    let mut buf = vec![0u8; 1 << 20];
    let started = Instant::now();
    let mut n = 0u64;
    loop {
        let got = f.read(&mut buf).expect("read");
        if got == 0 {
            break;
        }
        n += got as u64;
    }
    n as f64 / (1 << 20) as f64 / started.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[test]
#[ignore = "a benchmark: run with --ignored"]
fn cached_reads_through_fuse_against_local_disk() {
    assert!(common::is_root(), "the benchmark mounts FUSE: run it as root");
    let mib = env("BENCH_MIB", 1024);
    let rounds = env("ROUNDS", 3);
    let work = tempfile::tempdir_in("/var/tmp").expect("tempdir");
    let src = work.path().join("src");
    std::fs::create_dir_all(&src).expect("mkdir");
    let data = common::random(mib << 20, 7);
    std::fs::write(src.join("model.bin"), &data).expect("write");
    drop(data);
    let tar = work.path().join("layer.tar");
    let ok = std::process::Command::new("tar").args(["-C"]).arg(&src).args(["-cf"]).arg(&tar).arg(".").status().expect("tar");
    assert!(ok.success());
    let (blob, written) = write_tar(std::fs::File::open(&tar).expect("tar"), Vec::new(), WriteOptions::default()).expect("convert");
    let layer = Arc::new(LazyLayer::open(&blob, &written.annotations).expect("open").expect("lazy"));
    let mnt = work.path().join("mnt");
    std::fs::create_dir_all(&mnt).expect("mkdir");
    let mounted = snapshotter::fuse::mount(
        layer,
        Arc::new(blob),
        work.path().join("cache"),
        &mnt,
        snapshotter::fuse::MountOptions { prefetch: Some(0), ..Default::default() },
    )
    .expect("mount");
    let deadline = Instant::now() + Duration::from_secs(600);
    while !mounted.prefetch_done.load(Ordering::Relaxed) {
        assert!(Instant::now() < deadline, "the prefetch did not finish");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (mut local, mut fuse) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        local.push(read_rate(&src.join("model.bin")));
        fuse.push(read_rate(&mnt.join("model.bin")));
    }
    let (l, f) = (median(local), median(fuse));
    let ratio = f / l;
    println!("{mib} MiB file, fully fetched: local disk {l:.0} MiB/s, FUSE {f:.0} MiB/s (medians of {rounds})");
    println!("RESULT fuse_vs_local={ratio:.2} {}", if ratio >= 0.8 { "ok" } else { "MISSED (target >= 0.8)" });
}
