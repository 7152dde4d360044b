//! Snapshots and their metadata, with containerd's semantics: an *active* snapshot is writable and
//! becomes *committed* (under a new name) when containerd has unpacked a layer into it; a *view* is
//! read-only; a snapshot's parent must be committed, and a snapshot with children cannot go.
//!
//! Layout under the root: `metadata.json` (every snapshot: id, name, parent, kind, times, labels,
//! size once committed), rewritten atomically (temp file, fsync, rename) on every change, and
//! `snapshots/<id>/fs` (the snapshot's files; the overlay upper dir) and `snapshots/<id>/work`
//! (overlay's work dir, active snapshots only).
//!
//! Crash safety: directories are created before the metadata names them and removed after it
//! stopped naming them, so after a crash the metadata never names a missing directory; orphan
//! directories are what [`Snapshots::cleanup`] removes.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::mounts::{self, Mount};
use super::remote::{Source, TARGET_LABEL};
use crate::fuse::Mounted;
use crate::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    View,
    Active,
    Committed,
}

/// One snapshot's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Info {
    pub name: String,
    #[serde(default)]
    pub parent: Option<String>,
    pub kind: Kind,
    pub created: SystemTime,
    pub updated: SystemTime,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Disk use of a snapshot's own files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub size: u64,
    pub inodes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    id: u64,
    info: Info,
    /// Measured at commit; active snapshots are measured when asked.
    #[serde(default)]
    usage: Option<Usage>,
    /// A lazy layer: `fs` is its FUSE mount.
    #[serde(default)]
    remote: Option<p2p_node::layers::LayerRecord>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct State {
    next_id: u64,
    snapshots: BTreeMap<String, Record>,
}

/// What went wrong, in containerd's terms (the service maps these to gRPC codes).
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("snapshot {0} does not exist")]
    NotFound(String),
    #[error("snapshot {0} already exists")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error(transparent)]
    Io(#[from] Error),
}

pub struct Snapshots {
    root: PathBuf,
    state: Mutex<State>,
    /// Where lazy layers come from; `None`: every layer is unpacked by containerd.
    source: Option<Source>,
    /// The FUSE mounts of lazy layers, by snapshot id.
    mounted: Mutex<std::collections::HashMap<u64, Mounted>>,
}

fn io(what: impl Into<String>, e: std::io::Error) -> MetaError {
    MetaError::Io(Error::io(what, e))
}

