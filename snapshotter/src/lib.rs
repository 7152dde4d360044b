//! # snapshotter: everything containerd- and FUSE-specific
//!
//! The lazy layer formats, the Snapshots service, and the two commands that drive containerd.
//! - [`toc`]: the table of contents both formats share, validated once into a [`toc::Toc`] whose
//!   names are safe and whose chunks are contiguous, digested and inside the blob;
//! - [`tar`]: a streaming tar reader that keeps each entry's raw header bytes;
//! - [`zstd_chunked`]: writer and reader of zstd:chunked layers;
//! - [`estargz`]: reader (and a writer for tests) of eStargz layers;
//! - [`layer`]: opens either format from a [`blob::ReadAt`] and reads verified chunks;
//! - [`service`]: containerd's Snapshots API (a `proxy_plugins` snapshotter) with bind and
//!   overlayfs mounts and metadata that survives restarts; lazy layers mounted through
//! - [`fuse`]: the read-only layer filesystem built from a [`toc::Toc`];
//! - [`convert`]: images to zstd:chunked, startup files first;
//! - [`pull`]: `ferry pull`, an image into containerd with lazy layers mounted, over containerd's
//!   own API ([`containerd`]) and the node's mirror ([`mirror`]);
//! - [`profile`]: `ferry profile`, the chunks a command reads, for `convert --prioritize`;
//! - [`warm`]: an image fetched ahead of time for a prewarm order, startup chunks first.
//!
//! Data flow: blob bytes → footer → TOC (checked against the digest the image manifest
//! annotates) → entries → chunk byte ranges → decompressed, verified chunk bytes.
//!
//! Invariants: no chunk byte is returned before it matched the chunk digest from a TOC whose own
//! digest matched the manifest annotation; no path leaves the layer; every size read from a
//! layer is bounded before anything is allocated for it; bytes read unverified from the mirror
//! (peer pieces) are used only after their chunk matched. Depends only on `p2p-node`.

pub mod blob;
pub mod containerd;
pub mod convert;
mod error;
pub mod estargz;
pub mod fuse;
pub mod layer;
pub mod mirror;
pub mod profile;
pub mod pull;
pub mod service;
pub mod tar;
pub mod toc;
pub mod warm;
pub mod zstd_chunked;

pub use error::Error;
