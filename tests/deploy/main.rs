//! Tests of what `deploy/` ships for running Ferry on real machines.
//!
//! - `kubernetes`: every manifest in `deploy/kubernetes` parses into Kubernetes' own API types
//!   (k8s-openapi) and back without losing a field, and says what matters: host paths, mount
//!   propagation, privilege, the downward API, the Secrets, the init container, the probes; its
//!   `ferry.toml` is loaded by the real binary, and a node runs with it.
//! - `helm`: the chart in `deploy/helm/ferry`, linted and rendered by `helm` itself, gives the
//!   same objects as the plain manifests (as `kubectl kustomize` renders them) with its default
//!   values, and follows its values.
//! - `install`: `deploy/install.sh --root` installs into a scratch root and `--uninstall` removes
//!   it all, putting back the hosts.toml it replaced byte for byte; the systemd unit passes
//!   `systemd-analyze verify`.
//!
//! Run alone with `cargo test --test deploy`. Needs bash, coreutils, systemd-analyze (package
//! systemd; systemd need not run), and helm and kubectl where `tests/k8s-tools.sh` puts them
//! (`tests/run.sh` runs it); no cluster.

mod helm;
mod install;
mod kubernetes;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// `helm` or `kubectl`, as `tests/k8s-tools.sh` installs them: in `$FERRY_FIXTURES/k8s-tools`,
/// else `<target dir>/ferry-fixtures/k8s-tools`.
pub fn k8s_tool(name: &str) -> PathBuf {
    let fixtures = match std::env::var_os("FERRY_FIXTURES") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_TARGET_TMPDIR")).parent().expect("the target dir").join("ferry-fixtures"),
    };
    let path = fixtures.join("k8s-tools").join(name);
    assert!(path.is_file(), "{} is missing: run `bash tests/k8s-tools.sh` (tests/run.sh does)", path.display());
    path
}

pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The YAML documents of `text` (`what` names it in failures); empty documents are dropped.
pub fn documents(text: &str, what: &str) -> Vec<Value> {
    serde_norway::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{what} is not YAML: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

/// `doc` as the Kubernetes type `T`, checked both ways: it must deserialize (right apiVersion,
/// kind and field types), and serializing it again must give `doc` back, so a misspelt or
/// misplaced field, which the API types would silently drop, fails here.
pub fn typed<T: k8s_openapi::Resource + DeserializeOwned + Serialize>(doc: &Value) -> T {
    let name = doc.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("?");
    let obj: T = serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{} {name}: {e}", T::KIND));
    let back = serde_json::to_value(&obj).expect("serialize");
    if back != *doc {
        panic!(
            "{} {name} has fields the Kubernetes API does not know (or of the wrong type):\nwritten:  {}\nAPI type: {}",
            T::KIND,
            serde_json::to_string_pretty(doc).expect("json"),
            serde_json::to_string_pretty(&back).expect("json")
        );
    }
    obj
}

/// Checks every document against the API type its apiVersion and kind name (a ServiceMonitor,
/// which k8s-openapi does not have, against the fields Prometheus Operator reads); returns kinds.
pub fn check_kinds(docs: &[Value]) -> Vec<String> {
    let mut kinds = Vec::new();
    for doc in docs {
        let kind = doc["kind"].as_str().unwrap_or_else(|| panic!("a document without kind: {doc}"));
        match (doc["apiVersion"].as_str().unwrap_or(""), kind) {
            ("v1", "Namespace") => drop(typed::<Namespace>(doc)),
            ("v1", "ServiceAccount") => drop(typed::<ServiceAccount>(doc)),
            ("v1", "ConfigMap") => drop(typed::<ConfigMap>(doc)),
            ("v1", "Service") => drop(typed::<Service>(doc)),
            ("apps/v1", "DaemonSet") => drop(typed::<DaemonSet>(doc)),
            ("monitoring.coreos.com/v1", "ServiceMonitor") => check_service_monitor(doc),
            (api, kind) => panic!("unexpected {api} {kind}"),
        }
        kinds.push(kind.to_string());
    }
    kinds.sort();
    kinds
}

fn check_service_monitor(doc: &Value) {
    let keys = |v: &Value| v.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()).unwrap_or_default();
    assert_eq!(keys(doc), ["apiVersion", "kind", "metadata", "spec"], "{doc}");
    assert_eq!(keys(&doc["spec"]), ["endpoints", "selector"], "{doc}");
    assert!(doc.pointer("/spec/selector/matchLabels/app.kubernetes.io~1name").is_some(), "{doc}");
    let endpoint = &doc["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], "metrics");
    assert_eq!(endpoint["path"], "/metrics");
}

/// The one document of `kind` among `docs`, as `T`.
pub fn one<T: k8s_openapi::Resource + DeserializeOwned + Serialize>(docs: &[Value]) -> T {
    let found: Vec<_> = docs.iter().filter(|d| d["kind"] == T::KIND).collect();
    assert_eq!(found.len(), 1, "one {} expected", T::KIND);
    typed(found[0])
}

/// The `ferry.toml` a ConfigMap holds.
pub fn ferry_toml(cm: &ConfigMap) -> String {
    cm.data.as_ref().and_then(|d| d.get("ferry.toml")).cloned().expect("the ConfigMap holds ferry.toml")
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    if !out.status.success() {
        panic!("{cmd:?} failed ({}):\n{}{}", out.status, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    out
}

/// `ferry containerd-config --config <toml> --apply DIR` (the init container's command, the
/// paths in a temp dir): the config must load, and the hosts.toml files come back by registry.
pub fn containerd_config(toml: &str) -> Vec<(String, String)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("ferry.toml");
    std::fs::write(&config, toml).expect("write config");
    let certs = dir.path().join("certs.d");
    run(Command::new(FERRY).arg("containerd-config").arg("--config").arg(&config).arg("--apply").arg(&certs));
    let mut hosts: Vec<_> = std::fs::read_dir(&certs)
        .expect("certs.d")
        .map(|e| {
            let e = e.expect("entry");
            (e.file_name().to_string_lossy().into_owned(), read(&e.path().join("hosts.toml")))
        })
        .collect();
    hosts.sort();
    hosts
}

/// Starts `ferry node --config <toml>` with only what cannot work outside a cluster node
/// overridden (paths into a temp dir, loopback ports, the Secrets' contents, no mDNS), waits
/// until `ferry status` (what an exec probe would run) answers, and returns its JSON. So every
/// other setting of the file is validated by the node itself.
pub fn node_status_with(toml: &str) -> Value {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("ferry.toml");
    std::fs::write(&config, toml).expect("write config");
    let key = dir.path().join("swarm.key");
    let made = run(Command::new("bash").arg(repo_path("deploy/make-cluster-key.sh")));
    std::fs::write(&key, &made.stdout).expect("write key");
    let keygen = run(Command::new(FERRY).args(["prewarm", "keygen", "-o"]).arg(dir.path().join("operator.key")));
    let operator = String::from_utf8(keygen.stdout).expect("utf8").trim().to_string();
    let admin = dir.path().join("admin.sock");
    let port = || std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let log = std::fs::File::create(dir.path().join("node.log")).expect("log");
    let mut child = Command::new(FERRY)
        .arg("node")
        .arg("--config")
        .arg(&config)
        .arg("--store")
        .arg(dir.path().join("store"))
        .args(["--registry-listen", &format!("127.0.0.1:{}", port())])
        .args(["--metrics-listen", &format!("127.0.0.1:{}", port())])
        .arg("--admin-socket")
        .arg(&admin)
        .arg("--snapshotter-socket")
        .arg(dir.path().join("snapshotter.sock"))
        .args(["--p2p-listen", "/ip4/127.0.0.1/tcp/0", "--mdns", "false", "--node-name", "test-node", "--operator-key", &operator])
        .arg("--psk-file")
        .arg(&key)
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start ferry node");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        let out = Command::new(FERRY).args(["status", "--json", "--admin-socket"]).arg(&admin).output().expect("ferry status");
        if out.status.success() {
            break serde_json::from_slice::<Value>(&out.stdout).expect("status JSON");
        }
        if Instant::now() > deadline || child.try_wait().expect("try_wait").is_some() {
            let _ = child.kill();
            panic!("ferry node did not come up with this config:\n{toml}\nits log:\n{}", read(&dir.path().join("node.log")));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = child.kill();
    let _ = child.wait();
    status
}