impl Snapshots {
    /// Opens (or creates) the snapshot store at `root`; with a `source`, lazy layers are mounted
    /// (again, after a restart) through FUSE.
    pub fn open(root: &Path, source: Option<Source>) -> Result<Snapshots, MetaError> {
        fs::create_dir_all(root.join("snapshots")).map_err(|e| io(format!("creating {}", root.display()), e))?;
        let path = root.join("metadata.json");
        let state = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| MetaError::Io(Error::malformed("snapshot metadata", format!("{}: {e}", path.display()))))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(io(format!("reading {}", path.display()), e)),
        };
        Ok(Snapshots { root: root.to_path_buf(), state: Mutex::new(state), source, mounted: Mutex::default() })
    }

    /// Mounts the lazy layers again (after a restart, their old FUSE mounts are dead). Blocking;
    /// reads each layer's TOC through the mirror, so it runs once the mirror serves.
    pub fn remount(&self) {
        let Some(source) = &self.source else { return };
        let state = self.lock();
        for r in state.snapshots.values() {
            let Some(layer) = &r.remote else { continue };
            let dir = self.dir(r.id);
            detach(&dir.join("fs"));
            match source.mount(layer, &dir) {
                Ok(m) => {
                    self.mounted.lock().unwrap_or_else(|p| p.into_inner()).insert(r.id, m);
                }
                Err((_, e)) => tracing::warn!(snapshot = %r.info.name, error = %e, "cannot mount a lazy layer again"),
            }
        }
    }

    /// For a layer that can be loaded lazily: creates the committed snapshot containerd would make
    /// of it (see [`Source::layer_for`]) as a FUSE mount and returns `AlreadyExists`, so containerd
    /// skips unpacking the layer. `None` when the
    /// layer is not lazy or cannot be mounted (containerd then unpacks it).
    fn prepare_remote(&self, parent: Option<&str>, labels: &BTreeMap<String, String>) -> Option<MetaError> {
        let source = self.source.as_ref()?;
        let (name, layer) = match source.layer_for(labels)? {
            Ok(found) => found,
            Err(why) => {
                source.stats.fell_back(why);
                tracing::info!(snapshot = ?labels.get(TARGET_LABEL), reason = why.as_str(), "not a lazy layer: containerd unpacks it");
                return None;
            }
        };
        let mut state = self.lock();
        if state.snapshots.contains_key(&name) {
            return Some(MetaError::AlreadyExists(name));
        }
        let id = state.next_id;
        let dir = self.dir(id);
        if let Err(e) = fs::create_dir_all(dir.join("fs")) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot create a lazy snapshot; unpacking instead");
            return None;
        }
        let mounted = match source.mount(&layer, &dir) {
            Ok(m) => m,
            Err((why, e)) => {
                source.stats.fell_back(why);
                tracing::warn!(layer = %layer.digest, error = %e, reason = why.as_str(), "cannot mount the layer lazily; unpacking it instead");
                let _ = fs::remove_dir_all(&dir);
                return None;
            }
        };
        let now = SystemTime::now();
        let info = Info {
            name: name.clone(),
            parent: parent.map(str::to_string),
            kind: Kind::Committed,
            created: now,
            updated: now,
            labels: labels.clone(),
        };
        if let Err(e) = self.add(&mut state, Record { id, info, usage: Some(Usage::default()), remote: Some(layer.clone()) }) {
            drop(mounted);
            let _ = fs::remove_dir_all(&dir);
            return Some(e);
        }
        self.mounted.lock().unwrap_or_else(|p| p.into_inner()).insert(id, mounted);
        tracing::info!(snapshot = %name, layer = %layer.digest, "mounted a lazy layer");
        Some(MetaError::AlreadyExists(name))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn dir(&self, id: u64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string())
    }

    fn save(&self, state: &State) -> Result<(), MetaError> {
        let path = self.root.join("metadata.json");
        let tmp = self.root.join("metadata.json.tmp");
        let bytes = serde_json::to_vec(state).map_err(|e| MetaError::Io(Error::malformed("snapshot metadata", e.to_string())))?;
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            fs::File::open(&self.root)?.sync_all()
        };
        write().map_err(|e| io(format!("writing {}", path.display()), e))
    }

    /// Adds a new snapshot (its id is `state.next_id`) and saves the metadata; on failure nothing
    /// is added.
    fn add(&self, state: &mut State, record: Record) -> Result<(), MetaError> {
        let name = record.info.name.clone();
        state.next_id = record.id + 1;
        state.snapshots.insert(name.clone(), record);
        if let Err(e) = self.save(state) {
            state.snapshots.remove(&name);
            return Err(e);
        }
        Ok(())
    }

    /// The `fs` dirs of `parent` and its ancestors, nearest first.
    fn lower_dirs(&self, state: &State, parent: Option<&str>) -> Result<Vec<PathBuf>, MetaError> {
        let mut dirs = Vec::new();
        let mut next = parent.map(str::to_string);
        while let Some(name) = next {
            let r = state.snapshots.get(&name).ok_or_else(|| MetaError::NotFound(name.clone()))?;
            dirs.push(self.dir(r.id).join("fs"));
            next = r.info.parent.clone();
            if dirs.len() > state.snapshots.len() {
                return Err(MetaError::FailedPrecondition(format!("the parents of {name} form a loop")));
            }
        }
        Ok(dirs)
    }

    fn mounts_of(&self, state: &State, r: &Record) -> Result<Vec<Mount>, MetaError> {
        let dir = self.dir(r.id);
        let lowers = self.lower_dirs(state, r.info.parent.as_deref())?;
        Ok(match r.info.kind {
            Kind::Active => mounts::active(&dir.join("fs"), &dir.join("work"), &lowers),
            // A view shows its parents (its own dir, empty, when it has none).
            Kind::View if !lowers.is_empty() => mounts::read_only(&lowers),
            Kind::View | Kind::Committed => mounts::read_only(&[vec![dir.join("fs")], lowers].concat()),
        })
    }

    /// Creates an active (writable) snapshot or a view on `parent`; returns its mounts.
    pub fn prepare(&self, key: &str, parent: Option<&str>, labels: BTreeMap<String, String>, kind: Kind) -> Result<Vec<Mount>, MetaError> {
        if key.is_empty() {
            return Err(MetaError::InvalidArgument("a snapshot key must not be empty".into()));
        }
        if kind == Kind::Active {
            if let Some(answer) = self.prepare_remote(parent, &labels) {
                return Err(answer);
            }
        }
        let mut state = self.lock();
        if state.snapshots.contains_key(key) {
            return Err(MetaError::AlreadyExists(key.to_string()));
        }
        if let Some(p) = parent {
            match state.snapshots.get(p) {
                None => return Err(MetaError::NotFound(p.to_string())),
                Some(r) if r.info.kind != Kind::Committed => {
                    return Err(MetaError::InvalidArgument(format!("parent {p} is not a committed snapshot")))
                }
                Some(_) => {}
            }
        }
        let id = state.next_id;
        let dir = self.dir(id);
        fs::create_dir_all(dir.join("fs")).map_err(|e| io(format!("creating {}", dir.display()), e))?;
        if kind == Kind::Active {
            fs::create_dir_all(dir.join("work")).map_err(|e| io(format!("creating {}", dir.display()), e))?;
        }
        let now = SystemTime::now();
        let info = Info { name: key.to_string(), parent: parent.map(str::to_string), kind, created: now, updated: now, labels };
        self.add(&mut state, Record { id, info, usage: None, remote: None })?;
        let r = &state.snapshots[key];
        self.mounts_of(&state, r)
    }

    /// The mounts of snapshot `key`.
    pub fn mounts(&self, key: &str) -> Result<Vec<Mount>, MetaError> {
        let state = self.lock();
        let r = state.snapshots.get(key).ok_or_else(|| MetaError::NotFound(key.to_string()))?;
        self.mounts_of(&state, r)
    }

    /// Turns active snapshot `key` into committed snapshot `name`.
    pub fn commit(&self, name: &str, key: &str, labels: BTreeMap<String, String>) -> Result<(), MetaError> {
        let mut state = self.lock();
        if state.snapshots.contains_key(name) {
            return Err(MetaError::AlreadyExists(name.to_string()));
        }
        let r = state.snapshots.get(key).ok_or_else(|| MetaError::NotFound(key.to_string()))?;
        if r.info.kind != Kind::Active {
            return Err(MetaError::FailedPrecondition(format!("snapshot {key} is not active; only active snapshots can be committed")));
        }
        let usage = measure(&self.dir(r.id).join("fs"))?;
        let mut r = state.snapshots.remove(key).ok_or_else(|| MetaError::NotFound(key.to_string()))?;
        let old = r.clone();
        r.info.name = name.to_string();
        r.info.kind = Kind::Committed;
        r.info.updated = SystemTime::now();
        r.info.labels.extend(labels);
        r.usage = Some(usage);
        let id = r.id;
        state.snapshots.insert(name.to_string(), r);
        if let Err(e) = self.save(&state) {
            state.snapshots.remove(name);
            state.snapshots.insert(key.to_string(), old);
            return Err(e);
        }
        let _ = fs::remove_dir_all(self.dir(id).join("work"));
        Ok(())
    }

    /// Removes snapshot `key`, which must have no children.
    pub fn remove(&self, key: &str) -> Result<(), MetaError> {
        let mut state = self.lock();
        if !state.snapshots.contains_key(key) {
            return Err(MetaError::NotFound(key.to_string()));
        }
        if let Some(child) = state.snapshots.values().find(|r| r.info.parent.as_deref() == Some(key)) {
            return Err(MetaError::FailedPrecondition(format!("snapshot {key} has a child, {}", child.info.name)));
        }
        let r = state.snapshots.remove(key).ok_or_else(|| MetaError::NotFound(key.to_string()))?;
        if let Err(e) = self.save(&state) {
            state.snapshots.insert(key.to_string(), r);
            return Err(e);
        }
        drop(state);
        let dir = self.dir(r.id);
        if let Some(m) = self.mounted.lock().unwrap_or_else(|p| p.into_inner()).remove(&r.id) {
            drop(m); // unmounts
        }
        if let Err(e) = fs::remove_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a snapshot's files; cleanup will retry");
        }
        Ok(())
    }

    pub fn stat(&self, key: &str) -> Result<Info, MetaError> {
        self.lock().snapshots.get(key).map(|r| r.info.clone()).ok_or_else(|| MetaError::NotFound(key.to_string()))
    }

    /// Updates the labels of `info.name`: all of them (`fields` empty or naming `labels`), or the
    /// `labels.<key>` named; other fields are immutable.
    pub fn update(&self, info: Info, fields: &[String]) -> Result<Info, MetaError> {
        let mut state = self.lock();
        let r = state.snapshots.get_mut(&info.name).ok_or_else(|| MetaError::NotFound(info.name.clone()))?;
        let old = r.info.clone();
        if fields.is_empty() || fields.iter().any(|f| f == "labels") {
            r.info.labels = info.labels;
        } else {
            for f in fields {
                let Some(label) = f.strip_prefix("labels.") else {
                    return Err(MetaError::InvalidArgument(format!("cannot update {f}: only labels are mutable")));
                };
                match info.labels.get(label) {
                    Some(v) => r.info.labels.insert(label.to_string(), v.clone()),
                    None => r.info.labels.remove(label),
                };
            }
        }
        r.info.updated = SystemTime::now();
        let updated = r.info.clone();
        if let Err(e) = self.save(&state) {
            if let Some(r) = state.snapshots.get_mut(&old.name) {
                r.info = old;
            }
            return Err(e);
        }
        Ok(updated)
    }

    /// Every snapshot.
    pub fn list(&self) -> Vec<Info> {
        self.lock().snapshots.values().map(|r| r.info.clone()).collect()
    }

    /// Disk use of the snapshot's own files (measured now for active ones).
    pub fn usage(&self, key: &str) -> Result<Usage, MetaError> {
        let (id, usage) = {
            let state = self.lock();
            let r = state.snapshots.get(key).ok_or_else(|| MetaError::NotFound(key.to_string()))?;
            (r.id, r.usage)
        };
        match usage {
            Some(u) => Ok(u),
            None => measure(&self.dir(id).join("fs")),
        }
    }

    /// Removes snapshot directories the metadata does not name (left by crashes or failed
    /// removals). Returns how many went.
    pub fn cleanup(&self) -> Result<usize, MetaError> {
        let state = self.lock();
        let known: std::collections::HashSet<String> = state.snapshots.values().map(|r| r.id.to_string()).collect();
        let dir = self.root.join("snapshots");
        let mut removed = 0;
        for entry in fs::read_dir(&dir).map_err(|e| io(format!("listing {}", dir.display()), e))? {
            let entry = entry.map_err(|e| io(format!("listing {}", dir.display()), e))?;
            let name = entry.file_name().to_string_lossy().to_string();
            if !known.contains(&name) {
                fs::remove_dir_all(entry.path()).map_err(|e| io(format!("removing {}", entry.path().display()), e))?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// Detaches whatever is mounted at `path` (a FUSE mount whose daemon died), ignoring errors.
fn detach(path: &Path) {
    let _ = std::process::Command::new("umount").arg("-l").arg(path).stderr(std::process::Stdio::null()).status();
}

/// Bytes (in 512-byte blocks actually used) and inodes under `dir`, not following links.
fn measure(dir: &Path) -> Result<Usage, MetaError> {
    use std::os::unix::fs::MetadataExt;
    let mut usage = Usage::default();
    let mut stack = vec![dir.to_path_buf()];
    let mut seen = std::collections::HashSet::new();
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).map_err(|e| io(format!("listing {}", d.display()), e))? {
            let entry = entry.map_err(|e| io(format!("listing {}", d.display()), e))?;
            let meta = entry.metadata().map_err(|e| io(format!("stat {}", entry.path().display()), e))?;
            if seen.insert((meta.dev(), meta.ino())) {
                usage.inodes += 1;
                usage.size += meta.blocks() * 512;
            }
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok(usage)
}

#[cfg(test)]
mod tests;
