//! The content store: blobs keyed by digest, complete or partly present.
//!
//! Layout under the root:
//! - `blobs/sha256/<hex>`: complete blobs, each verified against its digest before it got there;
//! - `partial/<hex>.data` + `partial/<hex>.map`: a sparse file and its persisted piece bitmap;
//! - `tmp/`: files being written, wiped at open.
//!
//! Invariants: only a rename after a successful whole-blob sha256 puts a file in `blobs/`; after
//! a kill -9, [`Store::open`] keeps only bitmap-proven pieces of partial blobs; eviction (LRU,
//! between a high and a low watermark) never removes a blob that a [`BlobReader`] or a fetch holds.
//! The books (`State`) and the names under `blobs/` and `partial/` change together, under the
//! state lock: a file is renamed into `blobs/`, or set aside for removal, only while the lock is
//! held, so a blob evicted and at once fetched again never loses its new file to the eviction.

mod bitmap;
mod partial;

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

pub use bitmap::Bitmap;
pub use partial::{Partial, RangeState};

use crate::digest::Digest;
use crate::Error;

/// The unit of presence, transfer and (later) sharing: 1 MiB.
pub const PIECE_SIZE: u64 = 1 << 20;

/// How much the store may hold, and when eviction starts and stops.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Total bytes of blobs (complete plus the full size of partial ones) the store may hold.
    pub capacity: u64,
    /// Eviction starts above `capacity * high_watermark`...
    pub high_watermark: f64,
    /// ...and stops at or below `capacity * low_watermark`.
    pub low_watermark: f64,
}

impl Default for StoreConfig {
    fn default() -> StoreConfig {
        StoreConfig { capacity: u64::MAX, high_watermark: 0.9, low_watermark: 0.8 }
    }
}

/// What the store knows of one digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobState {
    Absent,
    Partial { size: u64, present: u64 },
    Complete { size: u64 },
}

/// Totals for `ferry status`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    pub capacity: u64,
    pub used: u64,
    pub complete_blobs: u64,
    pub complete_bytes: u64,
    pub partial_blobs: u64,
    pub partial_bytes_present: u64,
    pub evicted_blobs: u64,
    pub evicted_bytes: u64,
}

struct Complete {
    size: u64,
    last_access: SystemTime,
    leases: usize,
    /// Tells this entry from a later one of the same digest, so a lease goes back to the entry
    /// it was taken on.
    id: u64,
}

impl Complete {
    fn new(size: u64, last_access: SystemTime) -> Complete {
        Complete { size, last_access, leases: 0, id: unique() }
    }
}

#[derive(Default)]
struct State {
    complete: HashMap<Digest, Complete>,
    partial: HashMap<Digest, Arc<Partial>>,
    partial_access: HashMap<Digest, SystemTime>,
    used: u64,
    evicted_blobs: u64,
    evicted_bytes: u64,
}

pub(crate) struct Inner {
    root: PathBuf,
    config: StoreConfig,
    state: Mutex<State>,
}

/// A cloneable handle on one store directory.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.inner.root.display())
    }
}

/// A complete blob opened for reading; while it lives, the blob is not evicted.
#[derive(Debug)]
pub struct BlobReader {
    file: File,
    size: u64,
    digest: Digest,
    /// The [`Complete`] entry holding the lease.
    entry: u64,
    store: Arc<Inner>,
}

impl BlobReader {
    pub fn size(&self) -> u64 {
        self.size
    }
    /// Fills `buf` from `offset`. Blocking.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), Error> {
        self.file.read_exact_at(buf, offset).map_err(|e| Error::io(format!("reading {} at {offset}", self.digest), e))
    }
}

impl Drop for BlobReader {
    fn drop(&mut self) {
        self.store.release(&self.digest, self.entry);
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Inner({})", self.root.display())
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(d.hex())
    }
    fn data_path(&self, d: &Digest) -> PathBuf {
        self.root.join("partial").join(format!("{}.data", d.hex()))
    }
    fn map_path(&self, d: &Digest) -> PathBuf {
        self.root.join("partial").join(format!("{}.map", d.hex()))
    }

