//! `ferry profile IMAGE -- CMD`: what a workload reads at startup, as the `--prioritize` file
//! `ferry convert` takes. The image's lazy layers are mounted afresh in this process (FUSE, no
//! prefetch, reads recorded per chunk in first-access order — mmap page faults included, as the
//! page cache of a fresh mount is empty), stacked with overlayfs, and CMD runs on that rootfs
//! through containerd (`ctr run --rootfs`, with the image's environment and working directory).
//! When CMD exits (or the timeout kills it), the recorded chunks become `PATH OFFSET LENGTH`
//! lines, consecutive chunks of a file merged.
//!
//! Every layer must be lazy (zstd:chunked or eStargz): profile an image `ferry convert` wrote,
//! then convert the original again with the profile.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use p2p_node::layers::LayerRecord;

use crate::fuse::recorder::{Access, Recorder};
use crate::fuse::{self, MountOptions, Mounted};
use crate::layer::LazyLayer;
use crate::mirror::{ImageRef, Mirror};
use crate::Error;

#[derive(Debug, Clone)]
pub struct ProfileOptions {
    /// The node's mirror.
    pub mirror: SocketAddr,
    /// containerd's socket and namespace, for `ctr run`.
    pub containerd: PathBuf,
    pub namespace: String,
    /// CMD is killed after this long; what it read until then is the profile.
    pub timeout: Duration,
    /// Where the mounts go (a temp folder is made in it).
    pub work_dir: PathBuf,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Profile {
    /// The `--prioritize` lines, first access first.
    pub lines: Vec<String>,
    pub chunks: usize,
    /// Uncompressed bytes of the chunks read.
    pub bytes: u64,
    /// CMD's exit code (`None`: killed at the timeout).
    pub exit_code: Option<i32>,
    pub seconds: f64,
}

pub async fn profile(image: &ImageRef, cmd: &[String], opts: &ProfileOptions) -> Result<Profile, Error> {
    let mirror = Mirror::new(&format!("http://{}", opts.mirror), image)?;
    let resolved = mirror.resolve(image).await?;
    let config = &resolved.config_json["config"];
    let env: Vec<String> = serde_json::from_value(config["Env"].clone()).unwrap_or_default();
    let cwd = config["WorkingDir"].as_str().filter(|d| !d.is_empty()).map(str::to_string);
    let records: Vec<LayerRecord> = resolved
        .layers
        .iter()
        .map(|l| LayerRecord {
            digest: l.digest,
            size: l.size,
            media_type: l.media_type.clone(),
            annotations: l.annotations.clone(),
            registry: image.host.clone(),
            repo: image.repo.clone(),
        })
        .collect();
    let (cmd, opts, image) = (cmd.to_vec(), opts.clone(), image.to_string());
    tokio::task::spawn_blocking(move || run(&records, &env, cwd.as_deref(), &cmd, &opts, &image))
        .await
        .map_err(|e| Error::io("profiling", std::io::Error::other(e.to_string())))?
}

fn run(
    records: &[LayerRecord],
    env: &[String],
    cwd: Option<&str>,
    cmd: &[String],
    opts: &ProfileOptions,
    image: &str,
) -> Result<Profile, Error> {
    let work = tempfile::Builder::new().prefix("ferry-profile-").tempdir_in(&opts.work_dir).map_err(|e| Error::io("a work folder", e))?;
    let recorder = Arc::new(Recorder::default());
    let mut layers = Vec::new();
    let mut mounts: Vec<Mounted> = Vec::new();
    for (i, record) in records.iter().enumerate() {
        let blob = crate::service::remote::mirror_blob(opts.mirror, record.clone());
        let layer = LazyLayer::open(blob.as_ref(), &record.annotations)?.ok_or_else(|| {
            Error::NotLazy(format!(
                "layer {} of {image} is neither zstd:chunked nor eStargz: `ferry convert` the image first",
                record.digest
            ))
        })?;
        let layer = Arc::new(layer);
        let dir = work.path().join(format!("layer{i}"));
        std::fs::create_dir_all(dir.join("fs")).map_err(|e| Error::io("a mount point", e))?;
        let mount_opts = MountOptions { recorder: Some((recorder.clone(), i)), ..Default::default() };
        mounts.push(fuse::mount(layer.clone(), blob, dir.join("cache"), &dir.join("fs"), mount_opts)?);
        layers.push(layer);
    }
    let rootfs = work.path().join("rootfs");
    let lower: Vec<String> = (0..layers.len()).rev().map(|i| work.path().join(format!("layer{i}/fs")).display().to_string()).collect();
    for d in ["rootfs", "upper", "work"] {
        std::fs::create_dir_all(work.path().join(d)).map_err(|e| Error::io("an overlay folder", e))?;
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        work.path().join("upper").display(),
        work.path().join("work").display()
    );
    command(Command::new("mount").args(["-t", "overlay", "overlay", "-o", &options]).arg(&rootfs), "mounting the overlay")?;
    let started = Instant::now();
    let exit_code = run_container(&rootfs, env, cwd, cmd, opts);
    let _ = command(Command::new("umount").arg(&rootfs), "unmounting the overlay");
    drop(mounts);
    let exit_code = exit_code?;
    let accesses = recorder.accesses();
    let bytes = accesses.iter().map(|a| a.len).sum();
    Ok(Profile { lines: lines(&accesses, &layers), chunks: accesses.len(), bytes, exit_code, seconds: started.elapsed().as_secs_f64() })
}

/// `ctr run --rm --rootfs ROOTFS` with the image's environment; `None` when killed at the timeout.
fn run_container(rootfs: &Path, env: &[String], cwd: Option<&str>, cmd: &[String], opts: &ProfileOptions) -> Result<Option<i32>, Error> {
    let id = format!("ferry-profile-{}", std::process::id());
    let ctr = || {
        let mut c = Command::new("ctr");
        c.arg("--address").arg(&opts.containerd).args(["--namespace", &opts.namespace]);
        c
    };
    let mut run = ctr();
    run.args(["run", "--rm", "--rootfs"]);
    for e in env {
        run.args(["--env", e]);
    }
    if let Some(d) = cwd {
        run.args(["--cwd", d]);
    }
    run.arg(rootfs).arg(&id).args(cmd).stdin(Stdio::null());
    let mut child = run.spawn().map_err(|e| Error::io("running ctr (is containerd's ctr installed?)", e))?;
    let deadline = Instant::now() + opts.timeout;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| Error::io("waiting for ctr", e))? {
            return Ok(status.code());
        }
        if Instant::now() >= deadline {
            tracing::info!(timeout = ?opts.timeout, "the command is still running: killing it, the profile is what it read so far");
            let _ = ctr().args(["task", "kill", "--signal", "SIGKILL", &id]).output();
            let _ = child.wait();
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn command(cmd: &mut Command, what: &str) -> Result<(), Error> {
    let out = cmd.output().map_err(|e| Error::io(what.to_string(), e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::io(what.to_string(), std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string())))
    }
}

/// `PATH OFFSET LENGTH` per run of consecutive chunks of one file, in first-access order.
fn lines(accesses: &[Access], layers: &[Arc<LazyLayer>]) -> Vec<String> {
    let mut runs: Vec<(&str, u64, u64)> = Vec::new();
    for a in accesses {
        let name = layers[a.layer].toc.entries[a.entry].name.as_str();
        match runs.last_mut() {
            Some((n, off, len)) if *n == name && *off + *len == a.offset => *len += a.len,
            _ => runs.push((name, a.offset, a.len)),
        }
    }
    runs.into_iter()
        .map(|(name, off, len)| {
            let path = if name.contains(char::is_whitespace) || name.starts_with('"') {
                serde_json::to_string(name).unwrap_or_default()
            } else {
                name.to_string()
            };
            format!("{path} {off} {len}")
        })
        .collect()
}
