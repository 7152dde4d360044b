//! A client of containerd's own gRPC API (its socket, one namespace, optionally one lease): the
//! calls `ferry pull` makes to put an image into containerd the way containerd's own pulls do,
//! with snapshots prepared under the labels remote snapshotters read.
//!
//! Invariants: every call carries the `containerd-namespace` header, and, once [`Containerd::lease`]
//! took one, the `containerd-lease` header, so nothing written is garbage-collected before the
//! image that refers to it exists. Content is always written with its expected digest and size:
//! containerd itself refuses bytes that do not match.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::Code;

use crate::service::api::{content, diff, images, introspection, leases, snapshots, types, version};
use crate::Error;

/// How long a pull's lease protects what it wrote if the pull dies without ending it.
const LEASE_EXPIRY: Duration = Duration::from_secs(3600);
/// Bytes per content write message (one round trip each).
const WRITE_BATCH: usize = 1 << 20;

/// One namespace of one containerd.
pub struct Containerd {
    channel: Channel,
    namespace: String,
    lease: Option<String>,
}

/// A plugin the daemon knows, as `ctr plugins ls` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plugin {
    /// `io.containerd.snapshotter.v1`, `io.containerd.grpc.v1`, …
    pub kind: String,
    pub id: String,
    /// Why it did not load; `None`: loaded.
    pub init_error: Option<String>,
}

impl Plugin {
    /// `ok`, `skip` (not for this host: a snapshotter whose filesystem is missing) or `error`,
    /// as `ctr plugins ls` says.
    pub fn status(&self) -> &'static str {
        match &self.init_error {
            None => "ok",
            Some(e) if e.contains("skip plugin") => "skip",
            Some(_) => "error",
        }
    }
}

/// What Prepare gave: mounts to unpack into, or a snapshot that is already there (a remote layer).
#[derive(Debug)]
pub enum Prepared {
    Mounts(Vec<types::Mount>),
    Exists,
}

impl Containerd {
    pub async fn connect(socket: &Path, namespace: &str) -> Result<Containerd, Error> {
        let channel = crate::service::channel(socket).await?;
        Ok(Containerd { channel, namespace: namespace.to_string(), lease: None })
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        if let Ok(v) = MetadataValue::try_from(self.namespace.as_str()) {
            r.metadata_mut().insert("containerd-namespace", v);
        }
        if let Some(Ok(v)) = self.lease.as_deref().map(MetadataValue::try_from) {
            r.metadata_mut().insert("containerd-lease", v);
        }
        r
    }

    /// Takes a lease (expiring after an hour, in case this process dies) for every later call.
    pub async fn lease(&mut self) -> Result<(), Error> {
        let now = SystemTime::now();
        let id = format!("ferry-pull-{}", now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos());
        let expire = humantime::format_rfc3339_seconds(now + LEASE_EXPIRY).to_string();
        let labels = [("containerd.io/gc.expire".to_string(), expire)].into();
        let mut client = leases::leases_client::LeasesClient::new(self.channel.clone());
        client.create(self.request(leases::CreateRequest { id: id.clone(), labels })).await.map_err(|s| Error::containerd("a lease", s))?;
        self.lease = Some(id);
        Ok(())
    }

    /// Ends the lease: from now on only what the image refers to is kept.
    pub async fn end_lease(&mut self) -> Result<(), Error> {
        let Some(id) = self.lease.take() else { return Ok(()) };
        let mut client = leases::leases_client::LeasesClient::new(self.channel.clone());
        client
            .delete(self.request(leases::DeleteRequest { id: id.clone(), sync: false }))
            .await
            .map_err(|s| Error::containerd(format!("ending lease {id}"), s))?;
        Ok(())
    }

