//! Records, for each layer of an image manifest the mirror serves, which blob its containerd
//! snapshot name (chain ID) stands for (`p2p_node::layers`), so the snapshotter can mount lazy
//! layers for images pulled through this node. Needs the config's `diff_ids`, fetched through
//! the fetcher (containerd asks for the config next anyway, and then finds it cached). A manifest
//! is indexed once per node run: its records live in the store after that.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use p2p_node::layers::{chain_ids, LayerRecord};
use p2p_node::Digest;

use crate::fetcher::Fetcher;
use crate::names::Repo;
use crate::upstream::Upstream;
use crate::Error;

/// A config is small; a bigger one is not an image config.
const MAX_CONFIG: u64 = 4 << 20;

#[derive(serde::Deserialize)]
struct Descriptor {
    digest: Digest,
    size: u64,
    #[serde(rename = "mediaType", default)]
    media_type: String,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(serde::Deserialize)]
struct ImageManifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(serde::Deserialize)]
struct RootFs {
    #[serde(default)]
    diff_ids: Vec<Digest>,
}

#[derive(serde::Deserialize)]
struct Config {
    rootfs: RootFs,
}

/// The manifests indexed since the node started, so each costs its config read once.
#[derive(Default)]
pub struct LayerIndex {
    done: Mutex<HashSet<Digest>>,
}

impl LayerIndex {
    /// Indexes the layers of `manifest` (JSON, digest `digest`) unless this node already did.
    pub async fn index(
        &self,
        fetcher: &Arc<Fetcher>,
        up: &Arc<Upstream>,
        name: &Repo,
        digest: Digest,
        manifest: &[u8],
    ) -> Result<(), Error> {
        if self.done.lock().unwrap_or_else(|p| p.into_inner()).contains(&digest) {
            return Ok(());
        }
        index(fetcher, up, name, manifest).await?;
        self.done.lock().unwrap_or_else(|p| p.into_inner()).insert(digest);
        Ok(())
    }
}

/// Indexes the layers of `manifest` (JSON) if it is an image manifest.
async fn index(fetcher: &Arc<Fetcher>, up: &Arc<Upstream>, name: &Repo, manifest: &[u8]) -> Result<(), Error> {
    let Ok(m) = serde_json::from_slice::<ImageManifest>(manifest) else { return Ok(()) }; // an index, or not an image
    let store = fetcher.store();
    fetcher.fetch_small(up, name, &m.config.digest, MAX_CONFIG.max(m.config.size)).await?;
    let bytes = store.read_small(&m.config.digest, MAX_CONFIG)?.unwrap_or_default();
    let config: Config = serde_json::from_slice(&bytes).map_err(|e| Error::UpstreamBad {
        upstream: up.host.clone(),
        what: format!("config {}", m.config.digest),
        reason: e.to_string(),
    })?;
    if config.rootfs.diff_ids.len() != m.layers.len() {
        return Ok(()); // not an image whose layers containerd unpacks one by one
    }
    for (chain_id, layer) in chain_ids(&config.rootfs.diff_ids).iter().zip(m.layers) {
        if p2p_node::layers::lookup(&store, chain_id).is_some_and(|r| r.digest == layer.digest) {
            continue;
        }
        let record = LayerRecord {
            digest: layer.digest,
            size: layer.size,
            media_type: layer.media_type,
            annotations: layer.annotations,
            registry: up.host.clone(),
            repo: name.to_string(),
        };
        p2p_node::layers::record(&store, chain_id, &record)?;
    }
    Ok(())
}
