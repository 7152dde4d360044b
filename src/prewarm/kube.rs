//! Live mode of `ferry prewarm plan`: the node and pod lists from the Kubernetes API instead of
//! files, in the shape `kubectl get nodes -o json` gives, so the planner's parsers take them
//! unchanged.
//!
//! [`Api::from_kubeconfig`] reads a kubeconfig and resolves one context into a `Target`: where the
//! API is and how to prove who we are (relative paths resolved against the kubeconfig's folder;
//! pure, so unit-tested on text); then it reads the certificates, key and token file the target
//! names and builds the HTTPS client. [`Api::nodes`] and [`Api::pods`] page through a collection
//! (`limit`, then `continue`) and give back one `List` JSON text and the URL errors call it by.
//!
//! Only the credentials a kubeconfig holds by itself are supported: bearer token, token file,
//! client certificate, basic auth. Exec plugins, auth providers and impersonation are refused
//! with what to do instead: list with kubectl and plan from files.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use reqwest::{StatusCode, Url};
use serde::Deserialize;
use serde_json::{json, Value};

/// Items per page, as kubectl asks for.
const PAGE_SIZE: &str = "500";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const SUPPORTED: &str = "it reads tokens, token files, client certificates and basic auth";
/// What to do when the kubeconfig's credentials are out of reach.
const USE_FILES: &str = "list the cluster with kubectl instead (`kubectl get nodes -o json > nodes.json`, \
                         `kubectl get pods -A -o json > pods.json`) and pass `--nodes nodes.json --pods pods.json`";

/// The parts of a kubeconfig live mode reads; other fields are ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Kubeconfig {
    current_context: Option<String>,
    clusters: Option<Vec<NamedCluster>>,
    contexts: Option<Vec<NamedContext>>,
    users: Option<Vec<NamedUser>>,
}

#[derive(Debug, Deserialize)]
struct NamedCluster {
    name: String,
    cluster: Cluster,
}

#[derive(Debug, Deserialize)]
struct NamedContext {
    name: String,
    context: KubeContext,
}

