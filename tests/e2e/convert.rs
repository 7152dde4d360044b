//! `ferry convert` (the real binary) turning real images into zstd:chunked, checked with other
//! people's tools: Debian's docker-registry stores them, stock `zstd -d` and GNU tar read the
//! layers, skopeo copies the converted OCI layout, and a sandboxed containerd 1.6 (stock
//! overlayfs snapshotter) pulls and runs them. The unpacked rootfs of every converted image is
//! compared entry by entry (path, type, mode, owner, link count, link target, sha256, xattrs)
//! with the original's, and every converted layer's `tar -tvf` listing and content with its
//! source layer's. The zstd:chunked annotations are checked against the blob's bytes: the
//! manifest position points just past a skippable-frame header whose payload hashes to the
//! manifest checksum, and the TOC inside describes every regular file with its digest.
//!
//! Images: busybox (umoci), a debootstrap'ed Debian bookworm (cached under
//! `target/ferry-fixtures/`; skipped loudly without network), and a three-layer image of edge
//! cases (gzip GNU tar, zstd PAX tar, plain tar; see `harness::rootfs`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::harness::containerd::Containerd;
use crate::harness::ferry::FERRY_BIN;
use crate::harness::image::{build_busybox, push, push_tag, read_layout_tag};
use crate::harness::oci::{blob_url, get_ok, manifest_url, MANIFEST_ACCEPT};
use crate::harness::registry::Registry;
use crate::harness::rootfs::{
    assert_same_lines, build_tricky, clean_name, debian_image, decompress_layer, extract_tar, read_json, sh, tar_listing, tar_names,
    tree_lines, tree_listing, TreeEntry, OCI_MANIFEST, ZSTD_LAYER,
};
use crate::harness::{digest_of, run_cmd, sha256_file, temp_dir, CmdOutput};

const CHECKSUM_ANNOTATION: &str = "io.github.containers.zstd-chunked.manifest-checksum";
const POSITION_ANNOTATION: &str = "io.github.containers.zstd-chunked.manifest-position";
/// A zstd skippable frame's magic number, 0x184D2A50, little endian.
const SKIPPABLE_MAGIC: [u8; 4] = [0x50, 0x2a, 0x4d, 0x18];

// ----------------------------------------------------------------------------- helpers ----

/// Runs `ferry convert ARGS...` (5 min at most).
fn ferry_convert(args: &[&str]) -> CmdOutput {
    let mut cmd = Command::new(FERRY_BIN);
    cmd.arg("convert").args(args).env("RUST_LOG", std::env::var("FERRY_E2E_LOG").unwrap_or_else(|_| "info".to_string()));
    for var in ["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"] {
        cmd.env_remove(var);
    }
    run_cmd(cmd.env("NO_PROXY", "*"), Duration::from_secs(300))
}

/// `ferry convert SRC DST EXTRA... --output json`, which must succeed; its JSON report.
fn convert_json(src: &str, dst: &str, extra: &[&str]) -> Value {
    let mut args = vec![src, dst];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--output", "json"]);
    let out = ferry_convert(&args);
    assert!(out.success, "ferry convert {args:?} failed\nstdout: {}\nstderr: {}", out.stdout, out.stderr);
    serde_json::from_str(out.stdout.trim())
        .or_else(|_| serde_json::from_str(out.stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default()))
        .unwrap_or_else(|e| panic!("ferry convert --output json printed no JSON ({e})\nstdout: {}\nstderr: {}", out.stdout, out.stderr))
}

/// An image's manifest, config and layer blobs, on local disk.
#[derive(Debug)]
struct Local {
    manifest_bytes: Vec<u8>,
    manifest: Value,
    config: Value,
    /// (descriptor from the manifest, blob file)
    layers: Vec<(Value, PathBuf)>,
}

impl Local {
    fn from_layout(layout: &Path, tag: &str) -> Local {
        let image = read_layout_tag(layout, Some(tag));
        let blob = |digest: &str| layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"));
        let manifest_bytes = std::fs::read(blob(&image.manifest_digest)).expect("read manifest blob");
        let manifest: Value = serde_json::from_slice(&manifest_bytes).expect("parse manifest");
        let config = read_json(&blob(manifest["config"]["digest"].as_str().expect("config digest")));
        let layers = manifest["layers"]
            .as_array()
            .expect("layers")
            .iter()
            .map(|d| (d.clone(), blob(d["digest"].as_str().expect("layer digest"))))
            .collect();
        Local { manifest_bytes, manifest, config, layers }
    }

