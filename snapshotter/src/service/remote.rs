//! Remote (lazy) layers: when containerd prepares the snapshot of a layer whose blob the mirror
//! indexed (`p2p_node::layers`) and whose annotations make it lazy (zstd:chunked or eStargz), the
//! snapshot is created committed at once, its files a FUSE mount of the layer, and containerd is
//! told it already exists — so it neither downloads nor unpacks that layer. Bytes are read with
//! Range requests from the node's own mirror, so they come from its store, its peers or the
//! origin like any other blob. Any failure (no record, not lazy, a TOC that fails validation)
//! falls back to containerd's normal unpack, and says why in the log.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use p2p_node::layers::{Fallback, LayerRecord, LazyStats};
use p2p_node::store::Store;
use p2p_node::Digest;

use crate::blob::ReadAt;
use crate::fuse::{self, Mounted};
use crate::layer::LazyLayer;
use crate::Error;

/// The label containerd puts on a layer's Prepare: the name the snapshot will be committed as.
pub const TARGET_LABEL: &str = "containerd.io/snapshot.ref";
const TIMEOUT: Duration = Duration::from_secs(60);

/// Where lazy layers' bytes come from.
#[derive(Clone)]
pub struct Source {
    pub store: Store,
    /// The node's mirror (`--registry-listen`).
    pub mirror: SocketAddr,
    /// Background prefetch of mounted layers, bytes per second (0: no cap); `None`: off.
    pub prefetch_rate: Option<u64>,
    /// What the lazy layers do, and why layers were unpacked instead (the mirror reports it).
    pub stats: Arc<LazyStats>,
}

impl Source {
    /// The lazy layer behind the snapshot containerd is preparing, and the name to commit it as:
    /// the `containerd.io/snapshot.ref` label, which pulls that unpack as they fetch set (CRI's,
    /// `ferry pull`). `None` without the label: an ordinary snapshot (`ctr image pull` in 1.6
    /// fetches everything, then unpacks without it). `Some(Err)`: why this layer is unpacked.
    pub fn layer_for(&self, labels: &BTreeMap<String, String>) -> Option<Result<(String, LayerRecord), Fallback>> {
        let target = labels.get(TARGET_LABEL)?.clone();
        let Some(record) = target.parse::<Digest>().ok().and_then(|chain_id| p2p_node::layers::lookup(&self.store, &chain_id)) else {
            return Some(Err(Fallback::NotIndexed));
        };
        let lazy = record
            .annotations
            .keys()
            .any(|k| k.starts_with("io.github.containers.zstd-chunked.") || k == crate::estargz::TOC_DIGEST_ANNOTATION);
        Some(if lazy { Ok((target, record)) } else { Err(Fallback::NotLazy) })
    }

    /// Opens the layer (its TOC, verified against the annotation) and mounts it at `dir/fs`.
    pub fn mount(&self, record: &LayerRecord, dir: &Path) -> Result<Mounted, (Fallback, Error)> {
        let blob = mirror_blob(self.mirror, record.clone());
        let layer = match LazyLayer::open(blob.as_ref(), &record.annotations) {
            Ok(Some(layer)) => layer,
            Ok(None) => return Err((Fallback::NotLazy, Error::NotLazy(format!("layer {}", record.digest)))),
            Err(e) => return Err((Fallback::BadToc, e)),
        };
        let opts = fuse::MountOptions { prefetch: self.prefetch_rate, stats: self.stats.clone(), recorder: None };
        fuse::mount(Arc::new(layer), blob, dir.join("cache"), &dir.join("fs"), opts).map_err(|e| (Fallback::Mount, e))
    }
}

/// The layer blob `record` names, read with Range requests from the node's mirror at `mirror`.
/// Reads take bytes from peers before the mirror verified the whole blob (each chunk is checked
/// against the TOC anyway); a chunk that fails is read again from verified bytes only.
pub(crate) fn mirror_blob(mirror: SocketAddr, record: LayerRecord) -> Arc<dyn ReadAt> {
    let verified = Box::new(MirrorBlob { mirror, record: record.clone(), verified: None });
    Arc::new(MirrorBlob { mirror, record, verified: Some(verified) })
}

struct MirrorBlob {
    mirror: SocketAddr,
    record: LayerRecord,
    /// This blob read without the client-verifies header; `None` on that one itself.
    verified: Option<Box<MirrorBlob>>,
}

impl ReadAt for MirrorBlob {
    fn size(&self) -> u64 {
        self.record.size
    }

    fn verified(&self) -> Option<&dyn ReadAt> {
        self.verified.as_deref().map(|v| v as &dyn ReadAt)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let r = &self.record;
        let end = offset + buf.len() as u64 - 1;
        let mut stream = TcpStream::connect_timeout(&self.mirror, TIMEOUT)?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        let verifies = if self.verified.is_some() { "X-Ferry-Client-Verifies: chunks\r\n" } else { "" };
        write!(
            stream,
            "GET /v2/{}/blobs/{}?ns={} HTTP/1.1\r\nHost: {}\r\nRange: bytes={offset}-{end}\r\n{verifies}Connection: close\r\n\r\n",
            r.repo, r.digest, r.registry, self.mirror
        )?;
        let mut reader = BufReader::new(stream);
        let mut status = String::new();
        reader.read_line(&mut status)?;
        if status.split_whitespace().nth(1) != Some("206") {
            return Err(std::io::Error::other(format!("the mirror answered {:?} for bytes {offset}-{end} of {}", status.trim(), r.digest)));
        }
        let mut len: Option<u64> = None;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 || line == "\r\n" {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().ok();
                }
            }
        }
        if len != Some(buf.len() as u64) {
            return Err(std::io::Error::other(format!("the mirror sent {len:?} bytes for a {}-byte range", buf.len())));
        }
        reader.read_exact(buf)
    }
}