    /// Gives back a lease taken on entry `id` of `d` (not on a later entry of the same digest).
    fn release(&self, d: &Digest, id: u64) {
        if let Some(c) = self.lock().complete.get_mut(d).filter(|c| c.id == id) {
            c.leases = c.leases.saturating_sub(1);
        }
    }

    /// Writes `data` to a fsynced temp file, to be renamed to `path` (named in errors).
    fn write_temp(&self, path: &Path, data: &[u8]) -> Result<PathBuf, Error> {
        let tmp = self.root.join("tmp").join(format!("{}.{}", std::process::id(), unique()));
        let io = |what: &str, e| Error::io(format!("{what} {}", path.display()), e);
        let written = File::create(&tmp).map_err(|e| io("creating temp file for", e)).and_then(|mut f| {
            f.write_all(data).map_err(|e| io("writing", e))?;
            f.sync_all().map_err(|e| io("syncing", e))
        });
        match written {
            Ok(()) => Ok(tmp),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// Writes `data` to `path` through a temp file, fsync and rename, then fsyncs the folder.
    fn write_atomic(&self, path: &Path, data: &[u8]) -> Result<(), Error> {
        let tmp = self.write_temp(path, data)?;
        if let Err(e) = fs::rename(&tmp, path) {
            let _ = fs::remove_file(&tmp);
            return Err(Error::io(format!("renaming into {}", path.display()), e));
        }
        sync_dir(path)
    }

    /// Takes `paths` out of the store's names: renames them into `tmp/` (wiped at open) and
    /// returns where they went, for the caller to unlink once the lock is released (unlinking a
    /// large file takes a while). Called with the state lock held (`_locked`), so the names
    /// change together with the books: a file of a digest never disappears after a new blob or
    /// partial of the same digest took its name.
    fn set_aside(&self, _locked: &State, paths: Vec<PathBuf>, aside: &mut Vec<PathBuf>) {
        for path in paths {
            let to = self.root.join("tmp").join(format!("{}.{}.gone", std::process::id(), unique()));
            match fs::rename(&path, &to) {
                Ok(()) => aside.push(to),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(_) => {
                    let _ = fs::remove_file(&path);
                }
            }
        }
    }

    /// Moves a verified partial into `blobs/` and accounts it as complete.
    fn commit_partial(&self, partial: &Partial, file: &File) -> Result<(), Error> {
        let d = partial.digest();
        let dest = self.blob_path(&d);
        file.sync_all().map_err(|e| Error::io(format!("syncing {d}"), e))?;
        let mut st = self.lock();
        fs::rename(self.data_path(&d), &dest).map_err(|e| Error::io(format!("committing {d}"), e))?;
        st.partial.remove(&d);
        st.partial_access.remove(&d);
        match st.complete.entry(d) {
            // `put` stored the same bytes meanwhile: keep its entry and leases, count them once.
            std::collections::hash_map::Entry::Occupied(_) => st.used = st.used.saturating_sub(partial.size()),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(Complete::new(partial.size(), SystemTime::now()));
            }
        }
        drop(st);
        sync_dir(&dest)?;
        // The piece map is only removed once the blob is durable in `blobs/`, and not if a new
        // partial of the same digest began meanwhile (it has its own map).
        let st = self.lock();
        if !st.partial.contains_key(&d) {
            let _ = fs::remove_file(self.map_path(&d));
        }
        drop(st);
        tracing::debug!(digest = %d, size = partial.size(), "blob verified and complete");
        self.evict_if_needed();
        Ok(())
    }

    /// Forgets `partial` and its files (not a newer partial of the same digest).
    fn drop_partial(&self, partial: &Partial) {
        let d = partial.digest();
        let mut aside = Vec::new();
        let mut st = self.lock();
        if st.partial.get(&d).is_some_and(|p| std::ptr::eq(Arc::as_ptr(p), partial)) {
            st.partial.remove(&d);
            st.partial_access.remove(&d);
            st.used = st.used.saturating_sub(partial.size());
            self.set_aside(&st, vec![self.data_path(&d), self.map_path(&d)], &mut aside);
        }
        drop(st);
        aside.iter().for_each(|f| drop(fs::remove_file(f)));
    }

    /// Evicts least-recently-used unheld blobs from above the high to the low watermark.
    fn evict_if_needed(&self) {
        let cap = self.config.capacity as f64;
        let mut st = self.lock();
        if (st.used as f64) <= cap * self.config.high_watermark {
            return;
        }
        let mut victims: Vec<(SystemTime, Digest, bool)> = st
            .complete
            .iter()
            .filter(|(_, c)| c.leases == 0)
            .map(|(d, c)| (c.last_access, *d, true))
            .chain(
                st.partial
                    .iter()
                    .filter(|(_, p)| Arc::strong_count(p) == 1 && p.is_idle())
                    .map(|(d, _)| (st.partial_access.get(d).copied().unwrap_or(SystemTime::UNIX_EPOCH), *d, false)),
            )
            .collect();
        victims.sort();
        let low = cap * self.config.low_watermark;
        let mut removed = Vec::new();
        let mut aside = Vec::new();
        for (_, d, complete) in victims {
            if (st.used as f64) <= low {
                break;
            }
            let size = if complete {
                st.complete.remove(&d).map(|c| c.size)
            } else {
                st.partial_access.remove(&d);
                st.partial.remove(&d).map(|p| p.size())
            };
            let size = size.unwrap_or(0);
            st.used = st.used.saturating_sub(size);
            st.evicted_blobs += 1;
            st.evicted_bytes += size;
            let files = if complete { vec![self.blob_path(&d)] } else { vec![self.data_path(&d), self.map_path(&d)] };
            self.set_aside(&st, files, &mut aside);
            removed.push((d, size));
        }
        if (st.used as f64) > low {
            tracing::warn!(used = st.used, capacity = self.config.capacity, "store above its low watermark: everything left is in use");
        }
        drop(st);
        aside.iter().for_each(|f| drop(fs::remove_file(f)));
        for (d, size) in removed {
            tracing::info!(digest = %d, size, "evicted");
        }
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn sync_dir(path: &Path) -> Result<(), Error> {
    let dir = path.parent().unwrap_or(Path::new("."));
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(format!("syncing folder {}", dir.display()), e))
}

impl Store {
    /// Opens (creating if needed) the store at `root`, recovering from any earlier crash: temp
    /// files are deleted, partial blobs keep only the pieces their bitmap proves.
    pub fn open(root: impl Into<PathBuf>, config: StoreConfig) -> Result<Store, Error> {
        let root = root.into();
        for sub in ["blobs/sha256", "partial", "tmp"] {
            fs::create_dir_all(root.join(sub)).map_err(|e| Error::io(format!("creating {}", root.join(sub).display()), e))?;
        }
        let _ = fs::remove_dir_all(root.join("tmp"));
        fs::create_dir_all(root.join("tmp")).map_err(|e| Error::io(format!("creating {}/tmp", root.display()), e))?;
        let inner = Arc::new(Inner { root, config, state: Mutex::new(State::default()) });
        let store = Store { inner };
        store.recover()?;
        store.inner.evict_if_needed();
        Ok(store)
    }

    fn recover(&self) -> Result<(), Error> {
        let inner = &self.inner;
        let mut st = inner.lock();
        for (name, meta) in read_dir(&inner.root.join("blobs/sha256"))? {
            match format!("sha256:{name}").parse::<Digest>() {
                Ok(d) => {
                    st.used += meta.len();
                    let last_access = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                    st.complete.insert(d, Complete::new(meta.len(), last_access));
                }
                Err(_) => tracing::warn!(file = %name, "ignoring a foreign file in the blob folder"),
            }
        }
        for (name, meta) in read_dir(&inner.root.join("partial"))? {
            let Some(hex) = name.strip_suffix(".data") else { continue };
            let d = format!("sha256:{hex}").parse::<Digest>().ok();
            let recovered = d.filter(|d| !st.complete.contains_key(d)).and_then(|d| {
                let map = fs::read(inner.map_path(&d)).ok()?;
                let (size, present) = Bitmap::decode(&map, PIECE_SIZE)?;
                (meta.len() == size).then_some(())?;
                let file = OpenOptions::new().read(true).write(true).open(inner.data_path(&d)).ok()?;
                Some((d, Partial::new(d, size, file, present, Arc::downgrade(inner))))
            });
            match recovered {
                Some((d, p)) => {
                    tracing::info!(digest = %d, present = p.present_bytes(), size = p.size(), "resuming partial blob");
                    st.used += p.size();
                    st.partial_access.insert(d, meta.modified().unwrap_or(SystemTime::UNIX_EPOCH));
                    st.partial.insert(d, Arc::new(p));
                }
                None => {
                    tracing::info!(file = %name, "discarding a partial blob with no valid piece map");
                    let _ = fs::remove_file(inner.root.join("partial").join(&name));
                    let _ = fs::remove_file(inner.root.join("partial").join(format!("{hex}.map")));
                }
            }
        }
        // Killed after the last piece but before the commit: verify now (commit or discard).
        let full: Vec<Arc<Partial>> = st.partial.values().filter(|p| p.all_present()).cloned().collect();
        drop(st);
        for p in full {
            if let Err(e) = p.verify_present() {
                tracing::warn!(digest = %p.digest(), error = %e, "discarded a recovered blob");
            }
        }
        // Maps whose data file is gone prove nothing.
        for (name, _) in read_dir(&inner.root.join("partial"))? {
            if let Some(hex) = name.strip_suffix(".map") {
                if !inner.root.join("partial").join(format!("{hex}.data")).exists() {
                    let _ = fs::remove_file(inner.root.join("partial").join(&name));
                }
            }
        }
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    pub fn state(&self, d: &Digest) -> BlobState {
        let st = self.inner.lock();
        if let Some(c) = st.complete.get(d) {
            BlobState::Complete { size: c.size }
        } else if let Some(p) = st.partial.get(d) {
            let p = p.clone();
            drop(st);
            BlobState::Partial { size: p.size(), present: p.present_bytes() }
        } else {
            BlobState::Absent
        }
    }

    /// Opens a complete blob for reading, or `None` when it is not (or no longer) complete.
    pub fn open_blob(&self, d: &Digest) -> Result<Option<BlobReader>, Error> {
        let entry = {
            let mut st = self.inner.lock();
            let Some(c) = st.complete.get_mut(d) else { return Ok(None) };
            c.leases += 1;
            c.last_access = SystemTime::now();
            c.id
        };
        let reader = |file: File| BlobReader { file, size: 0, digest: *d, entry, store: self.inner.clone() };
        match File::open(self.inner.blob_path(d)) {
            Ok(file) => {
                let mut r = reader(file);
                r.size = r.file.metadata().map_err(|e| Error::io(format!("reading size of {d}"), e))?.len();
                Ok(Some(r))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Removed behind the store's back: forget it.
                let mut st = self.inner.lock();
                if st.complete.get(d).is_some_and(|c| c.id == entry) {
                    tracing::warn!(digest = %d, "a complete blob's file is gone; forgetting it");
                    let size = st.complete.remove(d).map_or(0, |c| c.size);
                    st.used = st.used.saturating_sub(size);
                }
                Ok(None)
            }
            Err(e) => {
                self.inner.release(d, entry);
                Err(Error::io(format!("opening {d}"), e))
            }
        }
    }

    /// The partial blob for `d`, created with `size` if the store has no trace of it.
    /// `Ok(None)` when `d` is already complete. A zero-size blob is committed at once.
    pub fn begin(&self, d: &Digest, size: u64) -> Result<Option<Arc<Partial>>, Error> {
        if size == 0 {
            self.put(d, &[])?;
            return Ok(None);
        }
        if size > self.inner.config.capacity {
            return Err(Error::TooLarge { digest: *d, size, limit: self.inner.config.capacity });
        }
        let mut st = self.inner.lock();
        if st.complete.contains_key(d) {
            return Ok(None);
        }
        if let Some(p) = st.partial.get(d) {
            if p.size() != size {
                return Err(Error::SizeConflict { digest: *d, known: p.size(), offered: size });
            }
            let p = p.clone();
            st.partial_access.insert(*d, SystemTime::now());
            return Ok(Some(p));
        }
        // A map left from an earlier life of this digest must not vouch for the new file.
        let _ = fs::remove_file(self.inner.map_path(d));
        let path = self.inner.data_path(d);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .and_then(|f| f.set_len(size).map(|()| f))
            .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
        let n = partial::piece_count(size);
        let p = Arc::new(Partial::new(*d, size, file, Bitmap::new(n), Arc::downgrade(&self.inner)));
        st.used += size;
        st.partial.insert(*d, p.clone());
        st.partial_access.insert(*d, SystemTime::now());
        drop(st);
        self.inner.evict_if_needed();
        Ok(Some(p))
    }

    /// The partial blob for `d`, if there is one. Asking for it counts as a use: of the partial
    /// blobs nobody holds, the least recently asked for is evicted first (a lazy layer read
    /// range by range is asked for at each read, so the layers being read go last).
    pub fn partial(&self, d: &Digest) -> Option<Arc<Partial>> {
        let mut st = self.inner.lock();
        let p = st.partial.get(d).cloned()?;
        st.partial_access.insert(*d, SystemTime::now());
        Some(p)
    }

    /// The blobs being filled now.
    pub fn partials(&self) -> Vec<Arc<Partial>> {
        self.inner.lock().partial.values().cloned().collect()
    }

    /// Stores a small blob held in memory (manifests, configs) after checking its digest.
    pub fn put(&self, d: &Digest, data: &[u8]) -> Result<(), Error> {
        let got = Digest::of(data);
        if got != *d {
            return Err(Error::DigestMismatch { expected: *d, got });
        }
        if self.inner.lock().complete.contains_key(d) {
            return Ok(());
        }
        let dest = self.inner.blob_path(d);
        let tmp = self.inner.write_temp(&dest, data)?;
        let mut st = self.inner.lock();
        if st.complete.contains_key(d) {
            drop(st);
            let _ = fs::remove_file(&tmp);
            return Ok(());
        }
        // Under the lock: the folder and the books change together.
        if let Err(e) = fs::rename(&tmp, &dest) {
            drop(st);
            let _ = fs::remove_file(&tmp);
            return Err(Error::io(format!("renaming into {}", dest.display()), e));
        }
        st.complete.insert(*d, Complete::new(data.len() as u64, SystemTime::now()));
        st.used += data.len() as u64;
        drop(st);
        sync_dir(&dest)?;
        self.inner.evict_if_needed();
        Ok(())
    }

    /// Reads a whole small blob (a manifest) into memory, refusing anything over `limit`.
    pub fn read_small(&self, d: &Digest, limit: u64) -> Result<Option<Vec<u8>>, Error> {
        let Some(r) = self.open_blob(d)? else { return Ok(None) };
        if r.size() > limit {
            return Err(Error::TooLarge { digest: *d, size: r.size(), limit });
        }
        let mut buf = vec![0; r.size() as usize];
        r.read_at(&mut buf, 0)?;
        Ok(Some(buf))
    }

    /// Which pieces of `d` this store can serve: the blob size and a bitmap (all set when complete).
    pub fn have_map(&self, d: &Digest) -> Option<(u64, Bitmap)> {
        match self.state(d) {
            BlobState::Complete { size } => {
                let mut map = Bitmap::new(partial::piece_count(size));
                (0..map.len()).for_each(|i| map.set(i, true));
                Some((size, map))
            }
            BlobState::Partial { size, .. } => self.partial(d).map(|p| (size, p.trusted_present())),
            BlobState::Absent => None,
        }
    }

    /// The bytes of piece `index` of `d`, if this store holds that piece. Blocking.
    pub fn read_piece(&self, d: &Digest, index: u32) -> Result<Option<Vec<u8>>, Error> {
        if let Some(r) = self.open_blob(d)? {
            let start = u64::from(index) * PIECE_SIZE;
            if start >= r.size() {
                return Ok(None);
            }
            let mut buf = vec![0; (r.size() - start).min(PIECE_SIZE) as usize];
            r.read_at(&mut buf, start)?;
            return Ok(Some(buf));
        }
        let Some(p) = self.partial(d) else { return Ok(None) };
        if index >= p.piece_count() || !p.trusted(index..index + 1) {
            return Ok(None);
        }
        let range = p.piece_range(index);
        let mut buf = vec![0; (range.end - range.start) as usize];
        p.read_at(&mut buf, range.start)?;
        Ok(Some(buf))
    }

    /// Atomically writes a small metadata file of another component (tag records) at `meta/<rel>`.
    pub fn write_meta(&self, rel: &str, data: &[u8]) -> Result<(), Error> {
        let path = self.meta_path(rel)?;
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        self.inner.write_atomic(&path, data)
    }

    /// Reads `meta/<rel>`, `None` when absent.
    pub fn read_meta(&self, rel: &str) -> Result<Option<Vec<u8>>, Error> {
        let path = self.meta_path(rel)?;
        match fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
        }
    }

    /// The files in `meta/<dir>`, as paths for [`Store::read_meta`] (`<dir>/<name>`), sorted;
    /// none when the folder is absent.
    pub fn list_meta(&self, dir: &str) -> Result<Vec<String>, Error> {
        let path = self.meta_path(dir)?;
        let entries = match fs::read_dir(&path) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(format!("listing {}", path.display()), e)),
        };
        let mut names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| format!("{dir}/{}", e.file_name().to_string_lossy()))
            .collect();
        names.sort();
        Ok(names)
    }

    pub fn remove_meta(&self, rel: &str) -> Result<(), Error> {
        match fs::remove_file(self.meta_path(rel)?) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(format!("removing meta/{rel}"), e)),
            _ => Ok(()),
        }
    }

    fn meta_path(&self, rel: &str) -> Result<PathBuf, Error> {
        let ok = !rel.is_empty() && rel.split('/').all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\0'));
        if !ok {
            return Err(Error::io(format!("metadata path {rel:?}"), std::io::Error::from(std::io::ErrorKind::InvalidInput)));
        }
        Ok(self.inner.root.join("meta").join(rel))
    }

    pub fn usage(&self) -> Usage {
        let st = self.inner.lock();
        let partials: Vec<_> = st.partial.values().cloned().collect();
        let mut u = Usage {
            capacity: self.inner.config.capacity,
            used: st.used,
            complete_blobs: st.complete.len() as u64,
            complete_bytes: st.complete.values().map(|c| c.size).sum(),
            partial_blobs: partials.len() as u64,
            partial_bytes_present: 0,
            evicted_blobs: st.evicted_blobs,
            evicted_bytes: st.evicted_bytes,
        };
        drop(st);
        u.partial_bytes_present = partials.iter().map(|p| p.present_bytes()).sum();
        u
    }

    /// Persists the bitmaps of all partial blobs (at shutdown).
    pub fn flush(&self) -> Result<(), Error> {
        let partials: Vec<_> = self.inner.lock().partial.values().cloned().collect();
        partials.iter().try_for_each(|p| p.persist())
    }
}

fn read_dir(dir: &Path) -> Result<Vec<(String, fs::Metadata)>, Error> {
    let entries = fs::read_dir(dir).map_err(|e| Error::io(format!("listing {}", dir.display()), e))?;
    Ok(entries
        .filter_map(|e| e.ok())
        .filter_map(|e| Some((e.file_name().into_string().ok()?, e.metadata().ok()?)))
        .filter(|(_, m)| m.is_file())
        .collect())
}

#[cfg(test)]
mod stress;
#[cfg(test)]
mod tests;
