//! `ferry pull IMAGE`: puts an image into containerd through the node's mirror, its layers
//! prepared on the ferry snapshotter with the labels a remote snapshotter reads — so lazy layers
//! are mounted at once and never downloaded, and `ctr run --snapshotter ferry IMAGE` starts it.
//!
//! containerd 1.6's `ctr image pull` cannot do this: it fetches every layer, then unpacks without
//! the `containerd.io/snapshot.ref` label. So this does what containerd's own unpacking pull does,
//! over containerd's API ([`crate::containerd`]): manifest, index and config go into the content
//! store with the garbage-collection labels containerd's pull would set; each layer is Prepared
//! with `containerd.io/snapshot.ref` (and CRI's layer labels); a layer the snapshotter reports as
//! already there is lazy (or was pulled before); any other is downloaded through the mirror,
//! unpacked by containerd's diff service, checked against the config's diff ID and committed.
//! Everything happens under one lease, and the image record is written last.
//!
//! Invariants: every manifest, index and config is checked against its digest before use; an
//! unpacked layer whose diff ID differs from the config's is removed, and the pull fails.

use std::collections::HashMap;
use std::time::{Instant, SystemTime};

use p2p_node::Digest;
use serde::Serialize;

use crate::containerd::{Containerd, Prepared};
use crate::convert::oci::Descriptor;
pub use crate::mirror::ImageRef;
use crate::mirror::{Mirror, Resolved};
use crate::service::api::types;
use crate::Error;

/// Where to pull from and into.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// The node's mirror, `http://HOST:PORT`.
    pub mirror: String,
    /// containerd's socket.
    pub containerd: std::path::PathBuf,
    pub namespace: String,
    pub snapshotter: String,
}

/// How a layer got into the snapshotter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerOutcome {
    /// Mounted lazily: nothing downloaded yet.
    Lazy,
    /// Downloaded through the mirror and unpacked.
    Unpacked,
    /// The snapshot was there already.
    Present,
}

#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    pub digest: Digest,
    pub size: u64,
    pub outcome: LayerOutcome,
}

#[derive(Debug, Clone, Serialize)]
pub struct PullReport {
    pub image: String,
    pub manifest: Digest,
    pub layers: Vec<LayerReport>,
    pub seconds: f64,
}

/// Pulls `image` into containerd; see the module header.
pub async fn pull(image: &ImageRef, opts: &PullOptions) -> Result<PullReport, Error> {
    let started = Instant::now();
    let mirror = Mirror::new(&opts.mirror, image)?;
    let Resolved { mut top, manifest, config_desc, config, layers, diff_ids, .. } = mirror.resolve(image).await?;
    let chains = p2p_node::layers::chain_ids(&diff_ids);

    let mut cd = Containerd::connect(&opts.containerd, &opts.namespace).await?;
    cd.lease().await?;
    let result: Result<Vec<LayerReport>, Error> = async {
        let sn = &opts.snapshotter;
        // Content first, labelled as containerd's pull labels it, so that once the image record
        // exists the garbage collector keeps the config, the manifest and the snapshots.
        let mut config_labels = HashMap::new();
        if let Some(top_chain) = chains.last() {
            config_labels.insert(format!("containerd.io/gc.ref.snapshot.{sn}"), top_chain.to_string());
        }
        cd.write_content(&wire(&config_desc), config_labels, once(config)).await?;
        let mut labels: HashMap<String, String> =
            [("containerd.io/gc.ref.content.config".to_string(), config_desc.digest.to_string())].into();
        for (i, l) in layers.iter().enumerate() {
            labels.insert(format!("containerd.io/gc.ref.content.l.{i}"), l.digest.to_string());
        }
        cd.write_content(&manifest.desc, labels, once(manifest.bytes.clone())).await?;
        if top.desc.digest != manifest.desc.digest {
            let labels = [("containerd.io/gc.ref.content.m.0".to_string(), manifest.desc.digest.clone())].into();
            cd.write_content(&top.desc, labels, once(std::mem::take(&mut top.bytes))).await?;
        }

        let mut reports = Vec::with_capacity(layers.len());
        let mut parent = String::new();
        for ((layer, diff_id), chain) in layers.iter().zip(&diff_ids).zip(&chains) {
            let chain = chain.to_string();
            let labels = [
                ("containerd.io/snapshot.ref", chain.clone()),
                ("containerd.io/snapshot/cri.layer-digest", layer.digest.to_string()),
                ("containerd.io/snapshot/cri.image-ref", image.to_string()),
                ("containerd.io/snapshot/cri.manifest-digest", manifest.desc.digest.clone()),
            ];
            let labels = labels.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            let outcome = snapshot(&cd, &mirror, sn, &parent, &chain, labels, layer, diff_id).await?;
            tracing::info!(layer = %layer.digest, ?outcome, "layer ready");
            reports.push(LayerReport { digest: layer.digest, size: layer.size, outcome });
            parent = chain;
        }
        cd.set_image(&image.to_string(), &top.desc).await?;
        Ok(reports)
    }
    .await;
    let ended = cd.end_lease().await;
    let layers = result?;
    ended?;
    let manifest = manifest.desc.digest.parse()?;
    Ok(PullReport { image: image.to_string(), manifest, layers, seconds: started.elapsed().as_secs_f64() })
}

