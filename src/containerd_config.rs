//! `ferry containerd-config`: the hosts.toml that points containerd at this node for each
//! allow-listed registry, and the `proxy_plugins` snippet for ferry's snapshotter when one is
//! configured (printed, never written: containerd's own config.toml stays the operator's).
//!
//! `--apply DIR` writes the hosts.toml files into containerd's certs.d folder; `--restore DIR`
//! takes them out again. Both are idempotent, and lose nothing:
//! - the files Ferry writes start with [`MARK`], so they can be told from the operator's;
//! - an operator's file that `--apply` replaces is kept beside it as [`ORIGINAL`] (once: a
//!   second apply replaces only Ferry's own file) and put back, byte for byte, by `--restore`;
//! - `--restore` removes a Ferry file that replaced nothing, and leaves every other file alone.
//!
//! `ferry node` with `registry.containerd_hosts` does the same around its life: apply once the
//! mirror listens, restore at a clean stop (SIGTERM, SIGINT). While no node runs, containerd
//! pulls from the registries themselves; a node killed without a stop leaves its files, which
//! still work, since each keeps the registry as fallback.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::cli::ContainerdConfigArgs;
use crate::config::{self, FileConfig};

/// The first line of every hosts.toml Ferry writes.
pub const MARK: &str = "# Written by `ferry containerd-config`";
/// The operator's hosts.toml, kept while Ferry's replaces it.
pub const ORIGINAL: &str = "hosts.toml.ferry-orig";

pub fn run(args: ContainerdConfigArgs) -> Result<()> {
    if let Some(dir) = &args.restore {
        for (path, done) in restore(dir, None)? {
            println!("{done} {}", path.display());
        }
        return Ok(());
    }
    let file = config::load(&args.flags)?;
    let files = hosts_files(&file)?;
    for (host, text) in &files {
        match &args.apply {
            None => println!("# {host}/hosts.toml\n{text}"),
            Some(dir) => {
                let (path, done) = apply(dir, host, text)?;
                println!("{done} {}", path.display());
            }
        }
    }
    if args.apply.is_none() {
        println!("# containerd 1.6+ (CRI): set config_path = \"/etc/containerd/certs.d\" under");
        println!("# [plugins.\"io.containerd.grpc.v1.cri\".registry] and write the files above with --apply /etc/containerd/certs.d");
    }
    if let Some(socket) = &file.snapshotter.socket {
        print!("{}", proxy_plugin_toml(socket));
    }
    Ok(())
}

/// `(registry host, hosts.toml text)` for every upstream of the config.
pub fn hosts_files(file: &FileConfig) -> Result<Vec<(String, String)>> {
    let upstreams = file.upstream_settings()?;
    if upstreams.is_empty() {
        bail!("no upstream registry configured: add --upstream HOST[=URL] or a config file");
    }
    let mirror = format!("http://{}", file.registry.listen);
    Ok(upstreams.iter().map(|u| (u.host.clone(), hosts_toml(&u.host, u.url.as_str(), &mirror))).collect())
}

/// The part of containerd's config.toml that loads ferry's snapshotter as `--snapshotter ferry`.
pub fn proxy_plugin_toml(socket: &Path) -> String {
    format!(
        "# /etc/containerd/config.toml (add, then restart containerd): ferry's snapshotter\n\
         [proxy_plugins.ferry]\n\
         \x20 type = \"snapshot\"\n\
         \x20 address = \"{}\"\n",
        socket.display()
    )
}

/// The hosts.toml for one registry: the mirror first, the registry itself as fallback.
pub fn hosts_toml(host: &str, upstream_url: &str, mirror: &str) -> String {
    format!(
        "{MARK}: pull {host} through the local ferry node.\n\
         # `ferry containerd-config --restore` removes it (putting back what it replaced).\n\
         server = \"{}\"\n\
         \n\
         [host.\"{mirror}\"]\n\
         \x20 capabilities = [\"pull\", \"resolve\"]\n",
        upstream_url.trim_end_matches('/')
    )
}

/// What [`apply`] did to one registry's hosts.toml.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// There was none, or an earlier one of Ferry's.
    Wrote,
    /// The operator's file was moved to [`ORIGINAL`].
    Replaced,
    /// It already said this.
    Unchanged,
}

