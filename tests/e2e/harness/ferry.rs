//! The system under test: `ferry node` as a child process (the binary cargo built for this
//! test target), with a temp store, free ports for the mirror and the metrics, a temp admin
//! socket and the upstream flags a test asks for.
//!
//! Ready when `GET /v2/` answers 200 (20 s, then the test fails with ferry's log). Supports
//! kill -9, SIGTERM, restart on the same store, reading Prometheus metrics, and listing the
//! store's complete blobs. Each run's stderr+stdout goes to a log file that is printed when the
//! test fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, http_client, run_cmd, run_ok, temp_dir};

/// The `ferry` binary cargo built for this integration test.
pub const FERRY_BIN: &str = env!("CARGO_BIN_EXE_ferry");

/// Flags for `ferry node`.
#[derive(Debug, Clone, Default)]
pub struct FerryOptions {
    /// `--upstream HOST=URL`, in order.
    pub upstreams: Vec<(String, String)>,
    /// `--upstream-ca FILE`.
    pub upstream_cas: Vec<PathBuf>,
    /// `--docker-config FILE`.
    pub docker_config: Option<PathBuf>,
    /// Anything else, verbatim.
    pub extra_args: Vec<String>,
    /// Put the store on its own tmpfs of this many bytes (a small disk that can fill up).
    pub store_tmpfs: Option<u64>,
}

impl FerryOptions {
    /// One upstream `host` served at `url`.
    pub fn upstream(host: &str, url: &str) -> Self {
        FerryOptions { upstreams: vec![(host.to_string(), url.to_string())], ..Default::default() }
    }
}

/// A `ferry node` process and its on-disk state.
#[derive(Debug)]
pub struct FerryNode {
    dir: tempfile::TempDir,
    options: FerryOptions,
    child: Option<Child>,
    /// `127.0.0.1:PORT` of the mirror (changes on restart).
    pub registry_addr: String,
    /// `127.0.0.1:PORT` of /metrics (changes on restart).
    pub metrics_addr: String,
    runs: usize,
}

impl FerryNode {
    /// Starts a node with a fresh store and waits until it is ready.
    pub async fn start(options: FerryOptions) -> Self {
        let mut node =
            FerryNode { dir: temp_dir("ferry"), options, child: None, registry_addr: String::new(), metrics_addr: String::new(), runs: 0 };
        if let Some(bytes) = node.options.store_tmpfs {
            std::fs::create_dir_all(node.store()).expect("create store dir");
            run_ok(
                Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"]).arg(node.store()),
                Duration::from_secs(10),
            );
        }
        node.spawn().await;
        node
    }

    /// The store directory (`--store`).
    pub fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    /// The node's admin socket (`--admin-socket`), which `ferry status` reads.
    pub fn admin_socket(&self) -> PathBuf {
        self.dir.path().join("admin.sock")
    }

    /// The flags this run of `ferry node` got (store, addresses, sockets, upstreams, extra
    /// arguments): other commands given them read the same configuration as the node.
    pub fn node_flags(&self) -> Vec<String> {
        let mut flags = vec![
            "--store".to_string(),
            self.store().display().to_string(),
            "--registry-listen".into(),
            self.registry_addr.clone(),
            "--metrics-listen".into(),
            self.metrics_addr.clone(),
            "--admin-socket".into(),
            self.admin_socket().display().to_string(),
        ];
        for (host, url) in &self.options.upstreams {
            flags.extend(["--upstream".to_string(), format!("{host}={url}")]);
        }
        for ca in &self.options.upstream_cas {
            flags.extend(["--upstream-ca".to_string(), ca.display().to_string()]);
        }
        if let Some(config) = &self.options.docker_config {
            flags.extend(["--docker-config".to_string(), config.display().to_string()]);
        }
        flags.extend(self.options.extra_args.iter().cloned());
        flags
    }

    /// `http://127.0.0.1:PORT` of the mirror.
    pub fn url(&self) -> String {
        format!("http://{}", self.registry_addr)
    }

    fn log_path(&self, run: usize) -> PathBuf {
        self.dir.path().join(format!("ferry-run{run}.log"))
    }