#[derive(Debug, Deserialize)]
struct NamedUser {
    name: String,
    user: User,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Cluster {
    server: Option<String>,
    certificate_authority: Option<PathBuf>,
    certificate_authority_data: Option<String>,
    #[serde(default)]
    insecure_skip_tls_verify: bool,
    proxy_url: Option<String>,
}

#[derive(Debug, Deserialize)]
struct KubeContext {
    cluster: String,
    #[serde(default)]
    user: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct User {
    token: Option<String>,
    #[serde(rename = "tokenFile")]
    token_file: Option<PathBuf>,
    client_certificate: Option<PathBuf>,
    client_certificate_data: Option<String>,
    client_key: Option<PathBuf>,
    client_key_data: Option<String>,
    username: Option<String>,
    password: Option<String>,
    // Present only to be refused by name.
    exec: Option<Exec>,
    auth_provider: Option<AuthProvider>,
    #[serde(rename = "as")]
    impersonate: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Exec {
    command: Option<String>,
}

#[derive(Debug, Deserialize)]
struct AuthProvider {
    name: Option<String>,
}

/// PEM the kubeconfig names by path, or holds inline (`*-data`, base64; it wins over the path).
#[derive(Debug, PartialEq)]
enum Pem {
    File(PathBuf),
    Inline(Vec<u8>),
}

impl Pem {
    fn read(&self) -> Result<Vec<u8>> {
        match self {
            Pem::File(path) => std::fs::read(path).with_context(|| format!("reading {}", path.display())),
            Pem::Inline(bytes) => Ok(bytes.clone()),
        }
    }
}

/// How requests prove who sends them (besides a client certificate).
#[derive(PartialEq)]
enum Credentials {
    Anonymous,
    Token(String),
    /// Read when the client is built; it wins over `token`, as in client-go.
    TokenFile(PathBuf),
    Basic {
        username: String,
        password: String,
    },
}

/// One kubeconfig context, resolved: where the API is and how to reach it.
struct Target {
    /// The context's user, named in errors about refused credentials.
    user: String,
    server: Url,
    /// Roots to trust instead of the system's.
    ca: Option<Pem>,
    insecure: bool,
    proxy: Option<Url>,
    /// Client certificate and its key.
    identity: Option<(Pem, Pem)>,
    credentials: Credentials,
}

impl Target {
    /// Reads the kubeconfig at `path` and resolves `context` (default: its `current-context`).
    fn load(path: &Path, context: Option<&str>) -> Result<Target> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading kubeconfig {}", path.display()))?;
        Target::parse(path, &text, context).with_context(|| format!("kubeconfig {}", path.display()))
    }

    fn parse(path: &Path, text: &str, context: Option<&str>) -> Result<Target> {
        let config: Kubeconfig = serde_norway::from_str(text).context("not a kubeconfig")?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: PathBuf| if p.is_absolute() { p } else { dir.join(p) };
        let contexts = config.contexts.unwrap_or_default();
        let name = match context.map(str::to_string).or(config.current_context).filter(|c| !c.is_empty()) {
            Some(name) => name,
            None => bail!("no current-context; pick one with --context ({})", context_names(contexts.iter().map(|c| &c.name))),
        };
        let Some(ctx) = contexts.iter().find(|c| c.name == name) else {
            bail!("no context {name:?} ({})", context_names(contexts.iter().map(|c| &c.name)));
        };
        let ctx = &ctx.context;
        let clusters = config.clusters.unwrap_or_default();
        let cluster = &clusters
            .iter()
            .find(|c| c.name == ctx.cluster)
            .ok_or_else(|| anyhow!("context {name:?} names cluster {:?}, which is not in the file", ctx.cluster))?
            .cluster;
        let user = match config.users.unwrap_or_default().into_iter().find(|u| u.name == ctx.user) {
            Some(u) => u.user,
            None if ctx.user.is_empty() => User::default(),
            None => bail!("context {name:?} names user {:?}, which is not in the file", ctx.user),
        };
        let what = format!("user {:?}", ctx.user);
        refuse_unsupported(&what, &user)?;

        let server =
            cluster.server.as_deref().filter(|s| !s.is_empty()).ok_or_else(|| anyhow!("cluster {:?} has no server", ctx.cluster))?;
        let server = Url::parse(server).with_context(|| format!("cluster {:?}: server {server:?} is not a URL", ctx.cluster))?;
        if !matches!(server.scheme(), "https" | "http") {
            bail!("cluster {:?}: server {server} is neither https nor http", ctx.cluster);
        }
        let ca = pem(&cluster.certificate_authority, &cluster.certificate_authority_data, "certificate-authority", &resolve)?;
        if cluster.insecure_skip_tls_verify && ca.is_some() {
            bail!("cluster {:?} sets both a certificate authority and insecure-skip-tls-verify; keep one", ctx.cluster);
        }
        let proxy = match &cluster.proxy_url {
            Some(p) => Some(Url::parse(p).with_context(|| format!("cluster {:?}: proxy-url {p:?} is not a URL", ctx.cluster))?),
            None => None,
        };
        let cert = pem(&user.client_certificate, &user.client_certificate_data, "client-certificate", &resolve)?;
        let key = pem(&user.client_key, &user.client_key_data, "client-key", &resolve)?;
        let identity = match (cert, key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => bail!("{what} has a client certificate or a client key, not both"),
        };
        let credentials = match (user.token_file, user.token, user.username, user.password) {
            (Some(file), ..) => Credentials::TokenFile(resolve(file)),
            (None, Some(token), ..) => Credentials::Token(token),
            (None, None, Some(username), password) => Credentials::Basic { username, password: password.unwrap_or_default() },
            _ => Credentials::Anonymous,
        };
        Ok(Target { user: ctx.user.clone(), server, ca, insecure: cluster.insecure_skip_tls_verify, proxy, identity, credentials })
    }
}

fn refuse_unsupported(what: &str, user: &User) -> Result<()> {
    let how = if let Some(exec) = &user.exec {
        format!("an exec plugin ({})", exec.command.as_deref().unwrap_or("no command"))
    } else if let Some(provider) = &user.auth_provider {
        format!("the auth provider {:?}", provider.name.as_deref().unwrap_or(""))
    } else if let Some(who) = &user.impersonate {
        format!("impersonation of {who:?}")
    } else {
        return Ok(());
    };
    bail!("{what} authenticates with {how}, which ferry does not support ({SUPPORTED}); {USE_FILES}")
}

fn pem(path: &Option<PathBuf>, data: &Option<String>, field: &str, resolve: &impl Fn(PathBuf) -> PathBuf) -> Result<Option<Pem>> {
    Ok(match (path, data) {
        (_, Some(data)) => {
            let compact: String = data.split_whitespace().collect();
            Some(Pem::Inline(STANDARD.decode(compact).with_context(|| format!("{field}-data is not base64"))?))
        }
        (Some(path), None) => Some(Pem::File(resolve(path.clone()))),
        (None, None) => None,
    })
}

fn context_names<'a>(names: impl Iterator<Item = &'a String>) -> String {
    let names: Vec<_> = names.map(String::as_str).collect();
    if names.is_empty() {
        "the file defines no contexts".to_string()
    } else {
        format!("contexts: {}", names.join(", "))
    }
}

/// Credentials ready to go on a request.
enum Auth {
    Anonymous,
    Bearer(String),
    Basic { username: String, password: String },
}

/// A client of one cluster's API, for listing.
pub struct Api {
    http: reqwest::Client,
    server: Url,
    auth: Auth,
    user: String,
}

impl Api {
    /// A client for the kubeconfig's `context` (default: its `current-context`).
    pub fn from_kubeconfig(path: &Path, context: Option<&str>) -> Result<Api> {
        Api::new(Target::load(path, context)?).with_context(|| format!("kubeconfig {}", path.display()))
    }