impl std::fmt::Display for Applied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Applied::Wrote => "wrote",
            Applied::Replaced => "wrote (the previous file is kept as hosts.toml.ferry-orig)",
            Applied::Unchanged => "unchanged",
        })
    }
}

/// What [`restore`] did to one registry's folder.
#[derive(Debug, PartialEq, Eq)]
pub enum Restored {
    /// [`ORIGINAL`] is hosts.toml again.
    PutBack,
    /// Ferry's file replaced nothing: removed.
    Removed,
    /// Someone replaced Ferry's file after it kept [`ORIGINAL`]: both are left as they are.
    Conflict,
}

impl std::fmt::Display for Restored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Restored::PutBack => "put back",
            Restored::Removed => "removed",
            Restored::Conflict => "left (not Ferry's; the file it replaced is still beside it as hosts.toml.ferry-orig)",
        })
    }
}

fn is_ferrys(bytes: &[u8]) -> bool {
    bytes.starts_with(MARK.as_bytes())
}

/// Writes DIR/<host>/hosts.toml, keeping an operator's file that was there as [`ORIGINAL`]. At
/// every moment a hosts.toml is there, the operator's or Ferry's: the operator's is kept by a
/// second link, then Ferry's is renamed over it.
pub fn apply(dir: &Path, host: &str, text: &str) -> Result<(PathBuf, Applied)> {
    let folder = dir.join(host);
    std::fs::create_dir_all(&folder).with_context(|| format!("creating {}", folder.display()))?;
    let (path, original) = (folder.join("hosts.toml"), folder.join(ORIGINAL));
    let (done, keep) = match std::fs::read(&path) {
        Ok(old) if old == text.as_bytes() => return Ok((path, Applied::Unchanged)),
        Ok(old) if is_ferrys(&old) => (Applied::Wrote, false),
        Ok(old) => match std::fs::read(&original) {
            // Kept already (an apply stopped before it wrote Ferry's file).
            Ok(kept) if kept == old => (Applied::Replaced, false),
            Ok(_) => bail!(
                "{} is not Ferry's, and {} already holds the file Ferry replaced earlier: keep one of them \
                 (as hosts.toml, removing the other), then apply again",
                path.display(),
                original.display()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Applied::Replaced, true),
            Err(e) => return Err(e).with_context(|| format!("reading {}", original.display())),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Applied::Wrote, false),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let tmp = folder.join(".hosts.toml.tmp");
    let written = std::fs::write(&tmp, text)
        .with_context(|| format!("writing {}", tmp.display()))
        .and_then(|()| match keep {
            true => std::fs::hard_link(&path, &original).with_context(|| format!("keeping {} as {}", path.display(), original.display())),
            false => Ok(()),
        })
        .and_then(|()| std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display())));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map(|()| (path, done))
}

/// Takes Ferry's hosts.toml files out of DIR: of every registry, or of `only` these.
pub fn restore(dir: &Path, only: Option<&[String]>) -> Result<Vec<(PathBuf, Restored)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
    };
    let mut folders: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()).collect();
    folders.sort();
    let mut done = Vec::new();
    for folder in folders {
        let host = folder.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if only.is_some_and(|hosts| !hosts.contains(&host)) {
            continue;
        }
        if let Some(what) = restore_one(&folder)? {
            done.push((folder.join("hosts.toml"), what));
        }
    }
    Ok(done)
}

fn restore_one(folder: &Path) -> Result<Option<Restored>> {
    let (path, original) = (folder.join("hosts.toml"), folder.join(ORIGINAL));
    let ours = match std::fs::read(&path) {
        Ok(bytes) => is_ferrys(&bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if original.exists() {
        if !ours && path.exists() {
            return Ok(Some(Restored::Conflict));
        }
        std::fs::rename(&original, &path).with_context(|| format!("putting {} back as {}", original.display(), path.display()))?;
        return Ok(Some(Restored::PutBack));
    }
    if !ours {
        return Ok(None);
    }
    std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    // The folder goes too when Ferry's file was all it held.
    let _ = std::fs::remove_dir(folder);
    Ok(Some(Restored::Removed))
}

#[cfg(test)]
mod tests;
