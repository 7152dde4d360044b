//! Store eviction never breaks a mounted lazy layer. The lazy layer's blob lives in the store
//! only as a partial blob (the pieces read so far); pulling gzip filler images through a small
//! store evicts it while a reader is part-way through files of the mounted layer. Every read must
//! still return the right bytes (they come from the origin again), no lazy read may fail, a Range
//! GET held open across an eviction must not lose its bytes, and a new container reads every file
//! of the layer afterwards. That the lazy layer's own blob was evicted is proved by the node's log
//! and by the origin seeing the blob opened cold again (a new HEAD).

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use crate::harness::containerd::Containerd;
use crate::harness::ferry::{sum_metric, FerryNode, FerryOptions, FERRY_BIN};
use crate::harness::image::{build_busybox_with, push};
use crate::harness::registry::Registry;
use crate::harness::{random_bytes, run_ok, sha256_hex, temp_dir};
use crate::lazy_pull::{converted_busybox, ferry_pull, registry_layers, run};

const MIB: usize = 1 << 20;
const FILLERS: usize = 4;

#[tokio::test(flavor = "multi_thread")]
async fn evicting_a_mounted_lazy_layers_blob_never_breaks_its_reads() {
    let work = temp_dir("gc-lazy");
    let data: Vec<Vec<u8>> = (0..4).map(|i| random_bytes(40 + i, 8 * MIB)).collect();
    let paths = ["opt/a.bin", "opt/b.bin", "opt/c.bin", "opt/d.bin"];
    let files: Vec<(&str, &[u8])> = paths.iter().zip(&data).map(|(p, d)| (*p, d.as_slice())).collect();
    let registry = converted_busybox(work.path(), "gc lazy", &files, "test/gclazy").await;
    for i in 0..FILLERS {
        let dir = work.path().join(format!("filler{i}"));
        std::fs::create_dir_all(&dir).expect("filler dir");
        let image = build_busybox_with(&dir, "filler", &[("opt/fill.bin", &random_bytes(50 + i as u64, 16 * MIB))]);
        push(&image, &registry, &format!("test/filler{i}:latest"));
    }
    let (layer, layer_size) = registry_layers(&registry, "test/gclazy", "chunked").await.remove(0);
    let blob_url = format!("{}/v2/test/gclazy/blobs/{layer}", registry.url());
    let blob = registry.client().get(&blob_url).send().await.and_then(|r| r.error_for_status()).expect("GET the layer");
    let blob = blob.bytes().await.expect("the layer's bytes");

    // The lazy layer (~33 MiB) and one filler (~17 MiB) together are over the high watermark.
    let (ferry, containerd) = small_node(&registry, work.path(), "48MiB").await;
    let reference = "registry.local/test/gclazy:chunked";
    assert_eq!(ferry_pull(&ferry, &containerd, reference), ["lazy"]);
    let sum_a = run(&containerd, reference, "gc-a", &["/bin/busybox", "sha256sum", "/opt/a.bin"]);
    assert_eq!(sum_a.split_whitespace().next(), Some(sha256_hex(&data[0]).as_str()), "a.bin before eviction");
    assert_eq!(store_usage(&ferry)["evicted_blobs"], 0, "nothing evicted yet");
    registry.settle_log().await;
    let heads_before = heads_of(&registry, &layer);

    // A reader goes through b.bin and c.bin on the mount while the fillers are pulled; its budget
    // is raised as each pull starts, so its reads are spread over all of them and it is still
    // reading when the last one ends.
    let mount = lazy_mount(&ferry);
    let reader = Budget::new(MIB as u64);
    let reading = {
        let (reader, files) = (reader.clone(), [mount.join(paths[1]), mount.join(paths[2])]);
        std::thread::spawn(move || files.iter().map(|f| paced_sha256(f, &reader)).collect::<Vec<_>>())
    };
    reader.wait_done(MIB as u64);
    // A Range GET of the blob, as the mount sends them, stays open (its client not reading) over
    // the first filler pull: the store must not evict what it is sending.
    let (target, range) = (format!("/v2/test/gclazy/blobs/{layer}?ns=registry.local"), 0..16 * MIB);
    let at_once = paced_range_get(&ferry.registry_addr, &target, &range, &Budget::new(u64::MAX));
    assert!(at_once.expect("a range through the mirror") == blob[range.clone()], "a range read at once");
    let slow = Budget::new(MIB as u64 / 4);
    let mut slow_get = Some({
        let (addr, target, range, slow) = (ferry.registry_addr.clone(), target.clone(), range.clone(), slow.clone());
        std::thread::spawn(move || paced_range_get(&addr, &target, &range, &slow))
    });
    slow.wait_done(MIB as u64 / 4);

    let started = Instant::now();
    for i in 0..FILLERS {
        reader.allow((2 * 8 * MIB * (i + 1) / (FILLERS + 1)) as u64);
        let filler = format!("registry.local/test/filler{i}:latest");
        assert_eq!(ferry_pull(&ferry, &containerd, &filler), ["unpacked"], "{filler}");
        if let Some(get) = slow_get.take() {
            slow.allow(u64::MAX);
            let body = get.join().expect("the slow range thread").expect("the slow range");
            assert!(body == blob[range.clone()], "a range sent across a filler pull has the blob's bytes");
        }
    }
    let read_while_pulling = reader.done.load(SeqCst);
    reader.allow(u64::MAX);
    let sums = reading.join().expect("the reader thread");
    eprintln!("pulled {FILLERS} fillers in {:?}; the reader had read {read_while_pulling} of 16 MiB", started.elapsed());
    for (sum, want) in sums.iter().zip(&data[1..3]) {
        assert_eq!(sum.as_deref(), Ok(sha256_hex(want).as_str()), "a read on the mount across evictions");
    }

    // The store evicted, and the lazy layer's own blob was among what went.
    let usage = store_usage(&ferry);
    eprintln!("store after the fillers: {usage}");
    assert!(usage["evicted_blobs"].as_u64() > Some(0), "the fillers made the store evict: {usage}");
    assert!(usage["evicted_bytes"].as_u64() >= Some(layer_size), "at least the lazy layer's size was evicted: {usage}");
    let evictions = ferry.log().lines().filter(|l| l.contains(" evicted ") && l.contains(&layer)).count();
    assert!(evictions > 0, "the lazy layer's blob {layer} was evicted");
    registry.settle_log().await;
    let heads_after = heads_of(&registry, &layer);
    assert!(heads_after > heads_before, "reads after an eviction opened the blob cold again: {heads_before} HEADs, then {heads_after}");
    eprintln!("the lazy blob was evicted {evictions} times and opened cold {} more times", heads_after - heads_before);

    // A new container reads every file; d.bin was never read before, so its bytes come from the origin.
    let gets_before = registry.served_blob_gets("test/gclazy", &layer).len();
    let cmd: Vec<String> = ["/bin/busybox", "sha256sum"].into_iter().map(String::from).chain(paths.map(|p| format!("/{p}"))).collect();
    let out = run(&containerd, reference, "gc-all", &cmd.iter().map(String::as_str).collect::<Vec<_>>());
    for (path, want) in paths.iter().zip(&data) {
        let line = out.lines().find(|l| l.ends_with(path)).unwrap_or_else(|| panic!("{path} in {out}"));
        assert!(line.starts_with(&sha256_hex(want)), "{path} after the evictions: {line}");
    }
    registry.settle_log().await;
    assert!(registry.served_blob_gets("test/gclazy", &layer).len() > gets_before, "d.bin was read from the origin");
    let metrics = ferry.metrics_text().await;
    assert!(metrics.contains("ferry_lazy_read_errors_total"), "the read-error counter is exported");
    assert_eq!(sum_metric(&metrics, "ferry_lazy_read_errors_total", &[]), 0.0, "no lazy read failed");
}

