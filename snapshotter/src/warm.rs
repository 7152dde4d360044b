//! Prewarming: an image fetched onto this node before any container asks for it, through the
//! node's own mirror (so from the store, then peers, then the origin).
//!
//! Order of work: the image's manifest and config; then, for every lazy layer, the chunks it
//! marks for startup (zstd:chunked prefetch marks, the eStargz landmark), each read and checked
//! against the layer's TOC; then every layer whole, range by range. A layer already complete in
//! the store costs nothing. The ranges are paced to the order's rate, and the mirror fetches (from
//! peers or the origin) only the ranges it is asked for, so the rate is what the order takes of
//! the node's link: a whole-blob GET would have the mirror fetch at full speed however slowly it
//! is read.
//!
//! Invariants: what is fetched lands in the node's store only through the mirror, which verifies
//! it (whole blobs by digest; pieces a peer gave stay untrusted in the store until then), and
//! startup chunks are checked here against the TOC as they are read.

use std::collections::{BTreeMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use p2p_node::layers::LayerRecord;
use p2p_node::prewarm::warm::{Warm, WarmProgress};
use p2p_node::store::{BlobState, Store};

use crate::blob::ReadAt;
use crate::convert::oci::Descriptor;
use crate::layer::LazyLayer;
use crate::mirror::{ImageRef, Mirror};
use crate::service::remote::mirror_blob;
use crate::toc::Chunk;
use crate::Error;

/// Warms images through the mirror at `mirror`, checking `store` for what is already here.
pub struct Warmer {
    pub mirror: SocketAddr,
    pub store: Store,
}

impl Warm for Warmer {
    fn warm<'a>(
        &'a self,
        image: &'a str,
        rate: Option<u64>,
        progress: &'a WarmProgress,
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move { self.run(image, rate, progress).await.map_err(|e| e.to_string()) })
    }
}

/// Bytes per range of a layer read whole: one segment, the unit peers and the origin are asked
/// for.
const STEP: u64 = 4 << 20;
/// How long the store may take to verify a layer after its last range.
const VERIFY_WITHIN: Duration = Duration::from_secs(60);

/// The record the mirror needs to read `layer` of `image` by ranges.
fn record(image: &ImageRef, layer: &Descriptor) -> LayerRecord {
    LayerRecord {
        digest: layer.digest,
        size: layer.size,
        media_type: layer.media_type.clone(),
        annotations: layer.annotations.clone(),
        registry: image.host.clone(),
        repo: image.repo.clone(),
    }
}

/// Keeps a byte rate: after `spend(n)`, waits until the bytes so far fit the rate.
struct Pacer {
    rate: Option<u64>,
    start: Instant,
    bytes: u64,
}

impl Pacer {
    async fn spend(&mut self, n: u64) {
        self.bytes += n;
        if let Some(rate) = self.rate.filter(|r| *r > 0) {
            let due = Duration::from_secs_f64(self.bytes as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(self.start.elapsed()) {
                tokio::time::sleep(wait).await;
            }
        }
    }
}

impl Warmer {
    async fn run(&self, image: &str, rate: Option<u64>, progress: &WarmProgress) -> Result<(), Error> {
        let image = ImageRef::parse(image)?;
        let mirror = Mirror::new(&format!("http://{}", self.mirror), &image)?;
        let resolved = mirror.resolve(&image).await?;
        let layers = &resolved.layers;
        progress.total_bytes.store(resolved.config_desc.size + layers.iter().map(|l| l.size).sum::<u64>(), Relaxed);
        progress.done_bytes.store(resolved.config_desc.size, Relaxed);
        let mut pacer = Pacer { rate, start: Instant::now(), bytes: 0 };

        let mut startup = vec![0u64; layers.len()];
        for (i, layer) in layers.iter().enumerate() {
            if self.complete(layer) {
                continue;
            }
            let Some((lazy, blob, groups)) = startup_chunks(self.mirror, record(&image, layer)).await? else { continue };
            for group in groups {
                let n = group[0].blob_range.end - group[0].blob_range.start;
                let (lazy, blob) = (lazy.clone(), blob.clone());
                // Read and checked against the TOC: bytes peers gave are verified here.
                blocking("reading startup chunks", move || lazy.read_chunks(blob.as_ref(), &group.iter().collect::<Vec<_>>()).map(drop))
                    .await?;
                startup[i] += n;
                progress.priority_bytes.fetch_add(n, Relaxed);
                progress.done_bytes.fetch_add(n, Relaxed);
                pacer.spend(n).await;
            }
        }
        progress.layers.store(true, Relaxed);

        for (i, layer) in layers.iter().enumerate() {
            if self.complete(layer) {
                progress.done_bytes.fetch_add(layer.size - startup[i], Relaxed);
                continue;
            }
            let blob = mirror_blob(self.mirror, record(&image, layer));
            let mut read = 0u64;
            while read < layer.size {
                let (offset, n) = (read, STEP.min(layer.size - read));
                let blob = blob.clone();
                blocking("reading a layer", move || {
                    let mut buf = vec![0u8; n as usize];
                    blob.read_at(&mut buf, offset).map_err(|e| Error::Mirror { what: "a layer range".into(), why: e.to_string() })
                })
                .await?;
                // The startup bytes of this layer were counted already.
                let counted = read.max(startup[i]);
                read += n;
                progress.done_bytes.fetch_add(read.max(startup[i]) - counted, Relaxed);
                pacer.spend(n).await;
            }
            self.verified(layer).await?;
        }
        Ok(())
    }

    /// Waits for the store to verify a layer whose every range was read (it checks the digest
    /// of the whole blob once the last piece is in).
    async fn verified(&self, layer: &Descriptor) -> Result<(), Error> {
        let deadline = Instant::now() + VERIFY_WITHIN;
        loop {
            match self.store.state(&layer.digest) {
                BlobState::Complete { .. } => return Ok(()),
                BlobState::Partial { .. } if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
                state => {
                    let why = format!("every range was read, but the store holds it as {state:?}: its bytes did not verify");
                    return Err(Error::Mirror { what: format!("layer {}", layer.digest), why });
                }
            }
        }
    }

    fn complete(&self, layer: &Descriptor) -> bool {
        matches!(self.store.state(&layer.digest), BlobState::Complete { .. })
    }
}

/// A lazy layer's startup chunks, grouped by the compressed range they share (small files
/// share a zstd frame), in blob order, each chunk once; with the layer and its blob to read them
/// from. `None` for a layer that is not lazy.
type Startup = (Arc<LazyLayer>, Arc<dyn ReadAt>, Vec<Vec<Chunk>>);

async fn startup_chunks(mirror: SocketAddr, record: LayerRecord) -> Result<Option<Startup>, Error> {
    blocking("reading a layer's table of contents", move || {
        let blob = mirror_blob(mirror, record.clone());
        let Some(layer) = LazyLayer::open(blob.as_ref(), &record.annotations)? else { return Ok(None) };
        let mut groups: BTreeMap<(u64, u64), Vec<Chunk>> = BTreeMap::new();
        let mut seen = HashSet::new();
        for (_, c) in layer.toc.chunks().filter(|(_, c)| c.prefetch) {
            if seen.insert(c.digest) {
                groups.entry((c.blob_range.start, c.blob_range.end)).or_default().push(c.clone());
            }
        }
        Ok(Some((Arc::new(layer), blob, groups.into_values().collect())))
    })
    .await
}

async fn blocking<T: Send + 'static>(what: &str, f: impl FnOnce() -> Result<T, Error> + Send + 'static) -> Result<T, Error> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::Mirror { what: what.to_string(), why: e.to_string() })?
}
