//! `ferry containerd-config`: the hosts.toml that points containerd at this node for each
//! allow-listed registry (`--apply DIR` writes them into containerd's certs.d folder), and the
//! `proxy_plugins` snippet for ferry's snapshotter when one is configured (printed, never written:
//! containerd's own config.toml stays the operator's).

use std::path::Path;

use anyhow::{Context, Result};

use crate::cli::ContainerdConfigArgs;
use crate::config;

pub fn run(args: ContainerdConfigArgs) -> Result<()> {
    let file = config::load(&args.flags)?;
    let upstreams = file.upstream_settings()?;
    if upstreams.is_empty() {
        anyhow::bail!("no upstream registry configured: add --upstream HOST[=URL] or a config file");
    }
    let mirror = format!("http://{}", file.registry.listen);
    for u in &upstreams {
        let text = hosts_toml(&u.host, u.url.as_str(), &mirror);
        match &args.apply {
            None => println!("# {}/hosts.toml\n{text}", u.host),
            Some(dir) => {
                let path = apply(dir, &u.host, &text)?;
                println!("wrote {}", path.display());
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
        "# Written by `ferry containerd-config`: pull {host} through the local ferry node.\n\
         server = \"{}\"\n\
         \n\
         [host.\"{mirror}\"]\n\
         \x20 capabilities = [\"pull\", \"resolve\"]\n",
        upstream_url.trim_end_matches('/')
    )
}

/// Writes DIR/<host>/hosts.toml, keeping an existing different file as `hosts.toml.bak-<unix time>`.
fn apply(dir: &Path, host: &str, text: &str) -> Result<std::path::PathBuf> {
    let folder = dir.join(host);
    std::fs::create_dir_all(&folder).with_context(|| format!("creating {}", folder.display()))?;
    let path = folder.join("hosts.toml");
    match std::fs::read_to_string(&path) {
        Ok(old) if old == text => return Ok(path),
        Ok(_) => {
            let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let backup = folder.join(format!("hosts.toml.bak-{secs}"));
            std::fs::rename(&path, &backup).with_context(|| format!("backing up {} to {}", path.display(), backup.display()))?;
            eprintln!("kept the previous {} as {}", path.display(), backup.display());
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let tmp = folder.join(".hosts.toml.tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_keeps_a_backup_of_a_different_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = hosts_toml("reg.local", "http://127.0.0.1:5000/", "http://127.0.0.1:5050");
        assert!(text.contains("server = \"http://127.0.0.1:5000\""));
        assert!(text.contains("[host.\"http://127.0.0.1:5050\"]"));
        let folder = dir.path().join("reg.local");
        std::fs::create_dir_all(&folder).expect("mkdir");
        std::fs::write(folder.join("hosts.toml"), "server = \"https://old\"\n").expect("old file");
        apply(dir.path(), "reg.local", &text).expect("apply");
        assert_eq!(std::fs::read_to_string(folder.join("hosts.toml")).expect("read"), text);
        let backups: Vec<_> = std::fs::read_dir(&folder)
            .expect("ls")
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with("hosts.toml.bak-"))
            .collect();
        assert_eq!(backups.len(), 1);
        assert_eq!(std::fs::read_to_string(backups[0].path()).expect("read"), "server = \"https://old\"\n");
        apply(dir.path(), "reg.local", &text).expect("again");
        assert_eq!(std::fs::read_dir(&folder).expect("ls").count(), 2, "an identical file is left alone, no new backup");
    }
}