/// A node with a store of `capacity` (evicting from 80% down to 50%), the snapshotter with
/// prefetch off, and a containerd that has it as `ferry`.
async fn small_node(registry: &Registry, work: &Path, capacity: &str) -> (FerryNode, Containerd) {
    let socket = work.join("snapshotter.sock");
    let config = work.join("ferry.toml");
    let toml = "[store]\nhigh_watermark = 0.8\nlow_watermark = 0.5\n[snapshotter]\nprefetch_rate = \"off\"\n";
    std::fs::write(&config, toml).expect("write config");
    let mut options = FerryOptions::upstream("registry.local", &registry.url());
    let (config, socket_arg) = (config.display().to_string(), socket.display().to_string());
    options.extra_args = ["--capacity", capacity, "--config", &config, "--snapshotter-socket", &socket_arg].map(String::from).to_vec();
    let ferry = FerryNode::start(options).await;
    let containerd = Containerd::start_with_snapshotter(&socket).await;
    (ferry, containerd)
}

/// The host path of the node's one lazy (FUSE) mount.
fn lazy_mount(ferry: &FerryNode) -> PathBuf {
    let root = ferry.store().join("snapshotter/snapshots");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let mounts: Vec<PathBuf> = mountinfo
        .lines()
        .filter(|l| l.contains(" - fuse"))
        .filter_map(|l| l.split(' ').nth(4).map(PathBuf::from))
        .filter(|target| target.starts_with(&root))
        .collect();
    assert_eq!(mounts.len(), 1, "one lazy mount under {}: {mounts:?}", root.display());
    mounts[0].clone()
}

