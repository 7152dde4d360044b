//! Which blob holds the layer an OCI *chain ID* stands for. The chain ID of an image's n-th layer
//! (computed from the config's `diff_ids`, per the OCI image spec) is what snapshotters are told. The mirror, which serves the manifest and the config,
//! records for each chain ID the layer's blob, its annotations (which say whether and how it can
//! be loaded lazily) and where it comes from; the snapshotter looks them up. Records live in the
//! store's `meta/layers/` and are only hints: every byte read through them is still verified
//! against the layer's TOC and chunk digests.

use std::collections::BTreeMap;

use crate::store::Store;
use crate::{Digest, Error};

/// Where a layer's blob is, and what its descriptor said.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerRecord {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// The registry name as the mirror knows it (`?ns=`), and the repository.
    pub registry: String,
    pub repo: String,
}

/// containerd's chain IDs: the first is the first diff ID; each next one is
/// `sha256("<previous chain ID> <diff ID>")`.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => *d,
            Some(prev) => Digest::of(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

fn key(chain_id: &Digest) -> String {
    format!("layers/{}", chain_id.hex())
}

/// Records the layer behind snapshot `chain_id`.
pub fn record(store: &Store, chain_id: &Digest, layer: &LayerRecord) -> Result<(), Error> {
    let json = serde_json::to_vec(layer).map_err(|e| Error::io("encoding a layer record".into(), std::io::Error::other(e)))?;
    store.write_meta(&key(chain_id), &json)
}

/// The layer behind snapshot `chain_id`, if the mirror saw its image.
pub fn lookup(store: &Store, chain_id: &Digest) -> Option<LayerRecord> {
    let bytes = store.read_meta(&key(chain_id)).ok()??;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_containerd() {
        // containerd's identity.ChainID for two layers: sha256("<diff0> <diff1>").
        let a: Digest = "sha256:1111111111111111111111111111111111111111111111111111111111111111".parse().expect("digest");
        let b: Digest = "sha256:2222222222222222222222222222222222222222222222222222222222222222".parse().expect("digest");
        let ids = chain_ids(&[a, b]);
        assert_eq!(ids[0], a);
        assert_eq!(ids[1], Digest::of(format!("{a} {b}").as_bytes()));
        assert!(chain_ids(&[]).is_empty());
    }
}