/// Makes the snapshot `chain` of `layer` on top of `parent`: already there, mounted lazily by
/// the snapshotter, or unpacked (and removed again if that fails).
#[allow(clippy::too_many_arguments)]
async fn snapshot(
    cd: &Containerd,
    mirror: &Mirror,
    sn: &str,
    parent: &str,
    chain: &str,
    labels: HashMap<String, String>,
    layer: &Descriptor,
    diff_id: &Digest,
) -> Result<LayerOutcome, Error> {
    if cd.has_snapshot(sn, chain).await? {
        return Ok(LayerOutcome::Present);
    }
    let key = format!("extract-{} {chain}", unique());
    let mounts = match cd.prepare(sn, &key, parent, labels).await? {
        Prepared::Exists => return Ok(LayerOutcome::Lazy),
        Prepared::Mounts(mounts) => mounts,
    };
    match unpack(cd, mirror, layer, diff_id, mounts).await {
        Ok(()) => cd.commit(sn, chain, &key).await?,
        Err(e) => {
            let _ = cd.remove(sn, &key).await;
            return Err(e);
        }
    }
    Ok(LayerOutcome::Unpacked)
}

/// Downloads `layer` through the mirror into containerd's content store and unpacks it onto
/// `mounts`, checking what was applied against `diff_id`.
async fn unpack(cd: &Containerd, mirror: &Mirror, layer: &Descriptor, diff_id: &Digest, mounts: Vec<types::Mount>) -> Result<(), Error> {
    let desc = wire(layer);
    if !cd.has_content(&desc.digest).await? {
        let labels = [("containerd.io/uncompressed".to_string(), diff_id.to_string())].into();
        cd.write_content(&desc, labels, mirror.blob_stream(layer).await?).await?;
    }
    let applied = cd.apply(&desc, mounts).await?;
    if applied != diff_id.to_string() {
        return Err(Error::DigestMismatch { what: format!("unpacked layer {}", layer.digest), expected: *diff_id, got: applied.parse()? });
    }
    Ok(())
}

fn wire(d: &Descriptor) -> types::Descriptor {
    types::Descriptor {
        media_type: d.media_type.clone(),
        digest: d.digest.to_string(),
        size: d.size as i64,
        annotations: d.annotations.clone().into_iter().collect(),
    }
}

fn once(bytes: Vec<u8>) -> futures_util::stream::Iter<std::vec::IntoIter<Result<bytes::Bytes, Error>>> {
    futures_util::stream::iter(vec![Ok(bytes::Bytes::from(bytes))])
}

fn unique() -> u128 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos()
}
