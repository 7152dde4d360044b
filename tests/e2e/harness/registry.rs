//! A real upstream: Debian's `docker-registry serve CONFIG` (distribution 2.8) on a free loopback
//! port with its own storage, in one of four flavours: plain HTTP, htpasswd basic auth, TLS
//! (certificate from a [`TestCa`]), or bearer-token auth through a [`TokenServer`].
//!
//! Its access log (Apache combined format, written to stdout) is kept in a file so tests can
//! count what the upstream actually served, e.g. GETs of one blob. Killed on drop; its logs are
//! printed when the test is failing.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::tls::TestCa;
use super::token::{TokenServer, ISSUER, SERVICE};
use super::{free_port, http_client, require_binary, run_ok, temp_dir, wait_for};

/// How clients authenticate to the registry.
#[derive(Debug, Clone, PartialEq)]
pub enum RegistryAuth {
    None,
    /// htpasswd (bcrypt) basic auth for one user.
    Basic {
        user: String,
        password: String,
    },
    /// Bearer tokens from a token server accepting this user.
    Token {
        user: String,
        password: String,
    },
}

/// One line of the registry's access log.
#[derive(Debug, Clone)]
pub struct AccessLine {
    pub method: String,
    /// Request path without the query string.
    pub path: String,
    pub status: u16,
    pub bytes: u64,
}

/// A running `docker-registry`; killed on drop.
#[derive(Debug)]
pub struct Registry {
    /// Owns config, storage, logs and certificates; removed on drop.
    _dir: tempfile::TempDir,
    child: Option<Child>,
    pub port: u16,
    pub auth: RegistryAuth,
    /// Whether it serves HTTPS.
    pub tls: bool,
    /// CA that signed the registry's certificate when it serves TLS.
    pub ca: Option<TestCa>,
    /// Directory with `ca.crt`, for `skopeo --dest-cert-dir` (TLS only).
    pub cert_dir: Option<PathBuf>,
    pub token_server: Option<TokenServer>,
    access_log: PathBuf,
    error_log: PathBuf,
}

impl Registry {
    /// A plain-HTTP registry without auth.
    pub async fn plain() -> Self {
        Self::start(RegistryAuth::None, false).await
    }

    /// A plain-HTTP registry with htpasswd basic auth.
    pub async fn basic_auth(user: &str, password: &str) -> Self {
        Self::start(RegistryAuth::Basic { user: user.into(), password: password.into() }, false).await
    }

    /// A plain-HTTP registry with bearer-token auth.
    pub async fn token_auth(user: &str, password: &str) -> Self {
        Self::start(RegistryAuth::Token { user: user.into(), password: password.into() }, false).await
    }

    /// An HTTPS registry without auth, its certificate signed by `self.ca`.
    pub async fn tls() -> Self {
        Self::start(RegistryAuth::None, true).await
    }