    async fn spawn(&mut self) {
        self.runs += 1;
        self.registry_addr = format!("127.0.0.1:{}", free_port());
        self.metrics_addr = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(self.log_path(self.runs)).expect("create ferry log");
        let mut cmd = Command::new(FERRY_BIN);
        cmd.arg("node").args(self.node_flags());
        cmd.env("RUST_LOG", std::env::var("FERRY_E2E_LOG").unwrap_or_else(|_| "info".to_string()))
            .env("NO_PROXY", "*")
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .env_remove("http_proxy")
            .env_remove("https_proxy")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log);
        self.child = Some(cmd.spawn().unwrap_or_else(|e| panic!("spawn {FERRY_BIN}: {e}")));
        self.wait_ready().await;
    }

    async fn wait_ready(&mut self) {
        let client = http_client();
        let url = format!("{}/v2/", self.url());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(reply) = client.get(&url).timeout(Duration::from_secs(2)).send().await {
                if reply.status().as_u16() == 200 {
                    return;
                }
            }
            let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if let Some(status) = exited {
                panic!("ferry node exited before it was ready ({status}):\n{}", self.log());
            }
            if Instant::now() > deadline {
                panic!("ferry node not ready (GET {url} != 200) within 20 s:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// kill -9: no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits up to 15 s for the exit; returns whether it exited with status 0.
    pub fn terminate(&mut self) -> bool {
        let Some(mut child) = self.child.take() else { return false };
        run_cmd(Command::new("kill").args(["-TERM", &child.id().to_string()]), Duration::from_secs(5));
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("ferry node ignored SIGTERM for 15 s:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The flags the next start passes besides the usual ones (a changed config, in effect).
    pub fn set_extra_args(&mut self, args: Vec<String>) {
        self.options.extra_args = args;
    }

    /// Stops the node if running (kill -9) and starts it again on the same store.
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn().await;
    }

    /// Every run's log, oldest first.
    pub fn log(&self) -> String {
        (1..=self.runs)
            .map(|run| {
                let text = std::fs::read_to_string(self.log_path(run)).unwrap_or_default();
                format!("--- ferry run {run} ---\n{text}")
            })
            .collect()
    }

    /// The raw Prometheus text from /metrics.
    pub async fn metrics_text(&self) -> String {
        let url = format!("http://{}/metrics", self.metrics_addr);
        let reply = http_client().get(&url).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert_eq!(reply.status().as_u16(), 200, "GET {url}");
        reply.text().await.expect("metrics body")
    }

    /// Sum of every sample of `name` whose labels include all of `labels` (0 when absent).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        sum_metric(&self.metrics_text().await, name, labels)
    }

    /// `(digest hex, path)` of every file under STORE/blobs/sha256/.
    pub fn complete_blobs(&self) -> Vec<(String, PathBuf)> {
        list_blob_files(&self.store())
    }
}

/// Files under `store/blobs/sha256/` as (file name, path).
pub fn list_blob_files(store: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(store.join("blobs/sha256")) else { return Vec::new() };
    entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| (e.file_name().to_string_lossy().to_string(), e.path()))
        .collect()
}

/// Sums samples `name{...} value` of a Prometheus/OpenMetrics text whose labels contain `labels`.
pub fn sum_metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let matches = labels.iter().all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")));
            matches.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

impl Drop for FerryNode {
    fn drop(&mut self) {
        self.kill9();
        // Lazy layers the killed node left mounted (their FUSE daemon is gone): detach them.
        let root = self.dir.path().display().to_string();
        for target in std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default().lines().filter_map(|l| l.split(' ').nth(4)) {
            if target.starts_with(&root) && target != self.store().display().to_string() {
                let _ = Command::new("umount").arg("-l").arg(target).status();
            }
        }
        if self.options.store_tmpfs.is_some() {
            let _ = Command::new("umount").arg("-l").arg(self.store()).status();
        }
        if std::thread::panicking() {
            eprintln!("===== ferry node log ({}) =====\n{}", self.dir.path().display(), self.log());
        }
    }
}
