//! What each ferry node already holds, and what each image is made of: the two optional inputs
//! that turn "warm this node" into "fetch these many bytes".
//!
//! File form (JSON or YAML), both keys optional:
//! `{"nodes": {"gpu-a100-01": ["sha256:…", …]}, "images": {"reg/ml/llm:1.4": [{"digest": "sha256:…", "size": 123}]}}`.
//!
//! Invariant: what is not known stays unknown. Without node holdings or without an image's
//! layers the missing bytes are `None` and the cached share is 0; a node absent from known
//! holdings holds nothing.

use std::collections::{BTreeMap, BTreeSet};

use super::doc::{documents, Ctx};
use crate::{Digest, Error};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    pub digest: Digest,
    pub size: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Holdings {
    /// Node name → blobs present there; `None`: not known.
    pub nodes: Option<BTreeMap<String, BTreeSet<Digest>>>,
    /// Image reference (as written in the manifests) → its layers.
    pub images: BTreeMap<String, Vec<Layer>>,
}

/// What a node is missing of an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Missing {
    pub bytes: u64,
    pub total: u64,
}

impl Missing {
    /// The cached share in per mille (0..=1000), integer so that scores stay exact.
    pub fn cached_permille(&self) -> u64 {
        if self.total == 0 {
            return 0;
        }
        ((self.total - self.bytes) as u128 * 1000 / self.total as u128) as u64
    }
}

impl Holdings {
    /// The total size of an image's layers, when known.
    pub fn image_size(&self, image: &str) -> Option<u64> {
        self.images.get(image).map(|layers| layers.iter().map(|l| l.size).sum())
    }

    /// What `node` lacks of `image`, when both the node holdings and the image's layers are known.
    pub fn missing(&self, node: &str, image: &str) -> Option<Missing> {
        let layers = self.images.get(image)?;
        let held = self.nodes.as_ref()?.get(node);
        let mut seen = BTreeSet::new();
        let (mut bytes, mut total) = (0u64, 0u64);
        for layer in layers.iter().filter(|l| seen.insert(l.digest)) {
            total += layer.size;
            if !held.is_some_and(|h| h.contains(&layer.digest)) {
                bytes += layer.size;
            }
        }
        Some(Missing { bytes, total })
    }
}

pub fn parse_holdings(source: &str, text: &str) -> Result<Holdings, Error> {
    let docs = documents(source, text)?;
    let [(_, doc)] = docs.as_slice() else {
        return Err(Error::BadDocument { object: source.to_string(), why: format!("expected one document, got {}", docs.len()) });
    };
    let ctx = Ctx::new(source);
    let top = ctx.map(Some(doc), "(top level)")?.ok_or_else(|| ctx.missing("nodes"))?;
    if let Some(key) = top.keys().find(|k| *k != "nodes" && *k != "images") {
        return Err(ctx.err(key, "unknown key (expected nodes, images)"));
    }
    let digest = |v: &serde_json::Value, field: &str| -> Result<Digest, Error> {
        let s = ctx.required_str(Some(v), field)?;
        s.parse().map_err(|e: Error| ctx.err(field, e.to_string()))
    };
    let mut holdings = Holdings::default();
    if let Some(nodes) = ctx.map(top.get("nodes"), "nodes")? {
        let mut out = BTreeMap::new();
        for (node, blobs) in nodes {
            let field = format!("nodes[{node:?}]");
            let mut set = BTreeSet::new();
            for (i, d) in ctx.list(Some(blobs), &field)?.iter().enumerate() {
                set.insert(digest(d, &format!("{field}[{i}]"))?);
            }
            out.insert(node.clone(), set);
        }
        holdings.nodes = Some(out);
    }
    for (image, layers) in ctx.map(top.get("images"), "images")?.into_iter().flatten() {
        let field = format!("images[{image:?}]");
        let mut out = Vec::new();
        for (i, l) in ctx.list(Some(layers), &field)?.iter().enumerate() {
            let at = format!("{field}[{i}]");
            let d = digest(l.get("digest").unwrap_or(&serde_json::Value::Null), &format!("{at}.digest"))?;
            let size = ctx.int(l.get("size"), &format!("{at}.size"))?.ok_or_else(|| ctx.missing(&format!("{at}.size")))?;
            let size = u64::try_from(size).map_err(|_| ctx.err(&format!("{at}.size"), format!("{size} is negative")))?;
            out.push(Layer { digest: d, size });
        }
        holdings.images.insert(image.clone(), out);
    }
    Ok(holdings)
}