    /// Reads what `target` names (CA, client certificate and key, token file) and builds the client.
    fn new(target: Target) -> Result<Api> {
        let mut http = reqwest::Client::builder().connect_timeout(CONNECT_TIMEOUT).timeout(REQUEST_TIMEOUT);
        if let Some(ca) = &target.ca {
            let pem = ca.read().context("the cluster's certificate authority")?;
            let roots = reqwest::Certificate::from_pem_bundle(&pem).context("the cluster's certificate authority is not PEM")?;
            anyhow::ensure!(!roots.is_empty(), "the cluster's certificate authority holds no certificate");
            http = http.tls_built_in_root_certs(false);
            for root in roots {
                http = http.add_root_certificate(root);
            }
        }
        http = http.danger_accept_invalid_certs(target.insecure);
        if let Some((cert, key)) = &target.identity {
            let mut pem = cert.read().context("the client certificate")?;
            pem.push(b'\n');
            pem.extend(key.read().context("the client key")?);
            http = http.identity(reqwest::Identity::from_pem(&pem).context("the client certificate and key are not PEM")?);
        }
        if let Some(proxy) = &target.proxy {
            http = http.proxy(reqwest::Proxy::all(proxy.clone()).with_context(|| format!("proxy-url {proxy}"))?);
        }
        let auth = match target.credentials {
            Credentials::Anonymous => Auth::Anonymous,
            Credentials::Token(token) => Auth::Bearer(token),
            Credentials::TokenFile(path) => {
                let token = std::fs::read_to_string(&path).with_context(|| format!("reading token file {}", path.display()))?;
                Auth::Bearer(token.trim().to_string())
            }
            Credentials::Basic { username, password } => Auth::Basic { username, password },
        };
        let http = http.build().context("building the HTTPS client")?;
        Ok(Api { http, server: target.server, auth, user: target.user })
    }

    /// All nodes: `(URL, List JSON)`, as `kubectl get nodes -o json`.
    pub async fn nodes(&self) -> Result<(String, String)> {
        self.list("/api/v1/nodes", None).await
    }

    /// The pods of all namespaces that still hold resources: `(URL, List JSON)`.
    pub async fn pods(&self) -> Result<(String, String)> {
        self.list("/api/v1/pods", Some("status.phase!=Succeeded,status.phase!=Failed")).await
    }

    /// Pages through the collection at `path` and merges the pages' items into one `List`.
    async fn list(&self, path: &str, field_selector: Option<&str>) -> Result<(String, String)> {
        let endpoint = endpoint(&self.server, path);
        let name = endpoint.to_string();
        let mut items = Vec::new();
        let mut next = None;
        loop {
            let page = self.page(page_url(&endpoint, field_selector, next.as_deref()), &name).await?;
            items.extend(page.items.unwrap_or_default());
            match page.metadata.next {
                Some(token) if !token.is_empty() => next = Some(token),
                _ => break,
            }
        }
        Ok((name, json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()))
    }