    /// Writes `data` (the whole blob `desc`, in order) into the content store with `labels`;
    /// content already there only gets the labels.
    pub async fn write_content(
        &self,
        desc: &types::Descriptor,
        labels: HashMap<String, String>,
        mut data: impl futures_util::Stream<Item = Result<Bytes, Error>> + Unpin,
    ) -> Result<(), Error> {
        use futures_util::StreamExt;
        let what = || format!("writing {} into its content store", desc.digest);
        let (tx, rx) = mpsc::channel(1);
        let message =
            |action: content::WriteAction, offset: i64, data: Bytes, labels: HashMap<String, String>| content::WriteContentRequest {
                action: action as i32,
                r#ref: format!("ferry-pull-{}", desc.digest),
                total: desc.size,
                expected: desc.digest.clone(),
                offset,
                data: data.to_vec(),
                labels,
            };
        // The first message opens the write (and says whether the content is already there).
        let _ = tx.send(message(content::WriteAction::Stat, 0, Bytes::new(), HashMap::new())).await;
        let mut client = content::content_client::ContentClient::new(self.channel.clone());
        let opened = client.write(self.request(ReceiverStream::new(rx))).await;
        let mut responses = match opened {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == Code::AlreadyExists => return self.label_content(&desc.digest, labels).await,
            Err(s) => return Err(Error::containerd(what(), s)),
        };
        match responses.message().await {
            Ok(Some(_)) => {}
            Ok(None) => return Err(Error::containerd(what(), tonic::Status::unknown("the write stream ended"))),
            Err(s) if s.code() == Code::AlreadyExists => return self.label_content(&desc.digest, labels).await,
            Err(s) => return Err(Error::containerd(what(), s)),
        }
        // Always from offset zero: whatever an interrupted earlier write left is overwritten.
        let mut sent = 0i64;
        let mut batch = bytes::BytesMut::new();
        loop {
            let next = data.next().await.transpose()?;
            if let Some(chunk) = &next {
                batch.extend_from_slice(chunk);
            }
            if batch.len() >= WRITE_BATCH || (next.is_none() && !batch.is_empty()) {
                let chunk = batch.split().freeze();
                let len = chunk.len() as i64;
                tx.send(message(content::WriteAction::Write, sent, chunk, HashMap::new()))
                    .await
                    .map_err(|_| Error::containerd(what(), tonic::Status::unknown("the write stream closed")))?;
                responses.message().await.map_err(|s| Error::containerd(what(), s))?;
                sent += len;
            }
            if next.is_none() {
                break;
            }
        }
        tx.send(message(content::WriteAction::Commit, sent, Bytes::new(), labels))
            .await
            .map_err(|_| Error::containerd(what(), tonic::Status::unknown("the write stream closed")))?;
        match responses.message().await {
            Ok(Some(r)) if r.digest == desc.digest => Ok(()),
            Ok(Some(r)) => Err(Error::containerd(what(), tonic::Status::data_loss(format!("committed as {}", r.digest)))),
            Ok(None) => Err(Error::containerd(what(), tonic::Status::unknown("no answer to the commit"))),
            Err(s) if s.code() == Code::AlreadyExists => Ok(()),
            Err(s) => Err(Error::containerd(what(), s)),
        }
    }

    /// Whether the content store has `digest`.
    pub async fn has_content(&self, digest: &str) -> Result<bool, Error> {
        let mut client = content::content_client::ContentClient::new(self.channel.clone());
        match client.info(self.request(content::InfoRequest { digest: digest.to_string() })).await {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(Error::containerd(format!("looking up {digest}"), s)),
        }
    }

    async fn label_content(&self, digest: &str, labels: HashMap<String, String>) -> Result<(), Error> {
        if labels.is_empty() {
            return Ok(());
        }
        let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
        let info = content::Info { digest: digest.to_string(), size: 0, labels };
        let mut client = content::content_client::ContentClient::new(self.channel.clone());
        client
            .update(self.request(content::UpdateRequest { info: Some(info), update_mask: Some(content::FieldMask { paths }) }))
            .await
            .map_err(|s| Error::containerd(format!("labelling {digest}"), s))?;
        Ok(())
    }

    fn snapshots(&self) -> snapshots::snapshots_client::SnapshotsClient<Channel> {
        snapshots::snapshots_client::SnapshotsClient::new(self.channel.clone())
    }

    /// Whether `snapshotter` has the snapshot `key`.
    pub async fn has_snapshot(&self, snapshotter: &str, key: &str) -> Result<bool, Error> {
        let request = snapshots::StatSnapshotRequest { snapshotter: snapshotter.to_string(), key: key.to_string() };
        match self.snapshots().stat(self.request(request)).await {
            Ok(_) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(Error::containerd(format!("looking up snapshot {key}"), s)),
        }
    }