/// How far a reading thread may go: it reads while `done < allowed`; the test raises `allowed`.
#[derive(Clone)]
struct Budget {
    allowed: Arc<AtomicU64>,
    done: Arc<AtomicU64>,
}

impl Budget {
    fn new(allowed: u64) -> Budget {
        Budget { allowed: Arc::new(AtomicU64::new(allowed)), done: Arc::default() }
    }

    fn allow(&self, bytes: u64) {
        self.allowed.store(bytes, SeqCst);
    }

    /// Called by the reader before each read: waits (two minutes at most) for budget.
    fn wait_turn(&self) {
        wait_until("a raised read budget", || self.done.load(SeqCst) < self.allowed.load(SeqCst));
    }

    /// Waits (two minutes at most) until the reader has read `bytes`.
    fn wait_done(&self, bytes: u64) {
        wait_until("the reader's first bytes", || self.done.load(SeqCst) >= bytes);
    }
}

fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads `path` in 256 KiB steps within `budget`; returns its sha256, or the error that ended it.
fn paced_sha256(path: &Path, budget: &Budget) -> Result<String, String> {
    let mut file = std::fs::File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    let (mut hasher, mut buf, mut offset) = (Sha256::new(), vec![0; MIB / 4], 0);
    loop {
        budget.wait_turn();
        let n = file.read(&mut buf).map_err(|e| format!("read {} at {offset}: {e}", path.display()))?;
        if n == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buf[..n]);
        offset += n;
        budget.done.fetch_add(n as u64, SeqCst);
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends `GET target` with `Range: range` to the mirror at `addr`, reads the reply in 64 KiB
/// steps within `budget` (counting body bytes), and returns the body of a 206.
fn paced_range_get(addr: &str, target: &str, range: &Range<usize>, budget: &Budget) -> Result<Vec<u8>, String> {
    let fail = |e: std::io::Error| format!("GET {target} bytes {range:?}: {e}");
    let mut stream = TcpStream::connect(addr).map_err(fail)?;
    stream.set_read_timeout(Some(Duration::from_secs(60))).map_err(fail)?;
    let (first, last) = (range.start, range.end - 1);
    let request = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nRange: bytes={first}-{last}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(fail)?;
    let (mut reply, mut buf, mut body_at) = (Vec::new(), vec![0; MIB / 16], None);
    loop {
        budget.wait_turn();
        let n = stream.read(&mut buf).map_err(fail)?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
        body_at = body_at.or_else(|| reply.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4));
        budget.done.store(body_at.map_or(0, |at| reply.len() - at) as u64, SeqCst);
    }
    let at = body_at.ok_or_else(|| format!("GET {target}: no reply head in {} bytes", reply.len()))?;
    let head = String::from_utf8_lossy(&reply[..at]).to_string();
    if !head.starts_with("HTTP/1.1 206") {
        return Err(format!("GET {target} bytes {range:?}: {head}"));
    }
    Ok(reply.split_off(at))
}

/// The store part of `ferry status --json`.
fn store_usage(ferry: &FerryNode) -> serde_json::Value {
    let mut status = Command::new(FERRY_BIN);
    status.args(["status", "--json", "--admin-socket"]).arg(ferry.admin_socket());
    let json = run_ok(&mut status, Duration::from_secs(10));
    let status: serde_json::Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("ferry status --json: {e}\n{json}"));
    status["store"].clone()
}

/// HEADs of `digest` of the lazy image that the origin answered: one per cold open of the blob.
fn heads_of(registry: &Registry, digest: &str) -> usize {
    let path = format!("/v2/test/gclazy/blobs/{digest}");
    registry.access_lines().iter().filter(|l| l.method == "HEAD" && l.path == path && l.status == 200).count()
}
