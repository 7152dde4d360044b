use std::io::Write as _;
use std::process::Command;

use p2p_node::Digest;

use super::oci::{Descriptor, Layout, MT_OCI_CONFIG, MT_OCI_MANIFEST};
use super::*;
use crate::toc::Kind;
use crate::zstd_chunked;

/// An OCI layout holding one image with one gzip layer made by GNU tar from a small tree.
fn source_image(dir: &std::path::Path) -> (Layout, Vec<u8>) {
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("usr/lib")).expect("mkdir");
    std::fs::create_dir_all(root.join("etc")).expect("mkdir");
    std::fs::write(root.join("etc/hostname"), b"ferry\n").expect("write");
    std::fs::write(root.join("usr/lib/libbig.so"), (0..3_000_000u32).map(|i| (i % 253) as u8).collect::<Vec<_>>()).expect("write");
    std::fs::hard_link(root.join("etc/hostname"), root.join("usr/lib/hostname-link")).expect("hardlink");
    let tar =
        Command::new("tar").args(["--sort=name", "--format=posix", "-cf", "-", "-C"]).arg(&root).arg(".").output().expect("tar").stdout;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).expect("gzip");
    let layer = gz.finish().expect("gzip");
    let layout = Layout::create(&dir.join("src")).expect("layout");
    let layer_digest = layout.put_bytes(&layer).expect("put");
    let config = serde_json::json!({"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[Digest::of(&tar)]},"config":{"Cmd":["/bin/sh"]}});
    let config = serde_json::to_vec(&config).expect("json");
    let config_digest = layout.put_bytes(&config).expect("put");
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": MT_OCI_MANIFEST,
        "config": {"mediaType": MT_OCI_CONFIG, "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer_digest, "size": layer.len()}],
    });
    let manifest = serde_json::to_vec(&manifest).expect("json");
    let md = layout.put_bytes(&manifest).expect("put");
    let desc = Descriptor {
        media_type: MT_OCI_MANIFEST.into(),
        digest: md,
        size: manifest.len() as u64,
        annotations: Default::default(),
        platform: None,
    };
    layout.tag(&desc, "v1").expect("tag");
    (layout, tar)
}

fn converted_layer(dst: &Layout, report: &Report) -> (Vec<u8>, Descriptor) {
    let manifest: serde_json::Value = serde_json::from_slice(&dst.read_small(&report.manifest_digest).expect("manifest")).expect("json");
    let desc: Descriptor = serde_json::from_value(manifest["layers"][0].clone()).expect("layer");
    (std::fs::read(dst.blob_path(&desc.digest)).expect("blob"), desc)
}

#[test]
fn converts_an_image_and_updates_config_and_manifest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (src, tar) = source_image(dir.path());
    let dst = Layout::create(&dir.path().join("dst")).expect("dst");
    let report = convert_image(&src, "v1", &dst, "v1-zstd", &ConvertOptions::default(), &mut Quiet).expect("convert");
    let (blob, desc) = converted_layer(&dst, &report);
    assert_eq!(Digest::of(&blob), desc.digest);
    assert_eq!(desc.media_type, "application/vnd.oci.image.layer.v1.tar+zstd");
    let (sum, pos) = zstd_chunked::from_annotations(&desc.annotations).expect("ok").expect("zstd:chunked annotations");
    let index = zstd_chunked::open(&blob, Some(pos), Some(&sum)).expect("opens with the annotated checksum");
    let big = index.toc.entries.iter().find(|e| e.name == "usr/lib/libbig.so").expect("big file");
    assert_eq!(big.chunks.len(), 3);
    let tagged = dst.resolve("v1-zstd").expect("tagged");
    assert_eq!(tagged.digest, report.manifest_digest);
    let manifest: serde_json::Value = serde_json::from_slice(&dst.read_small(&tagged.digest).expect("m")).expect("json");
    let config_digest: Digest = manifest["config"]["digest"].as_str().expect("digest").parse().expect("digest");
    let config: serde_json::Value = serde_json::from_slice(&dst.read_small(&config_digest).expect("config")).expect("json");
    assert_eq!(config["rootfs"]["diff_ids"][0], report.layers[0].diff_id.to_string());
    assert_eq!(config["config"]["Cmd"][0], "/bin/sh", "the rest of the config is kept");
    assert_eq!(report.layers[0].uncompressed as usize, zstd::decode_all(&blob[..]).expect("zstd -d").len());
    assert!(report.uncompressed_bytes as usize >= tar.len() - 10240, "the whole tar went through");
}

#[test]
fn prioritized_files_come_first_and_are_marked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (src, _) = source_image(dir.path());
    let dst = Layout::create(&dir.path().join("dst")).expect("dst");
    let priorities = Priorities::parse("/usr/lib/libbig.so 1048576 10\n/usr/lib/hostname-link\n").expect("parse");
    let opts = ConvertOptions { priorities, ..ConvertOptions::default() };
    let report = convert_image(&src, "v1", &dst, "p", &opts, &mut Quiet).expect("convert");
    assert_eq!(report.layers[0].prefetch_chunks, 2, "one chunk of libbig.so, the hostname file the link needs");
    let (blob, _) = converted_layer(&dst, &report);
    let toc = zstd_chunked::open(&blob, None, None).expect("open").toc;
    let order: Vec<&str> = toc.entries.iter().map(|e| e.name.as_str()).collect();
    let pos = |n: &str| order.iter().position(|x| *x == n).unwrap_or_else(|| panic!("{n} in {order:?}"));
    assert!(pos("usr") < pos("usr/lib") && pos("usr/lib") < pos("usr/lib/libbig.so"), "parents first: {order:?}");
    assert!(pos("usr/lib/libbig.so") < pos("etc/hostname"), "the listed file comes before the rest: {order:?}");
    assert!(pos("etc/hostname") < pos("usr/lib/hostname-link"), "a hardlink's target comes before it: {order:?}");
    let big = &toc.entries[pos("usr/lib/libbig.so")];
    let marks: Vec<bool> = big.chunks.iter().map(|c| c.prefetch).collect();
    assert_eq!(marks, vec![false, true, false], "only the chunk holding the listed range");
    let link_target = &toc.entries[pos("etc/hostname")];
    assert_eq!(link_target.kind, Kind::Reg);
}

#[test]
fn a_corrupted_source_layer_is_refused_and_leaves_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (src, _) = source_image(dir.path());
    let manifest_desc = src.resolve("v1").expect("v1");
    let manifest: serde_json::Value = serde_json::from_slice(&src.read_small(&manifest_desc.digest).expect("m")).expect("json");
    let layer: Digest = manifest["layers"][0]["digest"].as_str().expect("d").parse().expect("d");
    let path = src.blob_path(&layer);
    let mut bytes = std::fs::read(&path).expect("read");
    let n = bytes.len();
    bytes[n - 3] ^= 0x01; // the gzip trailer: decompression may even succeed; the digest must not
    std::fs::write(&path, &bytes).expect("write");
    let dst = Layout::create(&dir.path().join("dst")).expect("dst");
    let e = convert_image(&src, "v1", &dst, "x", &ConvertOptions::default(), &mut Quiet).expect_err("corrupt source");
    assert!(e.to_string().contains(&layer.to_string()) || e.to_string().contains("gzip") || e.to_string().contains("crc"), "{e}");
    let left: Vec<_> = std::fs::read_dir(dir.path().join("dst/blobs/sha256")).expect("ls").collect();
    assert!(left.is_empty(), "nothing is stored: {left:?}");
    assert!(dst.resolve("x").is_err());
}