    pub async fn prepare(&self, snapshotter: &str, key: &str, parent: &str, labels: HashMap<String, String>) -> Result<Prepared, Error> {
        let request = snapshots::PrepareSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: key.to_string(),
            parent: parent.to_string(),
            labels,
        };
        match self.snapshots().prepare(self.request(request)).await {
            Ok(r) => Ok(Prepared::Mounts(r.into_inner().mounts)),
            Err(s) if s.code() == Code::AlreadyExists => Ok(Prepared::Exists),
            Err(s) => Err(Error::containerd(format!("preparing snapshot {key}"), s)),
        }
    }

    pub async fn commit(&self, snapshotter: &str, name: &str, key: &str) -> Result<(), Error> {
        let request = snapshots::CommitSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            name: name.to_string(),
            key: key.to_string(),
            labels: HashMap::new(),
        };
        match self.snapshots().commit(self.request(request)).await {
            Ok(_) => Ok(()),
            // Another pull committed the same layer meanwhile: it is there either way.
            Err(s) if s.code() == Code::AlreadyExists => self.remove(snapshotter, key).await,
            Err(s) => Err(Error::containerd(format!("committing snapshot {name}"), s)),
        }
    }

    pub async fn remove(&self, snapshotter: &str, key: &str) -> Result<(), Error> {
        let request = snapshots::RemoveSnapshotRequest { snapshotter: snapshotter.to_string(), key: key.to_string() };
        match self.snapshots().remove(self.request(request)).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(Error::containerd(format!("removing snapshot {key}"), s)),
        }
    }

    /// Unpacks the layer `desc` (already in the content store) onto `mounts`; returns the digest
    /// of what was applied (the layer's diff ID).
    pub async fn apply(&self, desc: &types::Descriptor, mounts: Vec<types::Mount>) -> Result<String, Error> {
        let mut client = diff::diff_client::DiffClient::new(self.channel.clone());
        let r = client
            .apply(self.request(diff::ApplyRequest { diff: Some(desc.clone()), mounts }))
            .await
            .map_err(|s| Error::containerd(format!("unpacking layer {}", desc.digest), s))?;
        Ok(r.into_inner().applied.map(|d| d.digest).unwrap_or_default())
    }

    /// Points the image `name` at `target`, creating it or moving it.
    /// The daemon's version, as `ctr version` shows the server's.
    pub async fn version(&self) -> Result<String, Error> {
        let mut client = version::version_client::VersionClient::new(self.channel.clone());
        let reply = client.version(self.request(())).await.map_err(|s| Error::containerd("asking containerd's version", s))?;
        Ok(reply.into_inner().version)
    }

    /// Every plugin the daemon knows, loaded or not.
    pub async fn plugins(&self) -> Result<Vec<Plugin>, Error> {
        let mut client = introspection::introspection_client::IntrospectionClient::new(self.channel.clone());
        let reply = client
            .plugins(self.request(introspection::PluginsRequest { filters: Vec::new() }))
            .await
            .map_err(|s| Error::containerd("listing containerd's plugins", s))?;
        Ok(reply
            .into_inner()
            .plugins
            .into_iter()
            .map(|p| Plugin { kind: p.r#type, id: p.id, init_error: p.init_err.map(|e| e.message) })
            .collect())
    }

    pub async fn set_image(&self, name: &str, target: &types::Descriptor) -> Result<(), Error> {
        let image = images::Image { name: name.to_string(), labels: HashMap::new(), target: Some(target.clone()) };
        let mut client = images::images_client::ImagesClient::new(self.channel.clone());
        match client.create(self.request(images::CreateImageRequest { image: Some(image.clone()) })).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => {
                client
                    .update(self.request(images::UpdateImageRequest { image: Some(image) }))
                    .await
                    .map_err(|s| Error::containerd(format!("updating image {name}"), s))?;
                Ok(())
            }
            Err(s) => Err(Error::containerd(format!("creating image {name}"), s)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Plugin;

    #[test]
    fn a_plugins_status_reads_as_ctr_shows_it() {
        let plugin = |init_error: Option<&str>| Plugin {
            kind: "io.containerd.snapshotter.v1".into(),
            id: "zfs".into(),
            init_error: init_error.map(Into::into),
        };
        assert_eq!(plugin(None).status(), "ok");
        assert_eq!(
            plugin(Some("path /var/lib/containerd/zfs must be a zfs filesystem to be used with the zfs snapshotter: skip plugin")).status(),
            "skip"
        );
        assert_eq!(plugin(Some("failed to create CRI service: invalid config")).status(), "error");
    }
}
