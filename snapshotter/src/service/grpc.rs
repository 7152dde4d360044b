//! The gRPC face of [`Snapshots`]: request validation, blocking work off the async threads, and
//! containerd's error codes (NotFound, AlreadyExists, FailedPrecondition, InvalidArgument), which
//! containerd turns back into its own error kinds.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::api::snapshots as pb;
use super::api::snapshots::snapshots_server::{Snapshots as SnapshotsApi, SnapshotsServer};
use super::api::types::Mount as PbMount;
use super::meta::{Info, Kind, MetaError, Snapshots};
use super::mounts::Mount;
use crate::Error;

/// Infos per `List` response message.
const LIST_BATCH: usize = 100;

struct Service {
    snapshots: Arc<Snapshots>,
}

fn status(e: MetaError) -> Status {
    match e {
        MetaError::NotFound(_) => Status::not_found(e.to_string()),
        MetaError::AlreadyExists(_) => Status::already_exists(e.to_string()),
        MetaError::FailedPrecondition(_) => Status::failed_precondition(e.to_string()),
        MetaError::InvalidArgument(_) => Status::invalid_argument(e.to_string()),
        MetaError::Io(_) => {
            tracing::warn!(error = %e, "snapshotter I/O failed");
            Status::internal(e.to_string())
        }
    }
}

/// Runs blocking snapshot work on the blocking pool.
async fn blocking<T: Send + 'static>(
    snapshots: &Arc<Snapshots>,
    f: impl FnOnce(&Snapshots) -> Result<T, MetaError> + Send + 'static,
) -> Result<T, Status> {
    let s = snapshots.clone();
    tokio::task::spawn_blocking(move || f(&s)).await.map_err(|e| Status::internal(e.to_string()))?.map_err(status)
}