    async fn from_registry(registry: &Registry, repo: &str, reference: &str, dir: &Path) -> Local {
        std::fs::create_dir_all(dir).expect("create download dir");
        let base = registry.url();
        let reply = get_ok(&manifest_url(&base, repo, reference), &[("accept", MANIFEST_ACCEPT)]).await;
        assert_eq!(reply.status, 200, "GET manifest {repo}:{reference}: {}", String::from_utf8_lossy(&reply.body));
        let manifest: Value = serde_json::from_slice(&reply.body).expect("parse pushed manifest");
        let fetch = |digest: String| {
            let url = blob_url(&base, repo, &digest);
            async move {
                let reply = get_ok(&url, &[]).await;
                assert_eq!(reply.status, 200, "GET {url}");
                assert_eq!(digest_of(&reply.body), digest, "bytes of {url} do not match their digest");
                reply.body
            }
        };
        let config: Value = serde_json::from_slice(&fetch(manifest["config"]["digest"].as_str().expect("config digest").to_string()).await)
            .expect("config json");
        let mut layers = Vec::new();
        for (i, d) in manifest["layers"].as_array().expect("layers").iter().enumerate() {
            let path = dir.join(format!("layer{i}.blob"));
            std::fs::write(&path, fetch(d["digest"].as_str().expect("layer digest").to_string()).await).expect("write layer blob");
            layers.push((d.clone(), path));
        }
        Local { manifest_bytes: reply.body, manifest, config, layers }
    }
}

/// What the checks of one converted layer produced, for further checks.
#[derive(Debug)]
struct ConvertedLayer {
    /// The layer decompressed with stock `zstd -d`.
    tar: PathBuf,
    /// The zstd:chunked TOC (manifest) found through the annotations.
    toc: Value,
}

/// Finds the TOC of a zstd:chunked blob through its annotations and checks the framing.
fn check_toc_frame(blob: &Path, annotations: &Value, what: &str) -> Value {
    let checksum = annotations[CHECKSUM_ANNOTATION].as_str().unwrap_or_else(|| panic!("{what}: no {CHECKSUM_ANNOTATION} annotation"));
    let position = annotations[POSITION_ANNOTATION].as_str().unwrap_or_else(|| panic!("{what}: no {POSITION_ANNOTATION} annotation"));
    let fields: Vec<u64> = position
        .split(':')
        .map(|f| f.parse().unwrap_or_else(|_| panic!("{what}: {POSITION_ANNOTATION} {position:?} is not OFFSET:LENGTH:UNCOMPRESSED:TYPE")))
        .collect();
    assert_eq!(fields.len(), 4, "{what}: {POSITION_ANNOTATION} {position:?} is not OFFSET:LENGTH:UNCOMPRESSED:TYPE");
    let (offset, length, uncompressed) = (fields[0] as usize, fields[1] as usize, fields[2] as usize);
    let data = std::fs::read(blob).expect("read converted blob");
    assert!(offset >= 8 && offset + length <= data.len(), "{what}: manifest position {position} outside the {}-byte blob", data.len());
    assert_eq!(
        data[offset - 8..offset - 4],
        SKIPPABLE_MAGIC,
        "{what}: no zstd skippable frame magic 50 2a 4d 18 at offset {} (manifest position {position})",
        offset - 8
    );
    let frame_len = u32::from_le_bytes(data[offset - 4..offset].try_into().expect("4 bytes")) as usize;
    assert_eq!(frame_len, length, "{what}: the skippable frame holds {frame_len} bytes, the manifest position says {length}");
    let payload = &data[offset..offset + length];
    assert_eq!(digest_of(payload), checksum, "{what}: sha256 of the skippable frame's payload is not the manifest checksum");
    let scratch = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(scratch.path(), payload).expect("write TOC frame");
    let toc_text = sh(r#"zstd -d -q -c < "$1""#, &[&scratch.path().to_string_lossy()]);
    assert_eq!(
        toc_text.len(),
        uncompressed,
        "{what}: the TOC decompresses to {} bytes, the manifest position says {uncompressed}",
        toc_text.len()
    );
    serde_json::from_str(&toc_text)
        .unwrap_or_else(|e| panic!("{what}: the TOC is not JSON: {e}\n{}", &toc_text[..toc_text.len().min(2000)]))
}

/// Names of regular files (not hardlinks) in a `tar -tvf` listing.
fn regular_files(listing: &[String]) -> Vec<String> {
    listing.iter().filter(|l| l.starts_with('-')).map(|l| l.splitn(6, ' ').nth(5).unwrap_or_default().to_string()).collect()
}

/// The TOC is what a lazy snapshotter mounts: every entry of the layer must be in it with the
/// type, mode, owner, link target and xattrs the tar gives it.
fn check_toc_metadata(what: &str, entries: &[Value], on_disk: &[TreeEntry], listing: &[String]) {
    use base64::Engine as _;
    let hardlinks: Vec<String> = listing
        .iter()
        .filter_map(|l| l.split_once(" link to "))
        .map(|(head, _)| head.splitn(6, ' ').nth(5).unwrap_or_default().to_string())
        .collect();
    let mut problems = Vec::new();
    // A tar written without a `./` entry says nothing about the root directory.
    let root_in_tar = listing.iter().any(|l| l.splitn(6, ' ').nth(5) == Some("."));
    for disk in on_disk.iter().filter(|e| !e.path.is_empty() || root_in_tar) {
        let Some(toc) = entries.iter().find(|e| e["type"] != "chunk" && clean_name(e["name"].as_str().unwrap_or_default()) == disk.path)
        else {
            problems.push(format!("{}: not in the TOC", disk.path));
            continue;
        };
        let kind = toc["type"].as_str().unwrap_or_default();
        let expected = match disk.kind {
            _ if hardlinks.contains(&disk.path) => "hardlink",
            'f' => "reg",
            'd' => "dir",
            'l' => "symlink",
            'p' => "fifo",
            'c' => "char",
            'b' => "block",
            other => panic!("{what}: unexpected file type {other} for {}", disk.path),
        };
        if kind != expected {
            problems.push(format!("{}: TOC type {kind:?}, tar has {expected:?}", disk.path));
            continue;
        }
        if kind == "hardlink" {
            continue;
        }
        let mode = u32::from_str_radix(&disk.mode, 8).expect("octal mode");
        let toc_mode = toc["mode"].as_u64().unwrap_or(0) as u32 & 0o7777;
        if toc_mode != mode {
            problems.push(format!("{}: TOC mode {toc_mode:o}, tar has {mode:o}", disk.path));
        }
        let (uid, gid) = (toc["uid"].as_u64().unwrap_or(0), toc["gid"].as_u64().unwrap_or(0));
        if (uid, gid) != (disk.uid, disk.gid) {
            problems.push(format!("{}: TOC owner {uid}:{gid}, tar has {}:{}", disk.path, disk.uid, disk.gid));
        }
        if kind == "symlink" && toc["linkName"].as_str().unwrap_or_default() != disk.link_target {
            problems.push(format!("{}: TOC linkName {}, tar has {:?}", disk.path, toc["linkName"], disk.link_target));
        }
        let mut toc_xattrs: Vec<String> = toc["xattrs"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| {
                        let bytes = base64::engine::general_purpose::STANDARD
                            .decode(v.as_str().unwrap_or_default())
                            .unwrap_or_else(|e| panic!("{what}: xattr {k} of {} is not base64: {e}", disk.path));
                        format!("{k}={}", if bytes.is_empty() { String::new() } else { format!("0x{}", hex::encode(bytes)) })
                    })
                    .collect()
            })
            .unwrap_or_default();
        toc_xattrs.sort();
        if toc_xattrs != disk.xattrs {
            problems.push(format!("{}: TOC xattrs {toc_xattrs:?}, tar has {:?}", disk.path, disk.xattrs));
        }
    }
    for e in entries.iter().filter(|e| e["type"] != "chunk") {
        let name = clean_name(e["name"].as_str().unwrap_or_default());
        if !name.is_empty() && !on_disk.iter().any(|d| d.path == name) {
            problems.push(format!("{name}: in the TOC but not in the tar"));
        }
    }
    assert!(
        problems.is_empty(),
        "{what}: the TOC disagrees with the tar ({} problems):\n{}",
        problems.len(),
        problems.iter().take(40).cloned().collect::<Vec<_>>().join("\n")
    );
}