    async fn page(&self, url: Url, name: &str) -> Result<Page> {
        let request = match &self.auth {
            Auth::Anonymous => self.http.get(url),
            Auth::Bearer(token) => self.http.get(url).bearer_auth(token),
            Auth::Basic { username, password } => self.http.get(url).basic_auth(username, Some(password)),
        };
        let response = request.send().await.with_context(|| format!("{name}: the request to the API server failed"))?;
        let status = response.status();
        let body = response.bytes().await.with_context(|| format!("{name}: reading the answer"))?;
        if !status.is_success() {
            bail!("{name}: {}", refusal(status, &body, &self.user));
        }
        serde_json::from_slice(&body).with_context(|| format!("{name}: the answer is not a Kubernetes list"))
    }
}

/// One page of a list.
#[derive(Deserialize)]
struct Page {
    items: Option<Vec<Value>>,
    #[serde(default)]
    metadata: ListMeta,
}

#[derive(Default, Deserialize)]
struct ListMeta {
    #[serde(rename = "continue")]
    next: Option<String>,
}

/// `path` under the server's URL (which may carry a path prefix, as behind a proxy).
fn endpoint(server: &Url, path: &str) -> Url {
    let mut url = server.clone();
    url.set_path(&format!("{}{path}", server.path().trim_end_matches('/')));
    url.set_query(None);
    url
}

fn page_url(endpoint: &Url, field_selector: Option<&str>, next: Option<&str>) -> Url {
    let mut url = endpoint.clone();
    let mut query = url.query_pairs_mut();
    query.append_pair("limit", PAGE_SIZE);
    if let Some(selector) = field_selector {
        query.append_pair("fieldSelector", selector);
    }
    if let Some(token) = next {
        query.append_pair("continue", token);
    }
    drop(query);
    url
}

/// What a failed request says: the status, the API's own message (a `Status` object's
/// `message`), and what to do about refused credentials.
fn refusal(status: StatusCode, body: &[u8], user: &str) -> String {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(300).collect());
    match status {
        StatusCode::UNAUTHORIZED => {
            format!("{status}: the API refused: {message}; it did not accept the credentials of user {user:?} (expired or wrong?)")
        }
        StatusCode::FORBIDDEN => format!("{status}: the API refused: {message}; the user needs list on nodes and pods"),
        _ => format!("{status}: {message}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBECONFIG: &str = r#"
apiVersion: v1
kind: Config
current-context: edge
preferences: {}
clusters:
- name: edge-cluster
  cluster:
    server: https://10.0.0.1:6443/
    certificate-authority: pki/ca.crt
- name: lab-cluster
  cluster:
    server: https://lab.example.com/k8s/clusters/c-1
    certificate-authority-data: LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0t
- name: test-cluster
  cluster:
    server: http://127.0.0.1:8080
    insecure-skip-tls-verify: true
contexts:
- name: edge
  context: {cluster: edge-cluster, user: planner, namespace: ml}
- name: lab
  context: {cluster: lab-cluster, user: admin}
- name: test
  context: {cluster: test-cluster, user: basic}
- name: sso
  context: {cluster: edge-cluster, user: oidc}
- name: gke
  context: {cluster: edge-cluster, user: gcp}
- name: anonymous
  context: {cluster: test-cluster}
- name: dangling
  context: {cluster: edge-cluster, user: nobody}
users:
- name: planner
  user:
    token: from-the-file
    tokenFile: /var/run/secrets/token
    client-certificate: planner.crt
    client-key: /etc/ferry/planner.key
- name: admin
  user:
    client-certificate-data: Y2VydA==
    client-key-data: "a2V5\n"
    token: abc
- name: basic
  user: {username: ops, password: s3cret}
- name: oidc
  user:
    exec:
      apiVersion: client.authentication.k8s.io/v1
      command: kubelogin
      args: [get-token]
- name: gcp
  user:
    auth-provider: {name: gcp, config: {}}
"#;

    fn parse(context: Option<&str>) -> Result<Target> {
        Target::parse(Path::new("/home/ops/.kube/config"), KUBECONFIG, context)
    }

    fn error(context: Option<&str>) -> String {
        match parse(context) {
            Ok(_) => panic!("context {context:?} was accepted"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn current_context_with_relative_paths_and_token_file() {
        let t = parse(None).expect("parses");
        assert_eq!(t.server.as_str(), "https://10.0.0.1:6443/");
        assert_eq!(t.user, "planner");
        assert_eq!(t.ca, Some(Pem::File("/home/ops/.kube/pki/ca.crt".into())));
        let (cert, key) = t.identity.expect("client certificate");
        assert_eq!(cert, Pem::File("/home/ops/.kube/planner.crt".into()));
        assert_eq!(key, Pem::File("/etc/ferry/planner.key".into()));
        // The token file wins over the token, as in client-go.
        assert!(t.credentials == Credentials::TokenFile("/var/run/secrets/token".into()));
        assert!(!t.insecure && t.proxy.is_none());
    }

    #[test]
    fn inline_data_is_decoded() {
        let t = parse(Some("lab")).expect("parses");
        assert_eq!(t.ca, Some(Pem::Inline(b"-----BEGIN CERTIFICATE-----".to_vec())));
        assert_eq!(t.identity, Some((Pem::Inline(b"cert".to_vec()), Pem::Inline(b"key".to_vec()))));
        assert!(t.credentials == Credentials::Token("abc".into()));
    }

    #[test]
    fn basic_auth_insecure_and_anonymous() {
        let t = parse(Some("test")).expect("parses");
        assert!(t.insecure && t.ca.is_none() && t.identity.is_none());
        assert!(t.credentials == Credentials::Basic { username: "ops".into(), password: "s3cret".into() });
        let t = parse(Some("anonymous")).expect("parses");
        assert!(t.credentials == Credentials::Anonymous && t.user.is_empty());
    }

    #[test]
    fn unsupported_auth_is_refused_by_name_with_the_way_out() {
        let e = error(Some("sso"));
        assert!(e.contains("user \"oidc\"") && e.contains("exec plugin (kubelogin)") && e.contains("--nodes nodes.json"), "{e}");
        let e = error(Some("gke"));
        assert!(e.contains("auth provider \"gcp\"") && e.contains("kubectl get nodes -o json > nodes.json"), "{e}");
    }

    #[test]
    fn missing_names_are_errors_listing_what_exists() {
        let e = error(Some("prod"));
        assert!(e.contains("no context \"prod\"") && e.contains("contexts: edge, lab, test, sso, gke, anonymous, dangling"), "{e}");
        assert!(error(Some("dangling")).contains("names user \"nobody\", which is not in the file"));
        let no_current = KUBECONFIG.replace("current-context: edge", "current-context: \"\"");
        let e = format!("{:#}", Target::parse(Path::new("k"), &no_current, None).err().expect("no current context"));
        assert!(e.contains("no current-context; pick one with --context"), "{e}");
        let no_cluster = KUBECONFIG.replace("cluster: edge-cluster, user: planner", "cluster: gone, user: planner");
        let e = format!("{:#}", Target::parse(Path::new("k"), &no_cluster, None).err().expect("no cluster"));
        assert!(e.contains("names cluster \"gone\""), "{e}");
        let e = format!("{:#}", Target::parse(Path::new("k"), "- just\n- a list\n", None).err().expect("not a kubeconfig"));
        assert!(e.contains("not a kubeconfig"), "{e}");
    }

    #[test]
    fn contradictions_are_errors() {
        let both = KUBECONFIG
            .replace("    insecure-skip-tls-verify: true", "    insecure-skip-tls-verify: true\n    certificate-authority: ca.pem");
        let e = format!("{:#}", Target::parse(Path::new("k"), &both, Some("test")).err().expect("CA and insecure"));
        assert!(e.contains("insecure-skip-tls-verify"), "{e}");
        let half = KUBECONFIG.replace("    client-key: /etc/ferry/planner.key\n", "");
        let e = format!("{:#}", Target::parse(Path::new("k"), &half, None).err().expect("certificate without key"));
        assert!(e.contains("not both"), "{e}");
    }

    #[test]
    fn urls_keep_the_server_prefix_and_encode_the_query() {
        let server = Url::parse("https://lab.example.com/k8s/clusters/c-1").expect("url");
        let pods = endpoint(&server, "/api/v1/pods");
        assert_eq!(pods.as_str(), "https://lab.example.com/k8s/clusters/c-1/api/v1/pods");
        let first = page_url(&pods, Some("status.phase!=Succeeded,status.phase!=Failed"), None);
        assert_eq!(first.query(), Some("limit=500&fieldSelector=status.phase%21%3DSucceeded%2Cstatus.phase%21%3DFailed"));
        let next = page_url(&endpoint(&Url::parse("https://10.0.0.1:6443/").expect("url"), "/api/v1/nodes"), None, Some("eyJ2Ij+/="));
        assert_eq!(next.as_str(), "https://10.0.0.1:6443/api/v1/nodes?limit=500&continue=eyJ2Ij%2B%2F%3D");
    }

    #[test]
    fn refusals_carry_the_apis_message() {
        let message = r#"nodes is forbidden: User \"viewer\" cannot list resource \"nodes\""#;
        let body = format!(r#"{{"kind":"Status","status":"Failure","message":"{message}","reason":"Forbidden","code":403}}"#);
        let e = refusal(StatusCode::FORBIDDEN, body.as_bytes(), "viewer");
        assert!(e.starts_with("403 Forbidden: the API refused: nodes is forbidden: User \"viewer\" cannot list"), "{e}");
        assert!(e.ends_with("the user needs list on nodes and pods"), "{e}");
        assert_eq!(refusal(StatusCode::BAD_GATEWAY, b"upstream down", "u"), "502 Bad Gateway: upstream down");
    }
}
