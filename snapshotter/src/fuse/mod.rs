//! The FUSE filesystem of a lazy layer: [`tree`] turns the TOC into inodes (with overlay
//! whiteouts), [`fs`] answers the kernel, [`source`] gives the bytes (from [`cache`], which keeps
//! verified chunks and whole files on disk, or fetched), [`prefetch`] fills the cache in the
//! background, [`opens`] decides which opens pass through to local files. [`mount`] mounts one
//! layer read-only; dropping the returned [`Mounted`] stops the prefetch and unmounts it.

pub mod cache;
pub mod fs;
pub mod opens;
pub mod prefetch;
pub mod recorder;
pub mod source;
pub mod tree;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use fuser::{BackgroundSession, Config, MountOption, SessionACL};

use p2p_node::layers::LazyStats;

use crate::blob::ReadAt;
use crate::layer::LazyLayer;
use crate::Error;

/// A mounted layer; unmounted when dropped.
pub struct Mounted {
    pub session: BackgroundSession,
    pub stats: Arc<LazyStats>,
    /// Set when the background prefetch has cached every chunk.
    pub prefetch_done: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.stats.mounted.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How a layer is mounted.
#[derive(Debug, Default, Clone)]
pub struct MountOptions {
    /// A background thread fetches the whole layer, startup chunks first, at most this many
    /// bytes per second (0: no cap); `None`: only what is read is fetched.
    pub prefetch: Option<u64>,
    /// Counts what the layer does.
    pub stats: Arc<LazyStats>,
    /// Records reads, this layer numbered as given.
    pub recorder: Option<(Arc<recorder::Recorder>, usize)>,
}

/// Mounts `layer` (read from `blob`, chunks cached in `cache_dir`) read-only at `mountpoint`.
pub fn mount(
    layer: Arc<LazyLayer>,
    blob: Arc<dyn ReadAt>,
    cache_dir: PathBuf,
    mountpoint: &Path,
    opts: MountOptions,
) -> Result<Mounted, Error> {
    let MountOptions { prefetch, stats, recorder } = opts;
    let cache = cache::LayerCache::open(cache_dir, stats.clone()).map_err(|e| Error::io("opening the layer cache", e))?;
    let source = Arc::new(source::Source::new(layer, blob, cache, stats.clone()));
    let fs = fs::LayerFs::new(source.clone(), recorder);
    let stop = Arc::new(AtomicBool::new(false));
    let prefetch_done = Arc::new(AtomicBool::new(false));
    let job = prefetch.map(|rate| prefetch::Prefetch { source, done: prefetch_done.clone(), rate, stop: stop.clone() });
    let mut config = Config::default();
    config.mount_options =
        vec![MountOption::RO, MountOption::FSName("ferry".into()), MountOption::Subtype("ferry".into()), MountOption::DefaultPermissions];
    config.acl = SessionACL::All;
    let session = fuser::spawn_mount(fs, mountpoint, &config)
        .map_err(|e| Error::io(format!("mounting a lazy layer at {}", mountpoint.display()), e))?;
    raise_readahead(mountpoint);
    if let Some(job) = job {
        std::thread::spawn(move || job.run());
    }
    stats.mounted.fetch_add(1, Ordering::Relaxed);
    Ok(Mounted { session, stats, prefetch_done, stop })
}

/// Sequential reads of a layer are large (model weights, libraries): let the kernel read ahead
/// 1 MiB at a time on this mount (FUSE mounts start at 128 KiB). Best effort.
fn raise_readahead(mountpoint: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(mountpoint) else { return };
    let dev = meta.dev();
    let (major, minor) = (((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff), (dev & 0xff) | ((dev >> 12) & !0xff));
    let path = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    if let Err(e) = std::fs::write(&path, b"1024") {
        tracing::debug!(%path, error = %e, "cannot raise readahead");
    }
}