    async fn start(auth: RegistryAuth, tls: bool) -> Self {
        require_binary("docker-registry", "docker-registry");
        let dir = temp_dir("registry");
        let port = free_port();
        let storage = dir.path().join("storage");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: ferry-e2e-secret\n",
            storage.display()
        );
        let mut ca = None;
        let mut cert_dir = None;
        let mut token_server = None;
        let needs_ca = tls || matches!(auth, RegistryAuth::Token { .. });
        if needs_ca {
            ca = Some(TestCa::new(&dir.path().join("ca")));
        }
        if let (true, Some(ca)) = (tls, &ca) {
            let server = ca.issue_server_cert("registry");
            config.push_str(&format!("  tls:\n    certificate: {}\n    key: {}\n", server.cert.display(), server.key.display()));
            let certs = dir.path().join("client-certs");
            std::fs::create_dir_all(&certs).expect("create client cert dir");
            std::fs::copy(&ca.cert, certs.join("ca.crt")).expect("copy CA for skopeo");
            cert_dir = Some(certs);
        }
        match &auth {
            RegistryAuth::None => {}
            RegistryAuth::Basic { user, password } => {
                require_binary("htpasswd", "apache2-utils");
                let line = run_ok(Command::new("htpasswd").args(["-Bbn", user, password]), Duration::from_secs(20));
                let path = dir.path().join("htpasswd");
                std::fs::write(&path, line.trim()).expect("write htpasswd file");
                config.push_str(&format!("auth:\n  htpasswd:\n    realm: ferry-e2e\n    path: {}\n", path.display()));
            }
            RegistryAuth::Token { user, password } => {
                let ca = ca.as_ref().expect("CA for token signing");
                let server = TokenServer::start(ca, dir.path().join("ca"), user, password);
                config.push_str(&format!(
                    "auth:\n  token:\n    realm: {}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
                    server.realm(),
                    server.root_cert_bundle.display()
                ));
                token_server = Some(server);
            }
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).expect("write registry config");
        let access_log = dir.path().join("access.log");
        let error_log = dir.path().join("registry.log");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&access_log).expect("create access log"))
            .stderr(std::fs::File::create(&error_log).expect("create registry log"))
            .spawn()
            .expect("spawn docker-registry");
        let registry = Registry { _dir: dir, child: Some(child), port, auth, tls, ca, cert_dir, token_server, access_log, error_log };
        registry.wait_ready().await;
        registry
    }

    async fn wait_ready(&self) {
        let client = self.client();
        let url = format!("{}/v2/", self.url());
        wait_for(&format!("docker-registry on port {} to answer /v2/", self.port), Duration::from_secs(20), || {
            let (client, url) = (client.clone(), url.clone());
            async move { client.get(url).send().await.ok().map(|_| ()) }
        })
        .await;
    }

    /// `127.0.0.1:PORT`.
    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Base URL, `http://` or `https://`.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// A client that trusts the registry's CA (when it has one).
    pub fn client(&self) -> reqwest::Client {
        let Some(ca) = self.ca.as_ref().filter(|_| self.tls) else {
            return http_client();
        };
        let pem = std::fs::read(&ca.cert).expect("read CA cert");
        reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(120))
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("parse CA pem"))
            .build()
            .expect("build registry client")
    }

    /// `user:password` for skopeo's `--dest-creds`, when the registry needs credentials.
    pub fn credentials(&self) -> Option<(String, String)> {
        match &self.auth {
            RegistryAuth::None => None,
            RegistryAuth::Basic { user, password } | RegistryAuth::Token { user, password } => Some((user.clone(), password.clone())),
        }
    }

    /// The file in the registry's storage holding blob `digest` (`sha256:...`), to corrupt it
    /// behind the registry's back.
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self._dir.path().join("storage/docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data")
    }

    /// Kills the registry (simulates the upstream going away). Idempotent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Every parsed line of the access log so far.
    pub fn access_lines(&self) -> Vec<AccessLine> {
        let text = std::fs::read_to_string(&self.access_log).unwrap_or_default();
        text.lines().filter_map(parse_access_line).collect()
    }

    /// GETs of blob `digest` in repository `name` that the registry served (200 or 206).
    pub fn served_blob_gets(&self, name: &str, digest: &str) -> Vec<AccessLine> {
        let path = format!("/v2/{name}/blobs/{digest}");
        self.access_lines().into_iter().filter(|l| l.method == "GET" && l.path == path && (l.status == 200 || l.status == 206)).collect()
    }

    /// Number of served GETs of blob `digest` in `name`.
    pub fn count_blob_gets(&self, name: &str, digest: &str) -> usize {
        self.served_blob_gets(name, digest).len()
    }

    /// Waits until the access log stops growing for 300 ms (the registry logs a request when
    /// its response has been written), at most 5 s.
    pub async fn settle_log(&self) {
        let mut last = usize::MAX;
        for _ in 0..50 {
            let now = self.access_lines().len();
            if now == last {
                return;
            }
            last = now;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// The registry's own logs, for failure reports.
    pub fn logs(&self) -> String {
        let access = std::fs::read_to_string(&self.access_log).unwrap_or_default();
        let errors = std::fs::read_to_string(&self.error_log).unwrap_or_default();
        format!("--- access log ---\n{access}--- registry log ---\n{errors}")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let logs = self.logs();
            let tail: String = logs.chars().rev().take(20_000).collect::<Vec<_>>().into_iter().rev().collect();
            eprintln!("===== docker-registry on port {} (tail) =====\n{tail}", self.port);
        }
    }
}

/// Parses `IP - USER [DATE] "METHOD TARGET PROTO" STATUS BYTES "REFERER" "UA"`.
fn parse_access_line(line: &str) -> Option<AccessLine> {
    let mut quoted = line.splitn(3, '"');
    quoted.next()?;
    let request = quoted.next()?;
    let rest = quoted.next()?;
    let mut request_parts = request.split_whitespace();
    let method = request_parts.next()?.to_string();
    let target = request_parts.next()?;
    let path = target.split('?').next().unwrap_or(target).to_string();
    let mut numbers = rest.split_whitespace();
    let status = numbers.next()?.parse().ok()?;
    let bytes = numbers.next().and_then(|b| b.parse().ok()).unwrap_or(0);
    Some(AccessLine { method, path, status, bytes })
}
