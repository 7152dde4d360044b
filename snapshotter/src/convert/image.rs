//! Converts a whole image between OCI layouts: every layer to zstd:chunked (source digests
//! checked as they stream), the config's diff_ids updated, a new OCI manifest written and tagged.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read};
use std::time::Instant;

use p2p_node::{Digest, Hasher};
use serde::Serialize;

use super::layer::convert_layer;
use super::oci::{is_index, pick_platform, Descriptor, Layout, MT_DOCKER_MANIFEST, MT_LAYER_ZSTD, MT_OCI_CONFIG, MT_OCI_MANIFEST};
use super::prioritize::Priorities;
use crate::zstd_chunked::WriteOptions;
use crate::Error;

#[derive(Debug, Clone, Default)]
pub struct ConvertOptions {
    pub write: WriteOptions,
    pub priorities: Priorities,
}

/// Told about progress, for a progress bar.
pub trait Progress {
    /// Layer `index` of `count` starts; its source blob is `size` bytes.
    fn layer(&mut self, index: usize, count: usize, size: u64);
    /// `n` more source bytes were consumed.
    fn advance(&mut self, n: u64);
}

/// No progress reporting.
pub struct Quiet;
impl Progress for Quiet {
    fn layer(&mut self, _: usize, _: usize, _: u64) {}
    fn advance(&mut self, _: u64) {}
}

#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    pub source_digest: Digest,
    pub digest: Digest,
    pub size: u64,
    pub diff_id: Digest,
    pub toc_digest: Digest,
    pub files: u64,
    pub chunks: u64,
    pub prefetch_chunks: u64,
    pub uncompressed: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub manifest_digest: Digest,
    pub manifest_size: u64,
    pub layers: Vec<LayerReport>,
    pub uncompressed_bytes: u64,
    pub source_bytes: u64,
    pub converted_bytes: u64,
    pub seconds: f64,
}

fn bad_manifest(why: impl Into<String>) -> Error {
    Error::malformed("image manifest", why)
}

/// The single-platform manifest `desc` names (for an index: linux/amd64, or its only entry).
fn manifest_of(src: &Layout, desc: &Descriptor) -> Result<(Descriptor, serde_json::Value), Error> {
    let bytes = src.read_small(&desc.digest)?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| bad_manifest(e.to_string()))?;
    let mt = v.get("mediaType").and_then(|m| m.as_str()).unwrap_or(&desc.media_type).to_string();
    if is_index(&mt, &v) {
        let list: Vec<Descriptor> =
            serde_json::from_value(v.get("manifests").cloned().unwrap_or_default()).map_err(|e| bad_manifest(e.to_string()))?;
        let pick = pick_platform(&list).ok_or_else(|| bad_manifest("a multi-platform index without a linux/amd64 image"))?;
        return manifest_of(src, pick);
    }
    if mt != MT_OCI_MANIFEST && mt != MT_DOCKER_MANIFEST {
        return Err(bad_manifest(format!("unsupported manifest type {mt:?}")));
    }
    Ok((desc.clone(), v))
}

/// Reads through, counting and hashing the bytes (the source blob's digest check).
struct Tee<'a, R> {
    inner: R,
    hasher: Hasher,
    progress: &'a mut dyn Progress,
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.progress.advance(n as u64);
        Ok(n)
    }
}

