//! `ferry prewarm plan --kubeconfig`: live mode, the node and pod lists read from a Kubernetes
//! API instead of files, gives the same plan as the files, and its refusals say what to do.
//!
//! The API here is a **stand-in API server**, not Kubernetes (whose API server is not packaged
//! for Debian 12): [`StandInApi`] speaks the part of the API live mode uses. It serves HTTPS with a
//! certificate from the test CA; answers `GET /api/v1/nodes` and `GET /api/v1/pods` (`limit`,
//! `continue`, and for pods the `fieldSelector` that leaves out finished pods) with the planner's
//! fixtures in two pages each, items without `kind` as the API sends them; and answers refusals
//! with Kubernetes `Status` objects. It authenticates bearer tokens, or, in its other mode, client
//! certificates the test CA issued (rustls verifies them in the handshake).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use reqwest::Url;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection, StreamOwned};
use serde_json::{json, Value};

use crate::harness::ferry::FERRY_BIN;
use crate::harness::tls::{IssuedCert, TestCa};
use crate::harness::{run_cmd, run_ok, temp_dir};

const T: Duration = Duration::from_secs(60);
/// The token of a user allowed to list nodes and pods.
const PLANNER_TOKEN: &str = "planner-token";
/// The token of a user the API knows but RBAC does not let list nodes.
const VIEWER_TOKEN: &str = "viewer-token";
const FINISHED_PODS: &str = "status.phase!=Succeeded,status.phase!=Failed";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("p2p-node/tests/fixtures/prewarm")
}

/// `ferry prewarm plan --output json` on the fixtures' holdings and rollouts; the caller adds
/// where the nodes and pods come from.
fn plan() -> Command {
    let f = fixtures();
    let mut cmd = Command::new(FERRY_BIN);
    cmd.args(["prewarm", "plan", "--output", "json", "--holdings"]).arg(f.join("holdings.json")).arg(f.join("rollouts.yaml"));
    // The stand-in listens on loopback: no proxy from the environment in between.
    cmd.env("NO_PROXY", "*").env("no_proxy", "*");
    cmd
}

/// Live mode with `kubeconfig` and, if given, `--context`.
fn live(kubeconfig: &Path, context: Option<&str>) -> Command {
    let mut cmd = plan();
    cmd.arg("--kubeconfig").arg(kubeconfig);
    if let Some(context) = context {
        cmd.args(["--context", context]);
    }
    cmd
}

fn plan_from_files() -> String {
    let f = fixtures();
    run_ok(plan().arg("--nodes").arg(f.join("nodes.json")).arg("--pods").arg(f.join("pods.json")), T)
}

/// The kubeconfig of the token tests: a context per user, relative paths for the CA and the token
/// file (resolved against the kubeconfig's folder).
fn token_kubeconfig(dir: &Path, api: &StandInApi, ca: &TestCa) -> PathBuf {
    std::fs::copy(&ca.cert, dir.join("cluster-ca.pem")).expect("copy CA");
    std::fs::write(dir.join("planner.token"), format!("{PLANNER_TOKEN}\n")).expect("write token file");
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: planner\nclusters:\n\
         - name: stand-in\n  cluster:\n    server: {}\n    certificate-authority: cluster-ca.pem\n\
         contexts:\n\
         - {{name: planner, context: {{cluster: stand-in, user: planner}}}}\n\
         - {{name: stranger, context: {{cluster: stand-in, user: stranger}}}}\n\
         - {{name: viewer, context: {{cluster: stand-in, user: viewer}}}}\n\
         - {{name: sso, context: {{cluster: stand-in, user: sso}}}}\n\
         users:\n\
         - {{name: planner, user: {{tokenFile: planner.token}}}}\n\
         - {{name: stranger, user: {{token: not-a-token-the-api-knows}}}}\n\
         - {{name: viewer, user: {{token: {VIEWER_TOKEN}}}}}\n\
         - name: sso\n  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      \
         command: kubelogin\n      args: [get-token]\n",
        api.url()
    );
    let path = dir.join("kubeconfig");
    std::fs::write(&path, kubeconfig).expect("write kubeconfig");
    path
}

