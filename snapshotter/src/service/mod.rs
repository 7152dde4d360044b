//! containerd's Snapshots API on a unix socket (a `proxy_plugins` snapshotter): [`meta`] keeps
//! the snapshots and their metadata with containerd's semantics, [`mounts`] says how containerd
//! mounts them (bind or overlayfs), `grpc` serves them, `filter` reads List filters.
//!
//! Today every layer is unpacked by containerd into an active snapshot (no lazy layers yet).

/// The generated wire types and service, in modules that mirror the proto packages.
#[allow(clippy::all, missing_docs)]
pub mod api {
    pub mod containerd {
        pub mod types {
            tonic::include_proto!("containerd.types");
        }
        pub mod services {
            pub mod snapshots {
                pub mod v1 {
                    tonic::include_proto!("containerd.services.snapshots.v1");
                }
            }
        }
    }
    pub use containerd::services::snapshots::v1 as snapshots;
    pub use containerd::types;
}

mod filter;
mod grpc;
pub mod meta;
pub mod mounts;

pub use grpc::{bind, Bound};
