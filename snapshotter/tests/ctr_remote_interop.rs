//! Lazy layers written by a third party: stargz-snapshotter's `ctr-remote` (Debian's 0.12), in
//! both formats. The eStargz and zstd:chunked readers must give every file exactly as a plain
//! extraction of the same layer does; the eStargz writer must produce the same TOC as
//! `ctr-remote` for the same input layer.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use p2p_node::Digest;
use snapshotter::estargz::{self, EstargzIndex, WriteOptions};
use snapshotter::toc::{Entry, Kind};
use snapshotter::zstd_chunked;

/// Kills (and reaps) a process we started when the test ends, however it ends.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(name)).find(|p| p.is_file())
}

fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}\n{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
    out.stdout
}

fn gunzip(blob: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(blob), &mut out).expect("gunzip");
    out
}

/// Opens `blob`, extracts it with `tar -xzf`, and compares every TOC entry with the extraction
/// (and every extracted path with the TOC). Returns the index.
fn check_like_tar(blob: &Vec<u8>, toc_digest: &Digest, scratch: &Path) -> EstargzIndex {
    let index = estargz::open(blob, Some(toc_digest)).expect("open the ctr-remote layer");
    assert_eq!(&index.toc_digest, toc_digest);
    let layer = scratch.join("layer.tar.gz");
    let root = scratch.join("x");
    std::fs::create_dir_all(&root).expect("mkdir");
    std::fs::write(&layer, blob).expect("write layer");
    run(Command::new("tar").arg("-xzf").arg(&layer).arg("-C").arg(&root));
    let mut chunks = 0;
    for e in &index.toc.entries {
        let path = root.join(&e.name);
        let meta = std::fs::symlink_metadata(&path).unwrap_or_else(|err| panic!("{}: {err}", e.name));
        match e.kind {
            Kind::Reg => {
                let mut content = Vec::with_capacity(e.size as usize);
                for c in &e.chunks {
                    assert_eq!(c.file_offset, content.len() as u64);
                    assert_eq!(c.inner_offset, 0, "ctr-remote 0.12 starts every chunk at its member's start");
                    assert_eq!(&blob[c.blob_range.start as usize..][..2], &[0x1f, 0x8b], "{}: a chunk starts a gzip member", e.name);
                    content.extend(estargz::read_chunk(blob, c).expect("read chunk"));
                    chunks += 1;
                }
                assert_eq!(content, std::fs::read(&path).expect("read extracted"), "{}", e.name);
                if let Some(d) = e.digest {
                    assert_eq!(Digest::of(&content), d, "{}: whole-file digest", e.name);
                }
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
    assert!(chunks > 0);
    // Everything tar extracted is in the TOC, except the TOC itself.
    let names: std::collections::BTreeSet<&str> = index.toc.entries.iter().map(|e| e.name.as_str()).collect();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for d in std::fs::read_dir(&dir).expect("read_dir") {
            let p = d.expect("dir entry").path();
            let rel = p.strip_prefix(&root).expect("under root").to_str().expect("utf-8").to_string();
            if rel != estargz::TOC_TAR_NAME {
                assert!(names.contains(rel.as_str()), "{rel} was extracted but is not in the TOC");
            }
            if std::fs::symlink_metadata(&p).expect("lstat").is_dir() {
                stack.push(p);
            }
        }
    }
    index
}

#[test]
fn ctr_remote_fixture_reads_exactly_like_tar() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/");
    let blob = std::fs::read(format!("{dir}estargz-busybox.layer")).expect("fixture layer");
    let digest: Digest =
        std::fs::read_to_string(format!("{dir}estargz-busybox.layer.toc-digest")).expect("fixture digest").trim().parse().expect("digest");
    let scratch = tempfile::tempdir().expect("tempdir");
    let index = check_like_tar(&blob, &digest, scratch.path());
    let busybox = index.toc.entries.iter().find(|e| e.name == "bin/busybox").expect("bin/busybox");
    assert!(busybox.chunks.len() > 20, "converted with 64 KiB chunks: {}", busybox.chunks.len());
    assert_eq!(index.toc.entries[0].name, estargz::NO_PREFETCH_LANDMARK);
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !ready() {
        assert!(Instant::now() < deadline, "{what} did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The digest of the manifest `ctr image ls` lists for `name`.
fn manifest_of(ctr: &dyn Fn(&[&str]) -> Vec<u8>, name: &str) -> serde_json::Value {
    let ls = String::from_utf8(ctr(&["image", "ls"])).expect("utf-8");
    let digest = ls
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|cols| cols.first() == Some(&name))
        .and_then(|cols| cols.get(2).map(|d| d.to_string()))
        .unwrap_or_else(|| panic!("{name} not in `ctr image ls`:\n{ls}"));
    serde_json::from_slice(&ctr(&["content", "get", &digest])).expect("manifest JSON")
}

/// Comparable part of an entry: everything but where its bytes lie in the blob.
fn shape(e: &Entry) -> Entry {
    let mut e = e.clone();
    for c in &mut e.chunks {
        c.blob_range = 0..0;
    }
    e
}

#[test]
fn ctr_remote_conversion_reads_exactly_like_tar_and_matches_our_writer() {
    let Some(ctr_remote) = which("ctr-remote") else {
        eprintln!("SKIPPED: ctr-remote (Debian package stargz-snapshotter) is not installed");
        return;
    };
    let started = Instant::now();
    let tmp = tempfile::tempdir().expect("tempdir");
    let t = tmp.path();
    let port = free_port();
    std::fs::write(
        t.join("reg.yml"),
        format!(
            "version: 0.1\nstorage: {{ filesystem: {{ rootdirectory: {} }} }}\nhttp: {{ addr: 127.0.0.1:{port} }}\n",
            t.join("reg-data").display()
        ),
    )
    .expect("registry config");
    let sock = t.join("containerd.sock");
    std::fs::write(
        t.join("containerd.toml"),
        format!(
            "version = 2\nroot = \"{0}/root\"\nstate = \"{0}/state\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = \"{1}\"\n[ttrpc]\n  address = \"{1}.ttrpc\"\n[debug]\n  address = \"{0}/debug.sock\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{0}/opt\"\n",
            t.display(),
            sock.display()
        ),
    )
    .expect("containerd config");
    std::fs::create_dir_all(t.join("tmp")).expect("mkdir");
    let log = |name: &str| std::fs::File::create(t.join(name)).expect("log file");
    let spawn = |cmd: &mut Command, name: &'static str| {
        Proc(
            cmd.env("TMPDIR", t.join("tmp"))
                .stdin(Stdio::null())
                .stdout(log(&format!("{name}.log")))
                .stderr(log(&format!("{name}.err")))
                .spawn()
                .unwrap_or_else(|e| panic!("{name}: {e}")),
        )
    };
    let _registry = spawn(Command::new("docker-registry").arg("serve").arg(t.join("reg.yml")), "docker-registry");
    let _containerd = spawn(Command::new("containerd").arg("--config").arg(t.join("containerd.toml")), "containerd");
    wait_for("docker-registry", || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    let ctr = |args: &[&str]| run(Command::new("ctr").arg("-a").arg(&sock).args(args));
    wait_for("containerd", || {
        sock.exists() && Command::new("ctr").arg("-a").arg(&sock).arg("version").output().is_ok_and(|o| o.status.success())
    });

    // A small image: busybox, plus an empty file, a hardlink, long names, a multi-chunk file.
    let img = t.join("img");
    let b = t.join("b");
    let umoci = |args: &[&str]| run(Command::new("umoci").current_dir(t).args(args));
    umoci(&["init", "--layout", "img"]);
    umoci(&["new", "--image", "img:latest"]);
    umoci(&["unpack", "--rootless", "--image", "img:latest", "b"]);
    let rootfs = b.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).expect("mkdir bin");
    std::fs::copy(which("busybox").expect("busybox (busybox-static) is installed"), rootfs.join("bin/busybox")).expect("copy busybox");
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).expect("symlink");
    std::fs::write(rootfs.join("empty"), b"").expect("write");
    std::fs::write(rootfs.join("one"), b"hi\n").expect("write");
    std::fs::hard_link(rootfs.join("one"), rootfs.join("hard")).expect("hardlink");
    let long = rootfs.join("x".repeat(120));
    std::fs::create_dir(&long).expect("mkdir");
    std::fs::write(long.join("y".repeat(150)), b"long\n").expect("write");
    let noise: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(rootfs.join("noise"), noise).expect("write");
    umoci(&["repack", "--image", "img:latest", "b"]);
    umoci(&["config", "--image", "img:latest", "--config.cmd", "/bin/sh"]);
    let source = format!("127.0.0.1:{port}/test/busybox:latest");
    run(Command::new("skopeo")
        .args(["copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:latest", img.display()))
        .arg(format!("docker://{source}")));
    // `content fetch` registers the image like `image pull` but unpacks (and mounts) nothing.
    ctr(&["content", "fetch", "--plain-http", &source]);
    run(Command::new(&ctr_remote).arg("-a").arg(&sock).args([
        "image",
        "convert",
        "--oci",
        "--estargz",
        "--estargz-chunk-size",
        "65536",
        &source,
        "conv:estargz",
    ]));

    let original = manifest_of(&ctr, &source);
    let converted = manifest_of(&ctr, "conv:estargz");
    let layers = converted["layers"].as_array().expect("layers");
    let originals = original["layers"].as_array().expect("layers");
    assert_eq!(layers.len(), originals.len());
    assert!(!layers.is_empty());
    for (i, (layer, orig)) in layers.iter().zip(originals).enumerate() {
        let digest = layer["digest"].as_str().expect("layer digest");
        let blob = ctr(&["content", "get", digest]);
        assert_eq!(Digest::of(&blob).to_string(), digest);
        let annotations = &layer["annotations"];
        let toc_digest: Digest =
            annotations[estargz::TOC_DIGEST_ANNOTATION].as_str().expect("toc.digest annotation").parse().expect("digest");
        let scratch = t.join(format!("layer{i}"));
        let index = check_like_tar(&blob, &toc_digest, &scratch);
        let plain = gunzip(&blob);
        assert_eq!(annotations[estargz::UNCOMPRESSED_SIZE_ANNOTATION].as_str(), Some(plain.len().to_string().as_str()));

        // Our writer, fed the original layer's tar, gives the same TOC (but for blob offsets).
        let orig_tar = gunzip(&ctr(&["content", "get", orig["digest"].as_str().expect("digest")]));
        let mut ours = Vec::new();
        let written = estargz::write(&orig_tar[..], &mut ours, &WriteOptions { chunk_size: 65536, level: 9, prioritized: Vec::new() })
            .expect("write");
        let our_index = estargz::open(&ours, Some(&written.toc_digest)).expect("open ours");
        let theirs: Vec<Entry> = index.toc.entries.iter().map(shape).collect();
        let mine: Vec<Entry> = our_index.toc.entries.iter().map(shape).collect();
        assert_eq!(mine, theirs, "layer {i}: our TOC differs from ctr-remote's");
        assert_eq!(written.uncompressed_size, plain.len() as u64, "layer {i}: same decompressed size");
        eprintln!(
            "layer {i}: {} entries, {} chunks read back as tar extracts them; our TOC is the same",
            index.toc.entries.len(),
            index.toc.chunks().count()
        );
    }

    // zstd:chunked from the same producer: its older 40-byte footer and legacy annotation names.
    run(Command::new(&ctr_remote).arg("-a").arg(&sock).args([
        "image",
        "convert",
        "--oci",
        "--zstdchunked",
        "--estargz-chunk-size",
        "65536",
        &source,
        "conv:zstdchunked",
    ]));
    let converted = manifest_of(&ctr, "conv:zstdchunked");
    for (i, layer) in converted["layers"].as_array().expect("layers").iter().enumerate() {
        let digest = layer["digest"].as_str().expect("layer digest");
        let blob = ctr(&["content", "get", digest]);
        let annotations: std::collections::BTreeMap<String, String> =
            serde_json::from_value(layer["annotations"].clone()).expect("annotations");
        let (sum, pos) = zstd_chunked::from_annotations(&annotations).expect("annotations parse").expect("zstd:chunked annotations");
        let index = zstd_chunked::open(&blob, Some(pos), Some(&sum)).expect("open ctr-remote's zstd:chunked layer");
        assert_eq!(zstd_chunked::open(&blob, None, None).expect("by footer").toc, index.toc, "the 40-byte footer agrees");
        let scratch = t.join(format!("zlayer{i}"));
        std::fs::create_dir_all(&scratch).expect("mkdir");
        let mut tar = Command::new("tar").arg("-x").arg("-C").arg(&scratch).stdin(Stdio::piped()).spawn().expect("tar");
        let plain = zstd::decode_all(&blob[..]).expect("stock zstd decoding");
        std::io::Write::write_all(tar.stdin.as_mut().expect("stdin"), &plain).expect("feed tar");
        drop(tar.stdin.take());
        assert!(tar.wait().expect("tar").success());
        let mut files = 0;
        for e in index.toc.entries.iter().filter(|e| e.kind == Kind::Reg) {
            let mut data = Vec::new();
            for c in &e.chunks {
                data.extend(zstd_chunked::read_chunk(&blob, c).expect("chunk"));
            }
            assert_eq!(data, std::fs::read(scratch.join(&e.name)).expect("extracted file"), "{}", e.name);
            files += 1;
        }
        assert!(files >= 4, "layer {i}: only {files} files");
        eprintln!("zstd:chunked layer {i}: {files} files, {} chunks read back as tar extracts them", index.toc.chunks().count());
    }
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
}
