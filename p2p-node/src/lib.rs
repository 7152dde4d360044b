//! # p2p-node: content and peers
//!
//! The part of Ferry that knows what a node holds and who else in its site holds it.
//!
//! - [`Digest`]: an OCI content digest, parsed once.
//! - [`store::Store`]: blobs keyed by digest, complete or partly present (a sparse file plus a
//!   piece bitmap, [`store::PIECE_SIZE`] pieces), verified by whole-blob sha256 before they are
//!   marked complete (pieces from peers stay untrusted until then), crash-safe, bounded by LRU
//!   eviction between watermarks.
//! - [`swarm`]: the site's libp2p swarm: discovery, provider records, the piece exchange, bans,
//!   rate caps, and who fetches which segment from the origin ([`swarm::site`]).
//! - [`layers`]: which blob an image layer's OCI chain ID stands for (records in the store).
//! - [`prewarm`]: the pure planner: from node, pod and rollout manifests, which nodes a rollout's
//!   pods will land on, ranked, and which to warm in which wave.
//!
//! Data flow: a fetcher (in `registry-proxy`) claims missing pieces of a [`store::Partial`],
//! fetches them from wherever it can, and writes them; readers wait for pieces and read them from
//! disk. The store decides when a blob is complete; nobody else can.
//!
//! Invariants: nothing unverified is ever marked complete; a kill -9 at any moment leaves no torn
//! piece marked present; no blob is held whole in memory; p2p-node never speaks HTTP and knows
//! nothing of containerd or FUSE; the planner does no I/O at all.

pub mod digest;
mod error;
pub mod layers;
pub mod prewarm;
pub mod store;
pub mod swarm;

pub use digest::{Digest, Hasher};
pub use error::Error;
