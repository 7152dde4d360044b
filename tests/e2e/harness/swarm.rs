//! Ferry nodes of a [`Site`]: one `ferry node` per node namespace, P2P on the LAN (cluster key,
//! region `site`, no mDNS, every node bootstrapped from node 0), the origin registry reached
//! across the shaped WAN. Clients run curl inside a node's namespace against its own mirror.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use super::ferry::{sum_metric, FERRY_BIN};
use super::netns::Site;
use super::registry::Registry;
use super::{run_cmd, sha256_file, temp_dir};

/// A cluster key file in the libp2p format, made by the project's own script.
pub fn cluster_key(dir: &Path, name: &str) -> PathBuf {
    let out = Command::new("bash").arg(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/make-cluster-key.sh")).output().expect("make key");
    assert!(out.status.success(), "make-cluster-key.sh failed");
    let path = dir.join(name);
    std::fs::write(&path, out.stdout).expect("write key");
    path
}

/// A ferry node inside namespace `n<index>`.
pub struct SiteNode {
    pub index: usize,
    pub ns: String,
    dir: tempfile::TempDir,
    child: std::sync::Mutex<Option<Child>>,
    pub peer_id: String,
}

impl SiteNode {
    /// Starts node `index` in region `site` with `key`, bootstrapping from `bootstrap` when
    /// given; `env` is added to the process environment (test-only fault switches).
    pub fn start(site: &Site, index: usize, origin: &Registry, key: &Path, bootstrap: Option<String>, env: &[(&str, &str)]) -> SiteNode {
        Self::start_in_region(site, index, origin, key, bootstrap, env, "site")
    }

    pub fn start_in_region(
        site: &Site,
        index: usize,
        origin: &Registry,
        key: &Path,
        bootstrap: Option<String>,
        env: &[(&str, &str)],
        region: &str,
    ) -> SiteNode {
        let ns = format!("n{index}");
        let ip = site.node_ip(index);
        let dir = temp_dir("site-node");
        let mut cmd = Command::new(FERRY_BIN);
        cmd.arg("node")
            .arg("--store")
            .arg(dir.path().join("store"))
            .args(["--registry-listen", &format!("{ip}:5050"), "--metrics-listen", &format!("{ip}:9464")])
            .arg("--admin-socket")
            .arg(dir.path().join("admin.sock"))
            .args(["--upstream", &format!("registry.local={}", origin.url())])
            .args(["--p2p-listen", &format!("/ip4/{ip}/tcp/4001"), "--region", region, "--mdns", "false", "--psk-file"])
            .arg(key)
            .env("RUST_LOG", std::env::var("FERRY_E2E_LOG").unwrap_or_else(|_| "info".to_string()));
        if let Some(b) = &bootstrap {
            cmd.args(["--bootstrap", b]);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = site.spawn_in(&ns, cmd);
        let mut node = SiteNode { index, ns, dir, child: std::sync::Mutex::new(Some(child)), peer_id: String::new() };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = node.status() {
                node.peer_id = status["p2p"]["peer_id"].as_str().expect("peer id").to_string();
                return node;
            }
            assert!(Instant::now() < deadline, "ferry in {} did not answer status within 20 s:\n{}", node.ns, site.logs());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Its P2P address, for others to bootstrap from.
    pub fn address(&self, site: &Site) -> String {
        format!("/ip4/{}/tcp/4001/p2p/{}", site.node_ip(self.index), self.peer_id)
    }

    /// `ferry status --json`, or `None` when the node does not answer.
    pub fn status(&self) -> Option<serde_json::Value> {
        let out = run_cmd(
            Command::new(FERRY_BIN).args(["status", "--json", "--admin-socket"]).arg(self.dir.path().join("admin.sock")),
            Duration::from_secs(10),
        );
        out.success.then(|| serde_json::from_str(&out.stdout).expect("status JSON"))
    }

    pub fn peer_count(&self) -> usize {
        self.status().and_then(|s| s["p2p"]["peers"].as_array().map(Vec::len)).unwrap_or(0)
    }

    /// The sum of a metric's samples matching `labels`, scraped from inside the namespace.
    pub fn metric(&self, site: &Site, name: &str, labels: &[(&str, &str)]) -> f64 {
        let url = format!("http://{}:9464/metrics", site.node_ip(self.index));
        let out = site.curl(&self.ns, &["--max-time", "5", &url], Duration::from_secs(10));
        sum_metric(&out.stdout, name, labels)
    }

    pub fn mirror(&self, site: &Site) -> String {
        format!("http://{}:5050", site.node_ip(self.index))
    }

    /// GETs `/v2/<repo>/<kind>/<digest>?ns=registry.local` through this node into a file and
    /// returns its HTTP status and sha256 (`sha256:<hex>`; empty when nothing was written).
    pub fn get(&self, site: &Site, repo: &str, kind: &str, digest: &str) -> (u16, String) {
        let out_file = self.dir.path().join(format!("got-{}", digest.replace(':', "-")));
        let url = format!("{}/v2/{repo}/{kind}/{digest}?ns=registry.local", self.mirror(site));
        let accept = "accept: application/vnd.oci.image.manifest.v1+json";
        let out = site.curl(
            &self.ns,
            &["--max-time", "300", "-H", accept, "-o", out_file.to_str().expect("utf-8"), "-w", "%{http_code}", &url],
            Duration::from_secs(310),
        );
        let status = out.stdout.trim().parse().unwrap_or(0);
        let hash = sha256_file(&out_file).map(|h| format!("sha256:{h}")).unwrap_or_default();
        let _ = std::fs::remove_file(&out_file);
        (status, hash)
    }

    pub fn kill9(&self) {
        if let Some(mut c) = self.child.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for SiteNode {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Starts `n` nodes (node 0 first, the rest bootstrapped from it) and waits until each sees all
/// the others. `env_of(i)` gives node i's extra environment.
pub fn start_nodes(
    site: &Site,
    origin: &Registry,
    key: &Path,
    n: usize,
    env_of: impl Fn(usize) -> Vec<(&'static str, &'static str)>,
) -> Vec<SiteNode> {
    let first = SiteNode::start(site, 0, origin, key, None, &env_of(0));
    let boot = first.address(site);
    let mut nodes = vec![first];
    for i in 1..n {
        nodes.push(SiteNode::start(site, i, origin, key, Some(boot.clone()), &env_of(i)));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for node in &nodes {
        while node.peer_count() < n - 1 {
            assert!(Instant::now() < deadline, "node {} sees {} of {} peers:\n{}", node.index, node.peer_count(), n - 1, site.logs());
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    nodes
}

/// Bytes of blob GETs the origin served (its access log: what crossed the WAN).
pub fn origin_blob_bytes(origin: &Registry) -> u64 {
    origin
        .access_lines()
        .iter()
        .filter(|l| l.method == "GET" && l.path.contains("/blobs/") && (l.status == 200 || l.status == 206))
        .map(|l| l.bytes)
        .sum()
}
