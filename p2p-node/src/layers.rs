//! Which blob holds the layer an OCI *chain ID* stands for. The chain ID of an image's n-th layer
//! (computed from the config's `diff_ids`, per the OCI image spec) is what snapshotters are told.
//! The mirror, which serves the manifest and the config, records for each chain ID the layer's
//! blob, its annotations (which say whether and how it can be loaded lazily) and where it comes
//! from; the snapshotter looks them up. Records live in the store's `meta/layers/` and are only
//! hints: every byte read through them is still verified against the layer's TOC and chunk
//! digests. [`LazyStats`] is the other thing both sides share: the snapshotter counts what lazy
//! layers do, the mirror reports it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

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

/// Why a layer containerd asked for as a remote snapshot was unpacked instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// The mirror never served the image's manifest, so the layer's blob is unknown.
    NotIndexed,
    /// Neither zstd:chunked nor eStargz.
    NotLazy,
    /// Its TOC failed validation, or could not be read.
    BadToc,
    /// The FUSE mount failed.
    Mount,
}

impl Fallback {
    pub const ALL: [Fallback; 4] = [Fallback::NotIndexed, Fallback::NotLazy, Fallback::BadToc, Fallback::Mount];

    pub fn as_str(self) -> &'static str {
        match self {
            Fallback::NotIndexed => "not_indexed",
            Fallback::NotLazy => "not_lazy",
            Fallback::BadToc => "bad_toc",
            Fallback::Mount => "mount",
        }
    }
}

/// What the node's lazily mounted layers did, all layers together: the snapshotter counts, the
/// mirror reports (metrics and status). Counters only grow, except `mounted` and `reading`.
#[derive(Debug, Default)]
pub struct LazyStats {
    /// Lazy layers mounted now.
    pub mounted: AtomicU64,
    /// Chunks and compressed bytes fetched for on-demand reads.
    pub chunks_fetched: AtomicU64,
    pub bytes_fetched: AtomicU64,
    /// Reads answered with EIO (a chunk could not be fetched or verified in time).
    pub read_errors: AtomicU64,
    /// Bytes the background prefetch fetched.
    pub prefetched_bytes: AtomicU64,
    /// On-demand reads fetching now (prefetch yields while there are any).
    pub reading: AtomicU64,
    /// Opens of a whole local file handed to the kernel (FUSE passthrough): none of their reads
    /// come through the snapshotter.
    pub passthrough_opens: AtomicU64,
    /// Bytes the mounted lazy layers keep on local disk (verified chunks and whole files), beside
    /// the store and outside its capacity.
    pub cache_bytes: AtomicU64,
    fallbacks: [AtomicU64; Fallback::ALL.len()],
}

impl LazyStats {
    pub fn fell_back(&self, why: Fallback) {
        self.fallbacks[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn fallbacks(&self, why: Fallback) -> u64 {
        self.fallbacks[why as usize].load(Ordering::Relaxed)
    }
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
