//! containerd 1.6 in a sandbox: its own root, state, sockets and `opt` path inside a temp dir,
//! CRI (unless started with `start_with_cri`) and exotic snapshotters disabled, runc as the runtime. Its garbage collector runs after
//! every deletion (by default it paces itself to 2% of the time, so on a loaded machine a removed
//! snapshot could stay for tens of seconds). Helpers run `ctr` against it
//! (pull through a `--hosts-dir` mirror config, run a container, remove images with a
//! synchronous GC) and write `certs.d/<host>/hosts.toml` pointing at a ferry mirror.
//!
//! On drop: shims started for this sandbox and containerd itself are killed, and every mount
//! below the sandbox is unmounted.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, require_binary, run_cmd, temp_dir, wait_for, CmdOutput};

/// A running sandboxed containerd.
#[derive(Debug)]
pub struct Containerd {
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// gRPC socket, for `ctr --address`.
    pub socket: PathBuf,
    /// The certs.d folder passed as `--hosts-dir` (and CRI's `config_path` with CRI on).
    pub hosts_dir: PathBuf,
    /// The config.toml containerd was started with.
    pub config_path: PathBuf,
}

const DISABLED_PLUGINS: &str = r#""io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing""#;

impl Containerd {
    /// Starts containerd and waits (20 s) until `ctr version` reaches it.
    pub async fn start() -> Self {
        Self::start_with(None, false).await
    }

    /// Starts containerd with ferry's snapshotter at `snapshotter_socket` as the proxy plugin
    /// `ferry` (`--snapshotter ferry`).
    pub async fn start_with_snapshotter(snapshotter_socket: &Path) -> Self {
        Self::start_with(Some(snapshotter_socket), false).await
    }

    /// Starts containerd set up as a Kubernetes node's would be for Ferry: CRI on (its state,
    /// CNI folders and stream server inside the sandbox), reading `certs.d` (`config_path`),
    /// unpacking with the proxy plugin `ferry` at `snapshotter_socket`, snapshot labels on.
    pub async fn start_with_cri(snapshotter_socket: &Path) -> Self {
        Self::start_with(Some(snapshotter_socket), true).await
    }

