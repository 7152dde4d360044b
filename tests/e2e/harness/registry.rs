//! A real upstream: Debian's `docker-registry serve CONFIG` (distribution 2.8) on a free loopback
//! port with its own storage, in one of four flavours: plain HTTP, htpasswd basic auth, TLS
//! (certificate from a [`TestCa`]), or bearer-token auth through a [`TokenServer`].
//!
//! Its access log (Apache combined format, written to stdout) is kept in a file so tests can
//! count what the upstream actually served, e.g. GETs of one blob. Killed on drop; its logs are
//! printed when the test is failing.
//!
//! [`Registry::plain_in`] starts a plain one inside a namespace of a [`Site`], listening on that
//! namespace's address (port 5000); only the site's namespaces reach it, so it is driven with
//! curl from inside them ([`Registry::push_blob_from`], [`Site::download`]).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::netns::{Site, Transfer};
use super::tls::TestCa;
use super::token::{TokenServer, ISSUER, SERVICE};
use super::{free_port, http_client, require_binary, run_ok, sha256_file, temp_dir, wait_for};

/// The port of a registry started inside a site namespace (alone on its address).
const NETNS_PORT: u16 = 5000;

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
    /// Address it listens on: `127.0.0.1`, or the namespace's address for [`Registry::plain_in`].
    pub host: String,
    pub port: u16,
    /// Full name of the network namespace it runs in, if not the host's.
    pub netns: Option<String>,
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

    /// A plain-HTTP registry without auth inside namespace `ns` of `site`, listening on
    /// `site.ip_of(ns)`:5000; ready when `GET /v2/` answers from inside `ns` (20 s).
    pub async fn plain_in(site: &Site, ns: &str) -> Self {
        Self::start_at(RegistryAuth::None, false, Some((site, ns))).await
    }

    async fn start(auth: RegistryAuth, tls: bool) -> Self {
        Self::start_at(auth, tls, None).await
    }

    async fn start_at(auth: RegistryAuth, tls: bool, netns: Option<(&Site, &str)>) -> Self {
        require_binary("docker-registry", "docker-registry");
        let dir = temp_dir("registry");
        let (host, port) = match netns {
            Some((site, ns)) => (site.ip_of(ns).to_string(), NETNS_PORT),
            None => ("127.0.0.1".to_string(), free_port()),
        };
        let storage = dir.path().join("storage");
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: {host}:{port}\n  secret: ferry-e2e-secret\n",
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
        let mut cmd = match netns {
            Some((site, ns)) => site.exec(ns, "docker-registry"),
            None => Command::new("docker-registry"),
        };
        let child = cmd
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&access_log).expect("create access log"))
            .stderr(std::fs::File::create(&error_log).expect("create registry log"))
            .spawn()
            .expect("spawn docker-registry");
        let mut registry = Registry {
            _dir: dir,
            child: Some(child),
            host,
            port,
            netns: netns.map(|(site, ns)| site.netns(ns)),
            auth,
            tls,
            ca,
            cert_dir,
            token_server,
            access_log,
            error_log,
        };
        match netns {
            Some((site, ns)) => registry.wait_ready_in(site, ns),
            None => registry.wait_ready().await,
        }
        registry
    }

    /// Polls `GET /v2/` with curl from inside `ns` until it answers (20 s), failing early if
    /// the registry exits.
    fn wait_ready_in(&mut self, site: &Site, ns: &str) {
        let url = format!("{}/v2/", self.url());
        let deadline = Instant::now() + Duration::from_secs(20);
        while site.http_status(ns, &url).is_none() {
            let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            assert!(exited.is_none(), "docker-registry in {ns} exited ({exited:?}) before it was ready:\n{}", self.logs());
            assert!(Instant::now() < deadline, "docker-registry in {ns} did not answer {url} within 20 s:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Pushes the contents of `file` as a blob of repository `name` from inside namespace `ns`
    /// with curl (POST, then a monolithic PUT); returns its digest and the measured PUT.
    pub fn push_blob_from(&self, site: &Site, ns: &str, name: &str, file: &Path) -> (String, Transfer) {
        let digest = format!("sha256:{}", sha256_file(file).unwrap_or_else(|| panic!("hash {}", file.display())));
        let start_url = format!("{}/v2/{name}/blobs/uploads/", self.url());
        let started = site.curl(ns, &["-X", "POST", "-D", "-", "-o", "/dev/null", &start_url], Duration::from_secs(20));
        assert!(started.success && started.stdout.contains(" 202"), "POST {start_url} from {ns}: {started:?}\n{}", self.logs());
        let location = started
            .stdout
            .lines()
            .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("location")).map(|(_, v)| v.trim().to_string()))
            .unwrap_or_else(|| panic!("no Location in {:?}", started.stdout));
        let location = if location.starts_with('/') { format!("{}{location}", self.url()) } else { location };
        let separator = if location.contains('?') { '&' } else { '?' };
        let put_url = format!("{location}{separator}digest={digest}");
        let format = Transfer::curl_format("upload");
        let args = ["-X", "PUT", "-H", "Expect:", "-H", "content-type: application/octet-stream", "--max-time", "60", "-o", "/dev/null"];
        let file_arg = file.to_str().expect("utf-8 blob path");
        let put = site.curl(ns, &[&args[..], &["-T", file_arg, "-w", &format, &put_url]].concat(), Duration::from_secs(70));
        assert!(put.success, "PUT blob {digest} from {ns}: {put:?}\n{}", self.logs());
        let transfer = Transfer::parse(&put.stdout);
        assert_eq!(transfer.status, 201, "PUT blob {digest} from {ns}\n{}", self.logs());
        (digest, transfer)
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

    /// `HOST:PORT` (`127.0.0.1:PORT` unless inside a namespace).
    pub fn host_port(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Base URL, `http://` or `https://`.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}:{}", self.host, self.port)
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
            let netns = self.netns.as_deref().map(|ns| format!(" in netns {ns}")).unwrap_or_default();
            eprintln!("===== docker-registry on {}{netns} (tail) =====\n{tail}", self.host_port());
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
