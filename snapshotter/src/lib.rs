//! # snapshotter: everything containerd- and FUSE-specific
//!
//! Not built yet. It will hold the containerd Snapshots gRPC service (a `proxy_plugins`
//! snapshotter), snapshot metadata, overlay mounts, the lazy layer formats (zstd:chunked and
//! eStargz: read and write), the FUSE layer filesystem built from a layer's table of contents,
//! prefetch, and `ferry convert`.
//!
//! It will read blobs through a small trait, so that it works against the node's fetcher or a plain
//! registry alike, and it depends only on `p2p-node` (digests), never on `registry-proxy`.