/// Converts the image tagged `src_tag` in `src` and tags the result `dst_tag` in `dst`.
pub fn convert_image(
    src: &Layout,
    src_tag: &str,
    dst: &Layout,
    dst_tag: &str,
    opts: &ConvertOptions,
    progress: &mut dyn Progress,
) -> Result<Report, Error> {
    let started = Instant::now();
    let (_, manifest) = manifest_of(src, &src.resolve(src_tag)?)?;
    let config_desc: Descriptor = serde_json::from_value(manifest["config"].clone()).map_err(|e| bad_manifest(format!("config: {e}")))?;
    let layers: Vec<Descriptor> = serde_json::from_value(manifest["layers"].clone()).map_err(|e| bad_manifest(format!("layers: {e}")))?;
    let mut config: serde_json::Value =
        serde_json::from_slice(&src.read_small(&config_desc.digest)?).map_err(|e| Error::malformed("image config", e.to_string()))?;

    let mut reports = Vec::with_capacity(layers.len());
    let mut new_layers = Vec::with_capacity(layers.len());
    for (i, layer) in layers.iter().enumerate() {
        progress.layer(i, layers.len(), layer.size);
        let report = convert_one(src, dst, layer, opts, progress)?;
        new_layers.push(Descriptor {
            media_type: MT_LAYER_ZSTD.into(),
            digest: report.0.digest,
            size: report.0.size,
            annotations: report.1,
            platform: None,
        });
        reports.push(report.0);
    }

    let diff_ids: Vec<String> = reports.iter().map(|r| r.diff_id.to_string()).collect();
    config["rootfs"] = serde_json::json!({ "type": "layers", "diff_ids": diff_ids });
    let config_bytes = serde_json::to_vec(&config).map_err(|e| Error::malformed("image config", e.to_string()))?;
    let config_digest = dst.put_bytes(&config_bytes)?;
    let mut new_manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MT_OCI_MANIFEST,
        "config": { "mediaType": MT_OCI_CONFIG, "digest": config_digest, "size": config_bytes.len() },
        "layers": new_layers,
    });
    if let Some(a) = manifest.get("annotations") {
        new_manifest["annotations"] = a.clone();
    }
    let manifest_bytes = serde_json::to_vec(&new_manifest).map_err(|e| bad_manifest(e.to_string()))?;
    let manifest_digest = dst.put_bytes(&manifest_bytes)?;
    let desc = Descriptor {
        media_type: MT_OCI_MANIFEST.into(),
        digest: manifest_digest,
        size: manifest_bytes.len() as u64,
        annotations: BTreeMap::new(),
        platform: None,
    };
    dst.tag(&desc, dst_tag)?;
    Ok(Report {
        manifest_digest,
        manifest_size: manifest_bytes.len() as u64,
        uncompressed_bytes: reports.iter().map(|r| r.uncompressed).sum(),
        source_bytes: layers.iter().map(|l| l.size).sum(),
        converted_bytes: reports.iter().map(|r| r.size).sum(),
        layers: reports,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn convert_one(
    src: &Layout,
    dst: &Layout,
    layer: &Descriptor,
    opts: &ConvertOptions,
    progress: &mut dyn Progress,
) -> Result<(LayerReport, BTreeMap<String, String>), Error> {
    let path = src.blob_path(&layer.digest);
    let file = File::open(&path).map_err(|e| Error::io(format!("opening layer {} ({})", layer.digest, path.display()), e))?;
    let mut tee = Tee { inner: BufReader::with_capacity(1 << 20, file), hasher: Hasher::new(), progress };
    let temp = dst.temp_path(&layer.digest.hex()[..12]);
    let out = BufWriter::with_capacity(1 << 20, File::create(&temp).map_err(|e| Error::io(format!("creating {}", temp.display()), e))?);
    let result = (|| {
        let mt = layer.media_type.as_str();
        let (out, written) = if mt.ends_with("gzip") {
            convert_layer(flate2::read::MultiGzDecoder::new(&mut tee), out, &opts.write, &opts.priorities, dst.dir())?
        } else if mt.ends_with("zstd") {
            let z = zstd::stream::read::Decoder::new(&mut tee).map_err(|e| Error::io("starting zstd", e))?;
            convert_layer(z, out, &opts.write, &opts.priorities, dst.dir())?
        } else if mt.ends_with(".tar") || mt.ends_with("diff.tar") {
            convert_layer(&mut tee, out, &opts.write, &opts.priorities, dst.dir())?
        } else {
            return Err(Error::NotLazy(format!("layer {} has media type {mt:?}, which cannot be converted", layer.digest)));
        };
        out.into_inner()
            .map_err(|e| Error::io("flushing the converted layer", e.into_error()))?
            .sync_all()
            .map_err(|e| Error::io("syncing the converted layer", e))?;
        // Whatever the decompressor left unread still belongs to the source digest.
        std::io::copy(&mut tee, &mut std::io::sink()).map_err(|e| Error::io(format!("reading layer {}", layer.digest), e))?;
        let got = std::mem::take(&mut tee.hasher).finish();
        if got != layer.digest {
            return Err(Error::DigestMismatch { what: format!("source layer {}", path.display()), expected: layer.digest, got });
        }
        Ok(written)
    })();
    let written = match result {
        Ok(w) => w,
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            return Err(e);
        }
    };
    dst.commit_temp(&temp, &written.digest)?;
    let report = LayerReport {
        source_digest: layer.digest,
        digest: written.digest,
        size: written.size,
        diff_id: written.diff_id,
        toc_digest: written.toc_digest,
        files: written.files,
        chunks: written.chunks,
        prefetch_chunks: written.prefetch_chunks,
        uncompressed: written.uncompressed,
    };
    Ok((report, written.annotations))
}
