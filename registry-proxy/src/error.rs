//! The one error type of registry-proxy, and its mapping to OCI error codes and HTTP statuses.

use p2p_node::Digest;

/// Everything that can go wrong in the mirror, each naming the thing it is about. Each variant
/// maps to one OCI error code and HTTP status in [`Error::oci`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid repository name {0:?}: lowercase components [a-z0-9] joined by '.', '_', '__' or '-', separated by '/'")]
    NameInvalid(String),
    #[error("invalid reference {0:?}: expected a tag ([A-Za-z0-9_][A-Za-z0-9._-]{{0,127}}) or a sha256 digest")]
    ReferenceInvalid(String),
    #[error(transparent)]
    DigestInvalid(p2p_node::Error),
    #[error("invalid Range {0:?}: {1}")]
    RangeInvalid(String, &'static str),
    #[error("range {range:?} is outside the {size}-byte blob")]
    RangeNotSatisfiable { range: String, size: u64 },
    #[error("{0}")]
    Unsupported(String),
    #[error("registry {0:?} is not an allowed upstream of this mirror (see --upstream)")]
    UpstreamNotAllowed(String),
    #[error("no upstream given: add ?ns=<registry> or configure a default upstream")]
    NoUpstream,
    #[error("blob {digest} not found in {name} at {upstream}")]
    BlobUnknown { upstream: String, name: String, digest: Digest },
    #[error("manifest {reference} not found in {name} at {upstream}")]
    ManifestUnknown { upstream: String, name: String, reference: String },
    #[error("{upstream} refused ferry's credentials for {name} ({status}); configure them with --docker-config or the upstream's username/password")]
    Unauthorized { upstream: String, name: String, status: u16 },
    #[error("{upstream} answered {status} for {what}")]
    UpstreamStatus { upstream: String, what: String, status: u16 },
    #[error("{upstream} could not be reached for {what}: {reason}")]
    UpstreamUnreachable { upstream: String, what: String, reason: String },
    #[error("{upstream} sent a bad response for {what}: {reason}")]
    UpstreamBad { upstream: String, what: String, reason: String },
    #[error("authentication with {upstream} failed: {reason}")]
    Auth { upstream: String, reason: String },
    #[error("timed out after {secs}s {what}")]
    Timeout { what: String, secs: u64 },
    #[error("the node is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Store(p2p_node::Error),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl From<p2p_node::Error> for Error {
    fn from(e: p2p_node::Error) -> Error {
        match e {
            p2p_node::Error::BadDigest { .. } => Error::DigestInvalid(e),
            e => Error::Store(e),
        }
    }
}

impl Error {
    /// The HTTP status and OCI error code this error is answered with.
    pub fn oci(&self) -> (u16, &'static str) {
        match self {
            Error::NameInvalid(_) => (400, "NAME_INVALID"),
            Error::ReferenceInvalid(_) => (400, "MANIFEST_INVALID"),
            Error::DigestInvalid(_) => (400, "DIGEST_INVALID"),
            Error::RangeInvalid(..) | Error::RangeNotSatisfiable { .. } => (416, "RANGE_INVALID"),
            Error::Unsupported(_) => (405, "UNSUPPORTED"),
            Error::UpstreamNotAllowed(_) | Error::NoUpstream => (403, "DENIED"),
            Error::BlobUnknown { .. } => (404, "BLOB_UNKNOWN"),
            Error::ManifestUnknown { .. } => (404, "MANIFEST_UNKNOWN"),
            Error::Unauthorized { status: 403, .. } => (403, "DENIED"),
            Error::Unauthorized { .. } | Error::Auth { .. } => (401, "UNAUTHORIZED"),
            Error::UpstreamStatus { status: 429, .. } => (429, "TOOMANYREQUESTS"),
            Error::Timeout { .. } => (504, "UNAVAILABLE"),
            Error::ShuttingDown => (503, "UNAVAILABLE"),
            Error::UpstreamStatus { .. } | Error::UpstreamUnreachable { .. } | Error::UpstreamBad { .. } => (502, "UNAVAILABLE"),
            Error::Store(p2p_node::Error::DigestMismatch { .. }) => (502, "DIGEST_INVALID"),
            Error::Store(p2p_node::Error::Failed { .. }) => (502, "UNAVAILABLE"),
            Error::Store(p2p_node::Error::TooLarge { .. }) => (507, "UNAVAILABLE"),
            Error::Store(_) | Error::Io { .. } | Error::Config(_) => (500, "UNKNOWN"),
        }
    }

    /// Whether the error says the upstream could not be used (so a cached answer may stand in).
    pub fn is_upstream_failure(&self) -> bool {
        matches!(self, Error::UpstreamUnreachable { .. } | Error::Timeout { .. })
            || matches!(self, Error::UpstreamStatus { status, .. } if *status >= 500 || *status == 429)
    }
}