/// Every check of `dst` as the conversion of `src` that `report` describes; `work` is scratch.
fn verify_conversion(src: &Local, dst: &Local, report: &Value, work: &Path) -> Vec<ConvertedLayer> {
    std::fs::create_dir_all(work).expect("create verify dir");
    assert_eq!(
        report["manifest_digest"].as_str(),
        Some(digest_of(&dst.manifest_bytes).as_str()),
        "manifest_digest in the JSON report is not the pushed manifest's digest; report: {report}"
    );
    if let Some(media_type) = dst.manifest["mediaType"].as_str() {
        assert_eq!(media_type, OCI_MANIFEST, "converted manifest media type");
    }
    assert_eq!(dst.layers.len(), src.layers.len(), "layer count changed: {}", dst.manifest);
    assert_eq!(dst.config["config"], src.config["config"], "the image config's `config` (cmd, env...) changed");
    assert_eq!(dst.config["architecture"], src.config["architecture"], "architecture changed");
    let diff_ids = dst.config["rootfs"]["diff_ids"].as_array().expect("converted config has rootfs.diff_ids");
    assert_eq!(diff_ids.len(), dst.layers.len(), "rootfs.diff_ids count vs layers: {}", dst.config);
    let report_layers = report["layers"].as_array().unwrap_or_else(|| panic!("no `layers` array in the report: {report}"));
    assert_eq!(report_layers.len(), dst.layers.len(), "report layers vs manifest layers: {report}");
    assert!(report["seconds"].as_f64().is_some(), "no `seconds` in the report: {report}");

    let mut converted = Vec::new();
    let mut source_tar_bytes = 0;
    for (i, ((src_desc, src_blob), (dst_desc, dst_blob))) in src.layers.iter().zip(&dst.layers).enumerate() {
        let what = format!("layer {i} ({} -> {})", src_desc["digest"], dst_desc["digest"]);
        let r = &report_layers[i];
        assert_eq!(dst_desc["mediaType"].as_str(), Some(ZSTD_LAYER), "{what}: media type");
        assert_eq!(r["source_digest"], src_desc["digest"], "{what}: source_digest in the report");
        assert_eq!(r["digest"], dst_desc["digest"], "{what}: digest in the report");
        assert_eq!(r["size"], dst_desc["size"], "{what}: size in the report");
        assert_eq!(
            format!("sha256:{}", sha256_file(dst_blob).expect("hash converted blob")),
            dst_desc["digest"].as_str().expect("digest"),
            "{what}: blob content"
        );
        assert_eq!(std::fs::metadata(dst_blob).expect("stat").len(), dst_desc["size"].as_u64().expect("size"), "{what}: blob size");
        let toc = check_toc_frame(dst_blob, &dst_desc["annotations"], &what);
        assert_eq!(r["toc_digest"], dst_desc["annotations"][CHECKSUM_ANNOTATION], "{what}: toc_digest in the report");
        for key in ["files", "chunks", "prefetch_chunks"] {
            assert!(r[key].as_u64().is_some(), "{what}: no integer `{key}` in the report: {r}");
        }

        let src_tar = work.join(format!("src{i}.tar"));
        let dst_tar = work.join(format!("dst{i}.tar"));
        decompress_layer(src_blob, src_desc["mediaType"].as_str().expect("media type"), &src_tar);
        // The stock decompressor, on the whole blob: skippable frames are skipped.
        sh(r#"zstd -d -q -c < "$1" > "$2""#, &[&dst_blob.to_string_lossy(), &dst_tar.to_string_lossy()]);
        source_tar_bytes += std::fs::metadata(&src_tar).expect("stat").len();
        let diff_id = format!("sha256:{}", sha256_file(&dst_tar).expect("hash tar"));
        assert_eq!(diff_ids[i].as_str(), Some(diff_id.as_str()), "{what}: rootfs.diff_ids[{i}] is not the sha256 of `zstd -d` output");
        assert_eq!(r["diff_id"].as_str(), Some(diff_id.as_str()), "{what}: diff_id in the report");

        let src_listing = tar_listing(&src_tar);
        let dst_listing = tar_listing(&dst_tar);
        assert_same_lines(&format!("{what}: tar -tvf"), "source layer", &src_listing, "converted layer", &dst_listing);

        let src_dir = work.join(format!("src{i}"));
        let dst_dir = work.join(format!("dst{i}"));
        extract_tar(&src_tar, &src_dir);
        extract_tar(&dst_tar, &dst_dir);
        assert_same_lines(
            &format!("{what}: extracted files"),
            "source layer",
            &tree_lines(&src_dir),
            "converted layer",
            &tree_lines(&dst_dir),
        );

        // The TOC describes every regular file with its content digest.
        let entries = toc["entries"].as_array().unwrap_or_else(|| panic!("{what}: TOC has no entries: {toc}"));
        let on_disk = tree_listing(&dst_dir);
        for file in regular_files(&dst_listing) {
            let toc_entry = entries
                .iter()
                .find(|e| e["type"] == "reg" && clean_name(e["name"].as_str().unwrap_or_default()) == file)
                .unwrap_or_else(|| panic!("{what}: regular file {file:?} has no `reg` entry in the TOC"));
            let disk = on_disk.iter().find(|e| e.path == file).unwrap_or_else(|| panic!("{what}: {file} not extracted"));
            if let Some(sha) = &disk.sha256 {
                let size = std::fs::metadata(dst_dir.join(&file)).expect("stat").len();
                assert_eq!(toc_entry["size"].as_u64().unwrap_or(0), size, "{what}: TOC size of {file}");
                if size > 0 {
                    assert_eq!(toc_entry["digest"].as_str(), Some(format!("sha256:{sha}").as_str()), "{what}: TOC digest of {file}");
                }
            }
        }
        check_toc_metadata(&what, entries, &on_disk, &dst_listing);
        let count = |f: &dyn Fn(&Value) -> bool| entries.iter().filter(|e| f(e)).count() as u64;
        let files = count(&|e| e["type"] == "reg");
        let chunks = count(&|e| e["type"] == "chunk" || (e["type"] == "reg" && e["size"].as_u64().unwrap_or(0) > 0));
        let prefetch = count(&|e| e["ferryPrefetch"] == true);
        assert_eq!(r["files"].as_u64(), Some(files), "{what}: `files` in the report vs `reg` entries in the TOC");
        assert_eq!(files, regular_files(&dst_listing).len() as u64, "{what}: `reg` entries in the TOC vs regular files in the tar");
        assert_eq!(r["chunks"].as_u64(), Some(chunks), "{what}: `chunks` in the report vs chunks in the TOC");
        assert_eq!(r["prefetch_chunks"].as_u64(), Some(prefetch), "{what}: `prefetch_chunks` in the report vs ferryPrefetch in the TOC");
        let _ = std::fs::remove_dir_all(&src_dir);
        let _ = std::fs::remove_dir_all(&dst_dir);
        let _ = std::fs::remove_file(&src_tar);
        converted.push(ConvertedLayer { tar: dst_tar, toc });
    }
    let uncompressed = report["uncompressed_bytes"].as_u64().unwrap_or_else(|| panic!("no uncompressed_bytes in the report: {report}"));
    assert!(
        uncompressed * 2 >= source_tar_bytes && uncompressed <= source_tar_bytes * 2,
        "uncompressed_bytes {uncompressed} is far from the source tars' {source_tar_bytes} bytes"
    );
    converted
}

/// Mounts both images' rootfs (as containerd unpacked them) and compares their listings.
fn assert_same_rootfs(containerd: &Containerd, original: &str, converted: &str) {
    let a = containerd.mount_image(original, "original");
    let b = containerd.mount_image(converted, "converted");
    let (left, right) = (tree_lines(&a), tree_lines(&b));
    containerd.unmount_image(&a);
    containerd.unmount_image(&b);
    assert!(left.len() > 1, "the original's rootfs is empty");
    assert_same_lines("rootfs unpacked by containerd", original, &left, converted, &right);
}

/// Manifest PUTs the registry answered so far.
async fn manifest_puts(registry: &Registry) -> Vec<String> {
    registry.settle_log().await;
    registry.access_lines().into_iter().filter(|l| l.method == "PUT" && l.path.contains("/manifests/")).map(|l| l.path).collect()
}

// ------------------------------------------------------------------------------- tests ----

#[tokio::test(flavor = "multi_thread")]
async fn busybox_registry_to_registry_runs_in_containerd() {
    let registry = Registry::plain().await;
    let work = temp_dir("convert-busybox");
    let image = build_busybox(work.path(), "converted busybox");
    push(&image, &registry, "test/busybox:src");
    let src_ref = format!("{}/test/busybox:src", registry.host_port());
    let dst_ref = format!("{}/test/busybox:chunked", registry.host_port());

    let report = convert_json(&src_ref, &dst_ref, &[]);
    let src = Local::from_layout(&image.layout, "latest");
    let dst = Local::from_registry(&registry, "test/busybox", "chunked", &work.path().join("dst")).await;
    let layers = verify_conversion(&src, &dst, &report, &work.path().join("verify"));
    assert_eq!(report["layers"][0]["files"].as_u64(), Some(2), "busybox layer has 2 regular files: {report}");
    assert!(!layers[0].toc["entries"].as_array().expect("entries").is_empty());

    let containerd = Containerd::start().await;
    containerd.pull_plain_http(&src_ref).unwrap_or_else(|e| panic!("{e}"));
    containerd.pull_plain_http(&dst_ref).unwrap_or_else(|e| panic!("{e}"));
    let echoed = containerd.run(&dst_ref, "convert-busybox", &["/bin/sh", "-c", "echo converted-ok"]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(echoed.trim(), "converted-ok");
    let marker =
        containerd.run(&dst_ref, "convert-busybox-2", &["/bin/busybox", "cat", "/etc/ferry-e2e"]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(marker.trim(), "converted busybox");
    assert_same_rootfs(&containerd, &src_ref, &dst_ref);
}

#[tokio::test(flavor = "multi_thread")]
async fn debian_rootfs_registry_to_registry_runs_in_containerd() {
    let Some(image) = debian_image() else { return };
    let registry = Registry::plain().await;
    let work = temp_dir("convert-debian");
    push(&image, &registry, "test/debian:src");
    let src_ref = format!("{}/test/debian:src", registry.host_port());
    let dst_ref = format!("{}/test/debian:chunked", registry.host_port());

    let report = convert_json(&src_ref, &dst_ref, &[]);
    let src = Local::from_layout(&image.layout, "latest");
    let dst = Local::from_registry(&registry, "test/debian", "chunked", &work.path().join("dst")).await;
    verify_conversion(&src, &dst, &report, &work.path().join("verify"));
    assert!(report["layers"][0]["files"].as_u64().unwrap_or(0) > 1000, "a Debian rootfs has thousands of files: {report}");

    let containerd = Containerd::start().await;
    containerd.pull_plain_http(&src_ref).unwrap_or_else(|e| panic!("{e}"));
    containerd.pull_plain_http(&dst_ref).unwrap_or_else(|e| panic!("{e}"));
    let cmd = ["/bin/sh", "-c", "cat /etc/debian_version; ls /usr/bin | wc -l"];
    let original = containerd.run(&src_ref, "debian-original", &cmd).unwrap_or_else(|e| panic!("{e}"));
    let converted = containerd.run(&dst_ref, "debian-converted", &cmd).unwrap_or_else(|e| panic!("{e}"));
    assert!(original.starts_with("12."), "unexpected /etc/debian_version: {original}");
    assert_eq!(converted, original, "the converted Debian image answers differently");
    assert_same_rootfs(&containerd, &src_ref, &dst_ref);
}

#[tokio::test(flavor = "multi_thread")]
async fn tricky_layout_to_layout_keeps_every_entry_and_containerd_applies_whiteouts() {
    let work = temp_dir("convert-tricky");
    let image = build_tricky(&work.path().join("src"));
    let dst_layout = work.path().join("converted-layout");
    let src_arg = format!("oci:{}:latest", image.layout.display());
    let report = convert_json(&src_arg, &format!("oci:{}:conv", dst_layout.display()), &[]);
    let src = Local::from_layout(&image.layout, "latest");
    let dst = Local::from_layout(&dst_layout, "conv");
    verify_conversion(&src, &dst, &report, &work.path().join("verify"));

    // A second conversion into the existing layout adds a tag and keeps the first.
    convert_json(&src_arg, &format!("oci:{}:conv2", dst_layout.display()), &[]);
    read_layout_tag(&dst_layout, Some("conv"));
    let again = read_layout_tag(&dst_layout, Some("conv2"));

    // skopeo reads the converted layout; containerd unpacks it with whiteouts and opaque dirs.
    let registry = Registry::plain().await;
    push(&image, &registry, "test/tricky:src");
    push_tag(&again, "conv2", &registry, "test/tricky:chunked");
    let src_ref = format!("{}/test/tricky:src", registry.host_port());
    let dst_ref = format!("{}/test/tricky:chunked", registry.host_port());
    let containerd = Containerd::start().await;
    containerd.pull_plain_http(&src_ref).unwrap_or_else(|e| panic!("{e}"));
    containerd.pull_plain_http(&dst_ref).unwrap_or_else(|e| panic!("{e}"));
    let script = "cat /etc/ferry-e2e; ls -A /opaque; test -e /data/foo && echo foo-present || echo foo-gone; /data/suid";
    let out = containerd.run(&dst_ref, "tricky-converted", &["/bin/sh", "-c", script]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.lines().collect::<Vec<_>>(), ["tricky layer 3", "new-file", "foo-gone", "suid"], "merged rootfs of the converted image");
    assert_same_rootfs(&containerd, &src_ref, &dst_ref);
}

#[tokio::test(flavor = "multi_thread")]
async fn prioritize_puts_listed_files_first_and_marks_prefetch_chunks() {
    let work = temp_dir("convert-prio");
    let image = build_tricky(&work.path().join("src"));
    let list = work.path().join("prioritize.txt");
    // A byte range in the middle of the 5 MiB file, then a whole file present in layers 1 and 3.
    std::fs::write(&list, "# first-access order\n/data/big-5MiB 1048576 65536\n\n/etc/ferry-e2e\n").expect("write prioritize list");
    let dst_layout = work.path().join("converted-layout");
    let report = convert_json(
        &format!("oci:{}:latest", image.layout.display()),
        &format!("oci:{}:prio", dst_layout.display()),
        &["--prioritize", &list.to_string_lossy()],
    );
    let src = Local::from_layout(&image.layout, "latest");
    let dst = Local::from_layout(&dst_layout, "prio");
    let layers = verify_conversion(&src, &dst, &report, &work.path().join("verify"));

    let prefetch = |i: usize| report["layers"][i]["prefetch_chunks"].as_u64().unwrap_or(0);
    assert!(prefetch(0) >= 2, "layer 0 holds both listed files: prefetch_chunks should be >= 2: {report}");
    assert!(prefetch(2) >= 1, "layer 2 overrides /etc/ferry-e2e: prefetch_chunks should be >= 1: {report}");
    assert_eq!(prefetch(1), 0, "layer 1 holds no listed file: {report}");

    let first_files = |i: usize, n: usize| -> Vec<String> {
        let listing = tar_listing(&layers[i].tar);
        let dirs: Vec<String> =
            listing.iter().filter(|l| l.starts_with('d')).map(|l| l.splitn(6, ' ').nth(5).unwrap_or_default().to_string()).collect();
        tar_names(&layers[i].tar).into_iter().filter(|name| !dirs.contains(name)).take(n).collect()
    };
    assert_eq!(first_files(0, 2), ["data/big-5MiB", "etc/ferry-e2e"], "listed files must come first, in list order, in layer 0");
    assert_eq!(first_files(2, 1), ["etc/ferry-e2e"], "the listed file must come first in layer 2");

    // The TOC flags the chunks that overlap the listed range, and no chunk of unlisted files.
    let entries = layers[0].toc["entries"].as_array().expect("TOC entries");
    let flagged = |e: &Value| e["ferryPrefetch"] == true;
    let big: Vec<&Value> = entries.iter().filter(|e| clean_name(e["name"].as_str().unwrap_or_default()) == "data/big-5MiB").collect();
    let (from, to) = (1_048_576u64, 1_048_576u64 + 65_536);
    let covering = big.iter().filter(|e| flagged(e)).any(|e| {
        let start = e["chunkOffset"].as_u64().unwrap_or(0);
        let size = e["chunkSize"].as_u64().or_else(|| e["size"].as_u64()).unwrap_or(0);
        start < to && start + size > from
    });
    assert!(covering, "no ferryPrefetch chunk of data/big-5MiB covers bytes {from}..{to}: {big:?}");
    let late: Vec<&&Value> = big.iter().filter(|e| flagged(e)).filter(|e| e["chunkOffset"].as_u64().unwrap_or(0) >= 3 << 20).collect();
    assert!(late.is_empty(), "chunks of data/big-5MiB far after the listed range are flagged: {late:?}");
    let stray: Vec<&Value> = entries
        .iter()
        .filter(|e| flagged(e))
        .filter(|e| !["data/big-5MiB", "etc/ferry-e2e"].contains(&clean_name(e["name"].as_str().unwrap_or_default()).as_str()))
        .collect();
    assert!(stray.is_empty(), "entries of unlisted files carry ferryPrefetch: {stray:?}");
    assert!(
        entries.iter().filter(|e| flagged(e)).any(|e| clean_name(e["name"].as_str().unwrap_or_default()) == "etc/ferry-e2e"),
        "etc/ferry-e2e not flagged"
    );
}

/// Flips a byte of the gzip header's MTIME: the layer still decompresses to the same tar, but
/// its sha256 no longer matches the digest the manifest names.
fn flip_gzip_mtime(blob: &Path) {
    let mut data = std::fs::read(blob).expect("read blob");
    assert_eq!(data[..2], [0x1f, 0x8b], "{} is not gzip", blob.display());
    data[4] ^= 0x5a;
    std::fs::write(blob, data).expect("write corrupted blob");
}

#[tokio::test(flavor = "multi_thread")]
async fn corrupted_source_layer_fails_naming_the_digest_and_pushes_nothing() {
    let registry = Registry::plain().await;
    let work = temp_dir("convert-corrupt");
    let image = build_busybox(work.path(), "corrupt");
    let layer = image.layers[0].digest.clone();
    let hex = layer.trim_start_matches("sha256:").to_string();

    // From the registry: the stored blob no longer matches its digest.
    push(&image, &registry, "test/corrupt:src");
    flip_gzip_mtime(&registry.blob_data_path(&layer));
    let out =
        ferry_convert(&[&format!("{}/test/corrupt:src", registry.host_port()), &format!("{}/test/corrupt:chunked", registry.host_port())]);
    assert!(!out.success, "converting a corrupted layer succeeded\nstdout: {}\nstderr: {}", out.stdout, out.stderr);
    assert!(out.stderr.contains(&hex), "the error does not name the corrupted layer {layer}:\n{}", out.stderr);
    let puts = manifest_puts(&registry).await;
    assert!(puts.iter().all(|p| !p.contains("chunked")), "a manifest was pushed for a failed conversion: {puts:?}");
    let tagged = get_ok(&manifest_url(&registry.url(), "test/corrupt", "chunked"), &[("accept", MANIFEST_ACCEPT)]).await;
    assert_eq!(tagged.status, 404, "test/corrupt:chunked exists after a failed conversion");

    // From an OCI layout, into a layout: nothing is tagged.
    flip_gzip_mtime(&image.layout.join("blobs/sha256").join(&hex));
    let dst = work.path().join("dst-layout");
    let out = ferry_convert(&[&format!("oci:{}:latest", image.layout.display()), &format!("oci:{}:chunked", dst.display())]);
    assert!(!out.success, "converting a corrupted layout layer succeeded\nstdout: {}\nstderr: {}", out.stdout, out.stderr);
    assert!(out.stderr.contains(&hex), "the error does not name the corrupted layer {layer}:\n{}", out.stderr);
    let index = std::fs::read_to_string(dst.join("index.json")).unwrap_or_default();
    assert!(!index.contains("chunked"), "the destination layout tags a failed conversion: {index}");
}

#[tokio::test(flavor = "multi_thread")]
async fn broken_deflate_stream_fails_without_output() {
    let work = temp_dir("convert-broken-gzip");
    let image = build_busybox(work.path(), "broken");
    let blob = image.layout.join("blobs/sha256").join(image.layers[0].digest.trim_start_matches("sha256:"));
    let mut data = std::fs::read(&blob).expect("read blob");
    let middle = data.len() / 2;
    for b in &mut data[middle..middle + 64] {
        *b ^= 0xff;
    }
    std::fs::write(&blob, data).expect("write corrupted blob");
    let dst = work.path().join("dst-layout");
    let out = ferry_convert(&[&format!("oci:{}:latest", image.layout.display()), &format!("oci:{}:chunked", dst.display())]);
    assert!(!out.success, "converting a layer with a broken deflate stream succeeded\nstdout: {}\nstderr: {}", out.stdout, out.stderr);
    assert!(!out.stderr.trim().is_empty(), "no error message");
    let index = std::fs::read_to_string(dst.join("index.json")).unwrap_or_default();
    assert!(!index.contains("chunked"), "the destination layout tags a failed conversion: {index}");
}

#[test]
fn garbage_prioritize_lines_are_rejected_naming_the_line() {
    let work = temp_dir("convert-bad-prio");
    let image = build_busybox(work.path(), "bad prio");
    let src = format!("oci:{}:latest", image.layout.display());
    let cases = [
        ("# comment\n/bin/busybox\n/etc/ferry-e2e 0 notanumber\n", 3, "/etc/ferry-e2e 0 notanumber"),
        ("/bin/busybox 1 2 3\n", 1, "/bin/busybox 1 2 3"),
        ("/bin/busybox\n\n/etc/ferry-e2e 10\n", 3, "/etc/ferry-e2e 10"),
    ];
    for (n, (text, line, garbage)) in cases.iter().enumerate() {
        let list = work.path().join(format!("prio{n}.txt"));
        std::fs::write(&list, text).expect("write prioritize list");
        let dst = work.path().join(format!("dst{n}"));
        let out = ferry_convert(&[&src, &format!("oci:{}:x", dst.display()), "--prioritize", &list.to_string_lossy()]);
        assert!(!out.success, "a prioritize file with {garbage:?} was accepted\nstdout: {}\nstderr: {}", out.stdout, out.stderr);
        let err = out.stderr.to_lowercase();
        let names_line = err.contains(&format!("line {line}")) || err.contains(&format!(":{line}:")) || out.stderr.contains(garbage);
        assert!(names_line, "the error for {garbage:?} names neither line {line} nor its text:\n{}", out.stderr);
        let index = std::fs::read_to_string(dst.join("index.json")).unwrap_or_default();
        assert!(index.is_empty() || !index.contains("\"x\""), "a rejected conversion wrote the destination: {index}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_sources_fail_clearly() {
    let registry = Registry::plain().await;
    let work = temp_dir("convert-missing");
    let image = build_busybox(work.path(), "missing");
    let dst = format!("oci:{}:x", work.path().join("dst").display());
    let missing_dir = work.path().join("no-such-layout");
    let cases: Vec<(String, String)> = vec![
        (format!("oci:{}:latest", missing_dir.display()), missing_dir.display().to_string()),
        (format!("oci:{}:nosuchtag", image.layout.display()), "nosuchtag".to_string()),
        (format!("{}/test/nosuchrepo:latest", registry.host_port()), "test/nosuchrepo".to_string()),
    ];
    for (src, needle) in cases {
        let out = ferry_convert(&[&src, &dst]);
        assert!(!out.success, "converting missing {src} succeeded\nstdout: {}\nstderr: {}", out.stdout, out.stderr);
        assert!(out.stderr.contains(&needle), "the error for missing {src} does not name {needle:?}:\n{}", out.stderr);
    }
}

/// The source pulled through a ferry node (its mirror as the registry), the result pushed
/// straight to the registry: the node fetched the source once and served it from its store.
#[tokio::test(flavor = "multi_thread")]
async fn converting_through_a_ferry_node_pulls_via_its_cache() {
    use crate::harness::ferry::{FerryNode, FerryOptions};
    let registry = Registry::plain().await;
    let work = temp_dir("convert-via-node");
    let image = build_busybox(work.path(), "via a ferry node");
    push(&image, &registry, "test/busybox:src");
    let node = FerryNode::start(FerryOptions::upstream("registry.local", &registry.url())).await;
    let mirror = node.url().trim_start_matches("http://").to_string();
    let report = convert_json(&format!("{mirror}/test/busybox:src"), &format!("{}/test/busybox:via-node", registry.host_port()), &[]);
    let src = Local::from_layout(&image.layout, "latest");
    let dst = Local::from_registry(&registry, "test/busybox", "via-node", &work.path().join("dst")).await;
    verify_conversion(&src, &dst, &report, &work.path().join("verify"));
    let blob_bytes: f64 = image.blobs().iter().map(|b| b.size as f64).sum();
    let origin = node.metric("ferry_origin_bytes_total", &[]).await;
    assert!(origin >= blob_bytes, "the node fetched the source from its upstream ({origin} of {blob_bytes} bytes)");
    // A second conversion from the node takes nothing more from the upstream.
    convert_json(&format!("{mirror}/test/busybox:src"), &format!("{}/test/busybox:via-node-2", registry.host_port()), &[]);
    let again = node.metric("ferry_origin_bytes_total", &[]).await;
    assert_eq!(again, origin, "the second conversion was served from the node's cache");
}