#[test]
fn live_plan_is_the_plan_from_files() {
    let work = temp_dir("prewarm-live");
    let ca = TestCa::new(&work.path().join("ca"));
    let api = StandInApi::start(&ca, Auth::Tokens);
    let kubeconfig = token_kubeconfig(work.path(), &api, &ca);
    let from_api = run_ok(&mut live(&kubeconfig, None), T);
    assert_eq!(from_api, plan_from_files(), "the live plan differs from the plan from files");
    // Two pages of nodes, then two of pods, the second of each asked for by its continue token.
    let served = api.served();
    assert_eq!(served.len(), 4, "{served:?}");
    assert!(served[0].starts_with("/api/v1/nodes?") && served[1].contains("continue="), "{served:?}");
    assert!(served[2].starts_with("/api/v1/pods?") && served[3].contains("continue="), "{served:?}");
}

#[test]
fn refused_credentials_name_the_server_and_the_status() {
    let work = temp_dir("prewarm-live-refused");
    let ca = TestCa::new(&work.path().join("ca"));
    let api = StandInApi::start(&ca, Auth::Tokens);
    let kubeconfig = token_kubeconfig(work.path(), &api, &ca);
    let nodes_url = format!("{}/api/v1/nodes", api.url());

    let out = run_cmd(&mut live(&kubeconfig, Some("stranger")), T);
    assert!(!out.success, "a wrong token was accepted");
    for want in [nodes_url.as_str(), "401 Unauthorized", "user \"stranger\""] {
        assert!(out.stderr.contains(want), "{want:?} missing from: {}", out.stderr);
    }

    let out = run_cmd(&mut live(&kubeconfig, Some("viewer")), T);
    assert!(!out.success, "a user without RBAC got the nodes");
    let forbidden = "403 Forbidden: the API refused: nodes is forbidden: User \"viewer\" cannot list resource \"nodes\"";
    for want in [nodes_url.as_str(), forbidden, "the user needs list on nodes and pods"] {
        assert!(out.stderr.contains(want), "{want:?} missing from: {}", out.stderr);
    }
    assert!(api.served().is_empty(), "refused requests were served: {:?}", api.served());
}

#[test]
fn unsupported_auth_and_conflicting_flags_are_clear_errors() {
    let work = temp_dir("prewarm-live-flags");
    let ca = TestCa::new(&work.path().join("ca"));
    let api = StandInApi::start(&ca, Auth::Tokens);
    let kubeconfig = token_kubeconfig(work.path(), &api, &ca);
    let f = fixtures();

    let out = run_cmd(&mut live(&kubeconfig, Some("sso")), T);
    assert!(!out.success, "an exec user was accepted");
    for want in
        ["user \"sso\" authenticates with an exec plugin (kubelogin)", "kubectl get nodes -o json > nodes.json", "--nodes nodes.json"]
    {
        assert!(out.stderr.contains(want), "{want:?} missing from: {}", out.stderr);
    }
    assert!(out.stderr.contains(&kubeconfig.display().to_string()), "the kubeconfig is not named: {}", out.stderr);

    let out = run_cmd(&mut plan(), T);
    assert!(!out.success && out.stderr.contains("--nodes") && out.stderr.contains("--kubeconfig"), "neither: {}", out.stderr);
    let out = run_cmd(live(&kubeconfig, None).arg("--nodes").arg(f.join("nodes.json")), T);
    assert!(!out.success && out.stderr.contains("cannot be used with"), "both: {}", out.stderr);
    let out = run_cmd(live(&kubeconfig, None).arg("--pods").arg(f.join("pods.json")), T);
    assert!(!out.success && out.stderr.contains("--pods") && out.stderr.contains("cannot be used with"), "--pods: {}", out.stderr);
    let out = run_cmd(plan().arg("--nodes").arg(f.join("nodes.json")).args(["--context", "planner"]), T);
    let conflict = out.stderr.contains("cannot be used with") && out.stderr.contains("'--context <NAME>'");
    assert!(!out.success && conflict, "--context, no kubeconfig: {}", out.stderr);
    assert!(api.served().is_empty(), "{:?}", api.served());
}