    async fn start_with(snapshotter_socket: Option<&Path>, cri: bool) -> Self {
        for (bin, package) in [("containerd", "containerd"), ("ctr", "containerd"), ("runc", "runc")] {
            require_binary(bin, package);
        }
        let dir = temp_dir("containerd");
        let d = dir.path();
        let socket = d.join("containerd.sock");
        let hosts_dir = d.join("certs.d");
        std::fs::create_dir_all(&hosts_dir).expect("create certs.d");
        let disabled = if cri { DISABLED_PLUGINS.to_string() } else { format!("\"io.containerd.grpc.v1.cri\", {DISABLED_PLUGINS}") };
        let config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\ndisabled_plugins = [{disabled}]\n\
             [grpc]\n  address = \"{sock}\"\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n\
             [debug]\n  address = \"{debug}\"\n[metrics]\n  address = \"\"\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{opt}\"\n\
             [plugins.\"io.containerd.gc.v1.scheduler\"]\n  deletion_threshold = 1\n  pause_threshold = 0.5\n",
            root = d.join("root").display(),
            state = d.join("state").display(),
            sock = socket.display(),
            debug = d.join("debug.sock").display(),
            opt = d.join("opt").display(),
        );
        let config = match snapshotter_socket {
            Some(sock) => format!("{config}[proxy_plugins.ferry]\n  type = \"snapshot\"\n  address = \"{}\"\n", sock.display()),
            None => config,
        };
        let config = if cri {
            format!(
                "{config}[plugins.\"io.containerd.grpc.v1.cri\"]\n  stream_server_address = \"127.0.0.1\"\n  stream_server_port = \"0\"\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".cni]\n  conf_dir = \"{cni}/net.d\"\n  bin_dir = \"{cni}/bin\"\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  snapshotter = \"ferry\"\n  disable_snapshot_annotations = false\n\
                 [plugins.\"io.containerd.grpc.v1.cri\".registry]\n  config_path = \"{hosts}\"\n",
                cni = d.join("cni").display(),
                hosts = hosts_dir.display(),
            )
        } else {
            config
        };
        let config_path = d.join("config.toml");
        std::fs::write(&config_path, config).expect("write containerd config");
        let log = std::fs::File::create(d.join("containerd.log")).expect("create containerd log");
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("spawn containerd");
        let containerd = Containerd { dir, child: Some(child), socket, hosts_dir, config_path };
        wait_for("sandboxed containerd to answer `ctr version`", Duration::from_secs(20), || {
            let ok = containerd.ctr(&["version"], Duration::from_secs(10)).success;
            async move { ok.then_some(()) }
        })
        .await;
        containerd
    }

    /// containerd's socket, for `ctr --address`.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Runs `ctr --address SOCK ARGS...` with a timeout.
    pub fn ctr(&self, args: &[&str], timeout: Duration) -> CmdOutput {
        run_cmd(Command::new("ctr").arg("--address").arg(&self.socket).args(args), timeout)
    }

    /// Writes `certs.d/<registry_host>/hosts.toml` with `mirror` (e.g. `http://127.0.0.1:5050`)
    /// as the only pull/resolve host. `server` points at a closed loopback port so that a
    /// failing mirror never sends containerd to the network.
    pub fn use_mirror(&self, registry_host: &str, mirror: &str) {
        let dir = self.hosts_dir.join(registry_host);
        std::fs::create_dir_all(&dir).expect("create certs.d/<host>");
        let dead_end = format!("http://127.0.0.1:{}", free_port());
        let hosts = format!("server = \"{dead_end}\"\n\n[host.\"{mirror}\"]\n  capabilities = [\"pull\", \"resolve\"]\n");
        std::fs::write(dir.join("hosts.toml"), hosts).expect("write hosts.toml");
    }

    /// `ctr image pull --hosts-dir CERTS_D IMAGE`; Err carries ctr's output.
    pub fn pull(&self, image: &str) -> Result<String, String> {
        self.pull_with(image, None)
    }

    /// `ctr image pull [--snapshotter S] --hosts-dir CERTS_D IMAGE`.
    pub fn pull_with(&self, image: &str, snapshotter: Option<&str>) -> Result<String, String> {
        let hosts_dir = self.hosts_dir.to_string_lossy().to_string();
        let mut args = vec!["image", "pull", "--hosts-dir", &hosts_dir];
        if let Some(s) = snapshotter {
            args.extend(["--snapshotter", s]);
        }
        args.push(image);
        let out = self.ctr(&args, Duration::from_secs(120));
        if out.success {
            Ok(out.stdout)
        } else {
            Err(format!("ctr image pull {image} failed:\n{}\n{}", out.stdout, out.stderr))
        }
    }

    /// `ctr run --rm IMAGE ID CMD...`; returns the container's stdout.
    pub fn run(&self, image: &str, id: &str, cmd: &[&str]) -> Result<String, String> {
        self.run_with(image, id, cmd, None)
    }

    /// `ctr run --rm [--snapshotter S] IMAGE ID CMD...`.
    pub fn run_with(&self, image: &str, id: &str, cmd: &[&str], snapshotter: Option<&str>) -> Result<String, String> {
        let mut args = vec!["run", "--rm"];
        if let Some(s) = snapshotter {
            args.extend(["--snapshotter", s]);
        }
        args.extend([image, id]);
        args.extend_from_slice(cmd);
        let out = self.ctr(&args, Duration::from_secs(60));
        if out.success {
            Ok(out.stdout)
        } else {
            Err(format!("ctr run {image} failed:\n{}\n{}", out.stdout, out.stderr))
        }
    }

    /// `ctr image pull --plain-http IMAGE` straight from a registry (`127.0.0.1:PORT/repo:tag`).
    pub fn pull_plain_http(&self, image: &str) -> Result<String, String> {
        let out = self.ctr(&["image", "pull", "--plain-http", image], Duration::from_secs(180));
        if out.success {
            Ok(out.stdout)
        } else {
            Err(format!("ctr image pull --plain-http {image} failed:\n{}\n{}", out.stdout, out.stderr))
        }
    }

    /// `ctr image mount IMAGE DIR`: the image's unpacked rootfs (overlayfs snapshots, read
    /// only) mounted at a fresh dir inside the sandbox, named `name`. Unmounted on drop at the
    /// latest.
    pub fn mount_image(&self, image: &str, name: &str) -> PathBuf {
        let target = self.dir.path().join("mnt").join(name);
        std::fs::create_dir_all(&target).expect("create mount target");
        let target_s = target.to_string_lossy().to_string();
        let out = self.ctr(&["image", "mount", image, &target_s], Duration::from_secs(60));
        assert!(out.success, "ctr image mount {image} {target_s}: {}\n{}", out.stdout, out.stderr);
        target
    }

    /// `ctr image unmount --rm DIR`.
    pub fn unmount_image(&self, target: &Path) {
        let target_s = target.to_string_lossy().to_string();
        let out = self.ctr(&["image", "unmount", "--rm", &target_s], Duration::from_secs(60));
        assert!(out.success, "ctr image unmount {target_s}: {}\n{}", out.stdout, out.stderr);
    }

    /// `ctr image rm --sync IMAGE`: removes the image and garbage-collects its content.
    pub fn remove_image(&self, image: &str) {
        let out = self.ctr(&["image", "rm", "--sync", image], Duration::from_secs(60));
        assert!(out.success, "ctr image rm {image}: {}", out.stderr);
    }

    /// Digests in containerd's content store.
    pub fn content_digests(&self) -> Vec<String> {
        let out = self.ctr(&["content", "ls", "--quiet"], Duration::from_secs(30));
        assert!(out.success, "ctr content ls: {}", out.stderr);
        out.stdout.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect()
    }

    fn kill_shims(&self) {
        let needle = self.socket.to_string_lossy().to_string();
        let Ok(procs) = std::fs::read_dir("/proc") else { return };
        for entry in procs.filter_map(Result::ok) {
            let pid = entry.file_name().to_string_lossy().to_string();
            if !pid.chars().all(|c| c.is_ascii_digit()) {
                continue;
            }
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains("containerd-shim") && cmdline.contains(&needle) {
                run_cmd(Command::new("kill").args(["-9", &pid]), Duration::from_secs(5));
            }
        }
    }

    /// Unmounts (lazily) every mount at or below `path`, deepest first.
    pub fn unmount_all(path: &Path) {
        let prefix = path.to_string_lossy().to_string();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mounts: Vec<String> =
            mountinfo.lines().filter_map(|l| l.split_whitespace().nth(4).map(str::to_string)).filter(|m| m.starts_with(&prefix)).collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for mount in mounts {
            let _ = run_cmd(Command::new("umount").args(["-l", &mount]), Duration::from_secs(10));
        }
    }

    /// containerd's log, for failure reports.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.kill_shims();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        Self::unmount_all(self.dir.path());
        if std::thread::panicking() {
            let log = self.log();
            let tail: String = log.chars().rev().take(10_000).collect::<Vec<_>>().into_iter().rev().collect();
            eprintln!("===== containerd log (tail) =====\n{tail}");
        }
    }
}