fn pb_mounts(mounts: Vec<Mount>) -> Vec<PbMount> {
    mounts.into_iter().map(|m| PbMount { r#type: m.kind, source: m.source, target: String::new(), options: m.options }).collect()
}

fn parent(p: String) -> Option<String> {
    (!p.is_empty()).then_some(p)
}

fn labels(l: std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    l.into_iter().collect()
}

fn timestamp(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

fn pb_info(i: Info) -> pb::Info {
    let kind = match i.kind {
        Kind::View => pb::Kind::View,
        Kind::Active => pb::Kind::Active,
        Kind::Committed => pb::Kind::Committed,
    };
    pb::Info {
        name: i.name,
        parent: i.parent.unwrap_or_default(),
        kind: kind as i32,
        created_at: Some(timestamp(i.created)),
        updated_at: Some(timestamp(i.updated)),
        labels: i.labels.into_iter().collect(),
    }
}

#[tonic::async_trait]
impl SnapshotsApi for Service {
    async fn prepare(&self, req: Request<pb::PrepareSnapshotRequest>) -> Result<Response<pb::PrepareSnapshotResponse>, Status> {
        let r = req.into_inner();
        tracing::debug!(key = %r.key, parent = %r.parent, labels = ?r.labels, "prepare");
        let mounts =
            blocking(&self.snapshots, move |s| s.prepare(&r.key, parent(r.parent).as_deref(), labels(r.labels), Kind::Active)).await?;
        Ok(Response::new(pb::PrepareSnapshotResponse { mounts: pb_mounts(mounts) }))
    }

    async fn view(&self, req: Request<pb::ViewSnapshotRequest>) -> Result<Response<pb::ViewSnapshotResponse>, Status> {
        let r = req.into_inner();
        let mounts =
            blocking(&self.snapshots, move |s| s.prepare(&r.key, parent(r.parent).as_deref(), labels(r.labels), Kind::View)).await?;
        Ok(Response::new(pb::ViewSnapshotResponse { mounts: pb_mounts(mounts) }))
    }

    async fn mounts(&self, req: Request<pb::MountsRequest>) -> Result<Response<pb::MountsResponse>, Status> {
        let key = req.into_inner().key;
        let mounts = blocking(&self.snapshots, move |s| s.mounts(&key)).await?;
        Ok(Response::new(pb::MountsResponse { mounts: pb_mounts(mounts) }))
    }

    async fn commit(&self, req: Request<pb::CommitSnapshotRequest>) -> Result<Response<()>, Status> {
        let r = req.into_inner();
        tracing::debug!(key = %r.key, name = %r.name, "commit");
        blocking(&self.snapshots, move |s| s.commit(&r.name, &r.key, labels(r.labels))).await?;
        Ok(Response::new(()))
    }

    async fn remove(&self, req: Request<pb::RemoveSnapshotRequest>) -> Result<Response<()>, Status> {
        let key = req.into_inner().key;
        blocking(&self.snapshots, move |s| s.remove(&key)).await?;
        Ok(Response::new(()))
    }

    async fn stat(&self, req: Request<pb::StatSnapshotRequest>) -> Result<Response<pb::StatSnapshotResponse>, Status> {
        let info = self.snapshots.stat(&req.into_inner().key).map_err(status)?;
        Ok(Response::new(pb::StatSnapshotResponse { info: Some(pb_info(info)) }))
    }

    async fn update(&self, req: Request<pb::UpdateSnapshotRequest>) -> Result<Response<pb::UpdateSnapshotResponse>, Status> {
        let r = req.into_inner();
        let info = r.info.ok_or_else(|| Status::invalid_argument("an update needs the snapshot's info"))?;
        let fields = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let current = self.snapshots.stat(&info.name).map_err(status)?;
        let wanted = Info { labels: labels(info.labels), ..current };
        let updated = blocking(&self.snapshots, move |s| s.update(wanted, &fields)).await?;
        Ok(Response::new(pb::UpdateSnapshotResponse { info: Some(pb_info(updated)) }))
    }

    type ListStream = tokio_stream::Iter<std::vec::IntoIter<Result<pb::ListSnapshotsResponse, Status>>>;

    async fn list(&self, req: Request<pb::ListSnapshotsRequest>) -> Result<Response<Self::ListStream>, Status> {
        let filters = req.into_inner().filters;
        let infos: Vec<pb::Info> =
            self.snapshots.list().into_iter().filter(|i| super::filter::matches_any(&filters, i)).map(pb_info).collect();
        let batches: Vec<Result<pb::ListSnapshotsResponse, Status>> =
            infos.chunks(LIST_BATCH).map(|c| Ok(pb::ListSnapshotsResponse { info: c.to_vec() })).collect();
        Ok(Response::new(tokio_stream::iter(batches)))
    }

    async fn usage(&self, req: Request<pb::UsageRequest>) -> Result<Response<pb::UsageResponse>, Status> {
        let key = req.into_inner().key;
        let u = blocking(&self.snapshots, move |s| s.usage(&key)).await?;
        Ok(Response::new(pb::UsageResponse { size: u.size as i64, inodes: u.inodes as i64 }))
    }

    async fn cleanup(&self, _: Request<pb::CleanupRequest>) -> Result<Response<()>, Status> {
        let removed = blocking(&self.snapshots, |s| s.cleanup()).await?;
        tracing::info!(removed, "snapshot cleanup");
        Ok(Response::new(()))
    }
}

/// The snapshotter, opened and bound to its socket, ready to serve.
pub struct Bound {
    snapshots: Arc<Snapshots>,
    listener: tokio::net::UnixListener,
    socket: PathBuf,
}

/// Opens the snapshots under `root` (lazy layers from `source`) and binds the unix socket `socket` (a stale socket file left
/// by a killed node is replaced), so that errors show before the node reports itself ready.
pub fn bind(root: &Path, socket: &Path, source: Option<super::remote::Source>) -> Result<Bound, Error> {
    let snapshots = Snapshots::open(root, source)
        .map_err(|e| Error::io(format!("opening snapshots at {}", root.display()), std::io::Error::other(e.to_string())))?;
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    }
    let _ = std::fs::remove_file(socket);
    let listener = tokio::net::UnixListener::bind(socket).map_err(|e| Error::io(format!("binding {}", socket.display()), e))?;
    tracing::info!(socket = %socket.display(), root = %root.display(), snapshots = snapshots.list().len(), "snapshotter listening");
    Ok(Bound { snapshots: Arc::new(snapshots), listener, socket: socket.to_path_buf() })
}

impl Bound {
    /// Serves the Snapshots API until `cancel`; removes the socket file at the end.
    pub async fn serve(self, cancel: CancellationToken) -> Result<(), Error> {
        let s = self.snapshots.clone();
        tokio::task::spawn_blocking(move || s.remount());
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(self.listener);
        let result = tonic::transport::Server::builder()
            .add_service(SnapshotsServer::new(Service { snapshots: self.snapshots }))
            .serve_with_incoming_shutdown(incoming, cancel.cancelled())
            .await
            .map_err(|e| Error::io(format!("serving {}", self.socket.display()), std::io::Error::other(e.to_string())));
        let _ = std::fs::remove_file(&self.socket);
        result
    }
}