#[test]
fn client_certificate_auth() {
    let work = temp_dir("prewarm-live-cert");
    let ca = TestCa::new(&work.path().join("ca"));
    let api = StandInApi::start(&ca, Auth::ClientCerts);
    let client = ca.issue_client_cert("planner");
    let data = |path: &Path| STANDARD.encode(std::fs::read(path).expect("read PEM"));
    let with_cert = format!(
        "apiVersion: v1\nkind: Config\ncurrent-context: planner\n\
         clusters:\n- name: stand-in\n  cluster:\n    server: {}\n    certificate-authority-data: {}\n\
         contexts:\n- {{name: planner, context: {{cluster: stand-in, user: planner}}}}\n\
         - {{name: nobody, context: {{cluster: stand-in}}}}\n\
         users:\n- name: planner\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
        api.url(),
        data(&ca.cert),
        data(&client.cert),
        data(&client.key)
    );
    let kubeconfig = work.path().join("kubeconfig");
    std::fs::write(&kubeconfig, with_cert).expect("write kubeconfig");
    let from_api = run_ok(&mut live(&kubeconfig, None), T);
    assert_eq!(from_api, plan_from_files(), "the live plan differs from the plan from files");
    assert_eq!(api.served().len(), 4, "{:?}", api.served());

    // The stand-in really requires the certificate: without one the handshake fails.
    let out = run_cmd(&mut live(&kubeconfig, Some("nobody")), T);
    assert!(!out.success, "no client certificate, yet the nodes were listed");
    let refused = out.stderr.contains(&format!("{}/api/v1/nodes", api.url())) && out.stderr.contains("CertificateRequired");
    assert!(refused, "{}", out.stderr);
}

/// How the stand-in authenticates requests.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Auth {
    /// `Authorization: Bearer`: [`PLANNER_TOKEN`] may list, [`VIEWER_TOKEN`] is forbidden (403),
    /// anything else is unauthorized (401).
    Tokens,
    /// Client certificates issued by the test CA, required in the TLS handshake.
    ClientCerts,
}

/// The stand-in API server (see the module header); stops on drop.
struct StandInApi {
    port: u16,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    tls: Arc<ServerConfig>,
    auth: Auth,
    nodes: Vec<Value>,
    pods: Vec<Value>,
    stop: AtomicBool,
    /// Request targets answered with a page, in order: what proves pagination happened.
    served: Mutex<Vec<String>>,
}

impl StandInApi {
    fn start(ca: &TestCa, auth: Auth) -> Self {
        let server_cert = ca.issue_server_cert("stand-in-api");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the stand-in API");
        listener.set_nonblocking(true).expect("nonblocking listener");
        let port = listener.local_addr().expect("stand-in API address").port();
        let shared = Arc::new(Shared {
            tls: tls_config(ca, &server_cert, auth),
            auth,
            nodes: api_items("nodes.json"),
            pods: api_items("pods.json"),
            stop: AtomicBool::new(false),
            served: Mutex::new(Vec::new()),
        });
        let for_thread = shared.clone();
        let thread = std::thread::spawn(move || accept_loop(listener, for_thread));
        StandInApi { port, shared, thread: Some(thread) }
    }

    fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    fn served(&self) -> Vec<String> {
        self.shared.served.lock().expect("served lock").clone()
    }
}

