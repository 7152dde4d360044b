//! The one error type of p2p-node: each variant names the thing it is about.

use crate::digest::Digest;

/// Everything that can go wrong in p2p-node, each naming the thing it is about.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid digest {input:?}: {why}")]
    BadDigest { input: String, why: String },
    #[error("digest mismatch for {expected}: got {got}")]
    DigestMismatch { expected: Digest, got: Digest },
    #[error("{digest} is {known} bytes, but {offered} bytes were offered")]
    SizeConflict { digest: Digest, known: u64, offered: u64 },
    #[error("piece {index} of {digest} has the wrong length ({len} bytes)")]
    BadPiece { digest: Digest, index: u32, len: u64 },
    #[error("{digest} is {size} bytes, over the limit of {limit} bytes")]
    TooLarge { digest: Digest, size: u64, limit: u64 },
    #[error("{digest} did not match its digest and is being completed from the origin ({pieces} pieces from peers dropped)")]
    Repairing { digest: Digest, pieces: u32 },
    #[error("{digest} failed: {why}")]
    Failed { digest: Digest, why: String },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("swarm: {0}")]
    Swarm(String),
    #[error("peer {peer} failed: {why}")]
    Peer { peer: String, why: String },
    /// A prewarm input (node list, pod list, manifest, holdings) with a bad field: `object`
    /// names the file and the item (`rollout.yaml document 3 (Deployment ml/llm-serve)`),
    /// `field` the path inside it (`spec.replicas`).
    #[error("{object}: {field}: {why}")]
    BadField { object: String, field: String, why: String },
    /// A prewarm input missing a field it cannot do without.
    #[error("{object}: {field} missing")]
    MissingField { object: String, field: String },
    /// A prewarm input that is not even the right shape (not YAML/JSON, not an object).
    #[error("{object}: {why}")]
    BadDocument { object: String, why: String },
    /// A prewarm policy setting out of range or unparsable.
    #[error("prewarm policy: {setting}: {why}")]
    BadPolicy { setting: String, why: String },
}

impl Error {
    pub(crate) fn io(what: String, source: std::io::Error) -> Error {
        Error::Io { what, source }
    }
}
