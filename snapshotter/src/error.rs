//! The one error type of the snapshotter: each variant names the thing it is about.

/// Everything that can go wrong in the snapshotter, each naming the thing it is about.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("malformed {what}: {why}")]
    Malformed { what: &'static str, why: String },
    #[error("unsafe path {path:?} in the layer: {why}")]
    UnsafePath { path: String, why: &'static str },
    #[error("{what} is too large: {size} bytes, over the limit of {limit}")]
    TooLarge { what: String, size: u64, limit: u64 },
    #[error("digest mismatch for {what}: expected {expected}, got {got}")]
    DigestMismatch { what: String, expected: p2p_node::Digest, got: p2p_node::Digest },
    #[error("not a lazy layer: {0}")]
    NotLazy(String),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("containerd refused {what}: {message} ({code:?})")]
    Containerd { what: String, code: tonic::Code, message: String },
    #[error("{what}: {why}")]
    Mirror { what: String, why: String },
    #[error(transparent)]
    Digest(#[from] p2p_node::Error),
}

impl Error {
    pub(crate) fn malformed(what: &'static str, why: impl Into<String>) -> Error {
        Error::Malformed { what, why: why.into() }
    }
    pub(crate) fn containerd(what: impl Into<String>, status: tonic::Status) -> Error {
        Error::Containerd { what: what.into(), code: status.code(), message: status.message().to_string() }
    }
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io { what: what.into(), source }
    }
}
