//! The FUSE filesystem of a lazy layer: [`tree`] turns the TOC into inodes (with overlay
//! whiteouts), [`fs`] answers the kernel, [`cache`] keeps verified chunks on disk. [`mount`]
//! mounts one layer read-only; dropping the returned session unmounts it.

pub mod cache;
pub mod fs;
pub mod tree;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{BackgroundSession, MountOption};

use crate::blob::ReadAt;
use crate::layer::LazyLayer;
use crate::Error;

/// A mounted layer; unmounted when dropped.
pub struct Mounted {
    pub session: BackgroundSession,
    pub stats: Arc<fs::Stats>,
}

/// Mounts `layer` (read from `blob`, chunks cached in `cache_dir`) read-only at `mountpoint`.
pub fn mount(layer: Arc<LazyLayer>, blob: Arc<dyn ReadAt>, cache_dir: PathBuf, mountpoint: &Path) -> Result<Mounted, Error> {
    let fs = fs::LayerFs::new(layer, blob, cache_dir).map_err(|e| Error::io("opening the chunk cache", e))?;
    let stats = fs.stats.clone();
    let options = [
        MountOption::RO,
        MountOption::FSName("ferry".into()),
        MountOption::Subtype("ferry".into()),
        MountOption::AllowOther,
        MountOption::DefaultPermissions,
    ];
    let session = fuser::spawn_mount2(fs, mountpoint, &options)
        .map_err(|e| Error::io(format!("mounting a lazy layer at {}", mountpoint.display()), e))?;
    Ok(Mounted { session, stats })
}