impl Drop for StandInApi {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A fixture's items as the API lists them: without `kind` and `apiVersion`.
fn api_items(fixture: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(fixtures().join(fixture)).expect("read fixture");
    let list: Value = serde_json::from_str(&text).expect("fixture is JSON");
    let mut items = list["items"].as_array().expect("fixture has items").clone();
    for item in &mut items {
        let item = item.as_object_mut().expect("item is an object");
        item.remove("kind");
        item.remove("apiVersion");
    }
    items
}

fn tls_config(ca: &TestCa, server: &IssuedCert, auth: Auth) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let pem_certs = |path: &Path| -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_file_iter(path).expect("open PEM").collect::<Result<_, _>>().expect("PEM certificates")
    };
    let builder = ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().expect("TLS versions");
    let builder = match auth {
        Auth::Tokens => builder.with_no_client_auth(),
        Auth::ClientCerts => {
            let mut roots = RootCertStore::empty();
            for cert in pem_certs(&ca.cert) {
                roots.add(cert).expect("CA certificate");
            }
            builder.with_client_cert_verifier(
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().expect("client verifier"),
            )
        }
    };
    let key = PrivateKeyDer::from_pem_file(&server.key).expect("server key");
    Arc::new(builder.with_single_cert(pem_certs(&server.cert), key).expect("server certificate"))
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, _)) => {
                let shared = shared.clone();
                std::thread::spawn(move || {
                    // A failed handshake (no client certificate) ends here, as it should.
                    let _ = serve(stream, &shared);
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// One request per connection (`Connection: close`).
fn serve(tcp: TcpStream, shared: &Shared) -> std::io::Result<()> {
    tcp.set_nonblocking(false)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut tls = StreamOwned::new(ServerConnection::new(shared.tls.clone()).map_err(std::io::Error::other)?, tcp);
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tls.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let (status, body) = answer(&String::from_utf8_lossy(&head), shared);
    let response =
        format!("HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    tls.write_all(response.as_bytes())?;
    tls.conn.send_close_notify();
    tls.flush()
}

/// The status line and JSON body for one request head.
fn answer(head: &str, shared: &Shared) -> (&'static str, String) {
    let mut lines = head.lines();
    let target = lines.next().and_then(|l| l.split_whitespace().nth(1)).unwrap_or("/").to_string();
    let authorization = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("authorization"))
        .map(|(_, value)| value.trim().to_string());
    let url = Url::parse(&format!("https://stand-in{target}")).expect("request target");
    let resource = url.path().rsplit('/').next().unwrap_or_default().to_string();
    if shared.auth == Auth::Tokens {
        match authorization.as_deref().and_then(|a| a.strip_prefix("Bearer ")) {
            Some(PLANNER_TOKEN) => {}
            Some(VIEWER_TOKEN) => {
                let message = format!(
                    "{resource} is forbidden: User \"viewer\" cannot list resource \"{resource}\" in API group \"\" at the cluster scope"
                );
                return status("403 Forbidden", "Forbidden", &message);
            }
            _ => return status("401 Unauthorized", "Unauthorized", "Unauthorized"),
        }
    }
    let query: HashMap<String, String> = url.query_pairs().into_owned().collect();
    let items: Vec<&Value> = match url.path() {
        "/api/v1/nodes" => shared.nodes.iter().collect(),
        "/api/v1/pods" if query.get("fieldSelector").map(String::as_str) == Some(FINISHED_PODS) => {
            shared.pods.iter().filter(|p| !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))).collect()
        }
        "/api/v1/pods" => return status("400 Bad Request", "BadRequest", &format!("unexpected fieldSelector in {target}")),
        _ => return status("404 Not Found", "NotFound", "the server could not find the requested resource"),
    };
    if query.get("limit").map(String::as_str) != Some("500") {
        return status("400 Bad Request", "BadRequest", &format!("no limit=500 in {target}"));
    }
    // The token holds characters a client must encode ('+' would decode as a space).
    let second_page = format!("{resource}+page/2=");
    let half = items.len().div_ceil(2);
    let (page, next) = match query.get("continue") {
        None => (&items[..half], Some(second_page)),
        Some(token) if *token == second_page => (&items[half..], None),
        Some(_) => return status("410 Gone", "Expired", "The provided continue parameter is too old"),
    };
    shared.served.lock().expect("served lock").push(target);
    let mut metadata = json!({"resourceVersion": "4242"});
    if let Some(next) = next {
        metadata["continue"] = json!(next);
    }
    let kind = if resource == "nodes" { "NodeList" } else { "PodList" };
    ("200 OK", json!({"kind": kind, "apiVersion": "v1", "metadata": metadata, "items": page}).to_string())
}

/// A Kubernetes `Status` failure.
fn status(line: &'static str, reason: &str, message: &str) -> (&'static str, String) {
    let code: u16 = line[..3].parse().expect("status code");
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    });
    (line, body.to_string())
}
