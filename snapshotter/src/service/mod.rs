//! containerd's Snapshots API on a unix socket (a `proxy_plugins` snapshotter): [`meta`] keeps
//! the snapshots and their metadata with containerd's semantics, [`mounts`] says how containerd
//! mounts them (bind or overlayfs), `grpc` serves them, `filter` reads List filters.
//!
//! Layers the mirror indexed and that are lazy (zstd:chunked, eStargz) are mounted through FUSE
//! ([`remote`]); every other layer is unpacked by containerd into an active snapshot.

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
            pub mod content {
                pub mod v1 {
                    tonic::include_proto!("containerd.services.content.v1");
                }
            }
            pub mod images {
                pub mod v1 {
                    tonic::include_proto!("containerd.services.images.v1");
                }
            }
            pub mod leases {
                pub mod v1 {
                    tonic::include_proto!("containerd.services.leases.v1");
                }
            }
            pub mod diff {
                pub mod v1 {
                    tonic::include_proto!("containerd.services.diff.v1");
                }
            }
            pub mod version {
                pub mod v1 {
                    tonic::include_proto!("containerd.services.version.v1");
                }
            }
            pub mod introspection {
                pub mod v1 {
                    tonic::include_proto!("containerd.services.introspection.v1");
                }
            }
        }
    }
    pub use containerd::services::content::v1 as content;
    pub use containerd::services::diff::v1 as diff;
    pub use containerd::services::images::v1 as images;
    pub use containerd::services::introspection::v1 as introspection;
    pub use containerd::services::leases::v1 as leases;
    pub use containerd::services::snapshots::v1 as snapshots;
    pub use containerd::services::version::v1 as version;
    pub use containerd::types;
}

mod filter;
mod grpc;
pub mod meta;
pub mod mounts;
pub mod remote;

pub use grpc::{bind, Bound};

/// A client of the Snapshots API on the unix socket `socket` (what containerd's proxy speaks).
pub async fn connect(
    socket: &std::path::Path,
) -> Result<api::snapshots::snapshots_client::SnapshotsClient<tonic::transport::Channel>, crate::Error> {
    Ok(api::snapshots::snapshots_client::SnapshotsClient::new(channel(socket).await?))
}

/// A gRPC channel over the unix socket `socket`.
pub async fn channel(socket: &std::path::Path) -> Result<tonic::transport::Channel, crate::Error> {
    let path = socket.to_path_buf();
    let channel = tonic::transport::Endpoint::from_static("http://snapshotter")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move { tokio::net::UnixStream::connect(path).await.map(hyper_util::rt::TokioIo::new) }
        }))
        .await
        .map_err(|e| crate::Error::io(format!("connecting to {}", socket.display()), std::io::Error::other(e.to_string())))?;
    Ok(channel)
}
