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
/// A range read the mirror failed for a passing reason (refused or dropped connection, a 5xx
/// answer: the node's own fetch failed) is tried again after each of these; a container sees
/// the error only after the last.
const RETRY_AFTER: [Duration; 2] = [Duration::from_millis(200), Duration::from_secs(1)];

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
        let mut waits = RETRY_AFTER.iter();
        loop {
            match self.read_once(buf, offset) {
                Err(e) if passing(&e) => match waits.next() {
                    Some(wait) => {
                        tracing::debug!(digest = %self.record.digest, offset, error = %e, "range read failed; trying again");
                        std::thread::sleep(*wait);
                    }
                    None => return Err(e),
                },
                done => return done,
            }
        }
    }
}

/// What the mirror answered instead of 206 Partial Content.
#[derive(Debug)]
struct Refused {
    status: u16,
    line: String,
    range: String,
    digest: Digest,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the mirror answered {:?} for bytes {} of {}", self.line, self.range, self.digest)
    }
}

impl std::error::Error for Refused {}

/// Whether a failed read may well work when tried again.
fn passing(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    match e.get_ref().and_then(|inner| inner.downcast_ref::<Refused>()) {
        Some(refused) => refused.status >= 500,
        None => matches!(e.kind(), ConnectionRefused | ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof),
    }
}

impl MirrorBlob {
    fn read_once(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
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
        if reader.read_line(&mut status)? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the mirror closed the connection without an answer"));
        }
        let code = status.split_whitespace().nth(1).and_then(|c| c.parse::<u16>().ok()).unwrap_or(0);
        if code != 206 {
            let refused = Refused { status: code, line: status.trim().to_string(), range: format!("{offset}-{end}"), digest: r.digest };
            return Err(std::io::Error::other(refused));
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

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    use super::*;

    /// A mirror that gives each connection the next of `answers` (`None`: close at once), and
    /// counts them.
    fn mirror(answers: Vec<Option<&'static str>>) -> (SocketAddr, std::thread::JoinHandle<usize>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let thread = std::thread::spawn(move || {
            let mut served = 0;
            for answer in answers {
                let (stream, _) = listener.accept().expect("accept");
                served += 1;
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                let mut line = String::new();
                while reader.read_line(&mut line).expect("read") > 2 {
                    line.clear();
                }
                if let Some(text) = answer {
                    (&stream).write_all(text.as_bytes()).expect("answer");
                }
            }
            served
        });
        (addr, thread)
    }

    fn blob(mirror: SocketAddr) -> MirrorBlob {
        let record = LayerRecord {
            digest: Digest::of(b"a layer"),
            size: 100,
            media_type: "application/vnd.oci.image.layer.v1.tar+zstd".into(),
            annotations: BTreeMap::new(),
            registry: "registry.local".into(),
            repo: "test/lazy".into(),
        };
        MirrorBlob { mirror, record, verified: None }
    }

    const BYTES: &str = "HTTP/1.1 206 Partial Content\r\nContent-Length: 4\r\n\r\nabcd";

    #[test]
    fn a_passing_failure_is_tried_again_and_a_refusal_is_not() {
        let (addr, served) = mirror(vec![Some("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"), None, Some(BYTES)]);
        let mut buf = [0u8; 4];
        blob(addr).read_at(&mut buf, 10).expect("read after two failures");
        assert_eq!(&buf, b"abcd");
        assert_eq!(served.join().expect("mirror"), 3);

        let (addr, served) = mirror(vec![Some("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")]);
        let err = blob(addr).read_at(&mut buf, 10).expect_err("not there");
        assert!(err.to_string().contains("404"), "{err}");
        assert_eq!(served.join().expect("mirror"), 1, "a 404 is not asked again");

        let (addr, served) = mirror(vec![Some("HTTP/1.1 502 Bad Gateway\r\n\r\n"); 3]);
        let err = blob(addr).read_at(&mut buf, 10).expect_err("still failing");
        assert!(err.to_string().contains("502"), "{err}");
        assert_eq!(served.join().expect("mirror"), 3, "tried three times in all");
    }
}
