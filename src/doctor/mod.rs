//! `ferry doctor`: checks what silently breaks a node's setup — containerd's version and config
//! (CRI's `config_path`, its snapshotter and pull path, `[proxy_plugins.ferry]`), the `hosts.toml`
//! of every upstream, FUSE and overlayfs, the node's ports and sockets, the running node (peers,
//! mirror, upstreams) and the store's disk — and says, per check, OK / INFO / WARN / FAIL, what is
//! wrong and how to fix it. Exits non-zero when any check FAILs (something that stops pulls or lazy
//! layers from working); WARN is worth fixing but nothing stops; INFO only informs.
//!
//! Each group of checks has its own module. What decides a check's outcome is a pure function of
//! parsed input (a containerd TOML, a hosts.toml, `/proc/filesystems`, disk numbers), unit-tested
//! without I/O; the I/O (reading files, asking containerd over its socket, probing URLs, each with a
//! timeout) happens in `run` and in the modules' `gather`/`probe` functions.

mod containerd;
mod containerd_toml;
mod cri;
mod disk;
mod fuse;
mod hosts;
mod node;
mod ports;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Result;
use serde::Serialize;

use crate::cli::{DoctorArgs, OutputFormat};
use crate::config;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// As it should be.
    Ok,
    /// Nothing to fix; worth knowing.
    Info,
    /// Works, but not as well as it could, or not for every path.
    Warn,
    /// Blocks pulls through the node or lazy layers: `ferry doctor` exits non-zero.
    Fail,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Info => "INFO",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Stable, dotted: `cri.config_path`, `hosts.<registry>`, `upstream.<registry>`.
    pub name: String,
    pub status: Status,
    /// What was found.
    pub detail: String,
    /// What to do about it (absent when there is nothing to do).
    pub fix: Option<String>,
}

impl Check {
    pub fn ok(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check { name: name.into(), status: Status::Ok, detail: detail.into(), fix: None }
    }

    pub fn info(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check { name: name.into(), status: Status::Info, detail: detail.into(), fix: None }
    }

    pub fn warn(name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check { name: name.into(), status: Status::Warn, detail: detail.into(), fix: Some(fix.into()) }
    }

    pub fn fail(name: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Check {
        Check { name: name.into(), status: Status::Fail, detail: detail.into(), fix: Some(fix.into()) }
    }

    /// One check from several findings about the same thing: the worst status, every detail,
    /// every fix; `ok` when there are no findings.
    pub fn combine(name: impl Into<String>, findings: Vec<Check>, ok: impl Into<String>) -> Check {
        let Some(status) = findings.iter().map(|f| f.status).max() else { return Check::ok(name, ok) };
        let detail = findings.iter().map(|f| f.detail.as_str()).collect::<Vec<_>>().join("; ");
        let fixes: Vec<&str> = findings.iter().filter_map(|f| f.fix.as_deref()).collect();
        Check { name: name.into(), status, detail, fix: (!fixes.is_empty()).then(|| fixes.join("; ")) }
    }
}

/// What the node needs from the host, from the Ferry config the node would run with.
#[derive(Debug, Clone)]
pub struct Ferry {
    pub registry_listen: SocketAddr,
    pub metrics_listen: Option<SocketAddr>,
    pub admin_socket: PathBuf,
    /// The Snapshots API socket; `None`: the snapshotter is off.
    pub snapshotter_socket: Option<PathBuf>,
    /// `(name containerd uses, URL the node reaches it at)`.
    pub upstreams: Vec<(String, String)>,
    pub extra_ca_files: Vec<PathBuf>,
    pub p2p: bool,
    pub store_path: PathBuf,
    /// `store.capacity` as written (`80%`, `500GiB`).
    pub capacity: String,
    pub high_watermark: f64,
    /// containerd's certs.d folder when the node keeps its hosts.toml files there itself.
    pub containerd_hosts: Option<PathBuf>,
    /// Doctor runs in a Kubernetes pod (`KUBERNETES_SERVICE_HOST` is set), as in `kubectl exec`
    /// into the DaemonSet's: the node then is a container of the containerd it serves.
    pub in_pod: bool,
}

/// Where containerd's side lives.
#[derive(Debug, Clone)]
pub struct Paths {
    pub containerd_config: PathBuf,
    pub containerd_address: PathBuf,
    pub certs_dir: PathBuf,
}

pub async fn run(args: DoctorArgs) -> Result<()> {
    let checks = diagnose(&args).await;
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&checks)?),
        OutputFormat::Text => print!("{}", render(&checks)),
    }
    let failed = checks.iter().filter(|c| c.status == Status::Fail).count();
    if failed > 0 {
        anyhow::bail!("{failed} blocking problem{} (FAIL) found", if failed == 1 { "" } else { "s" });
    }
    Ok(())
}

async fn diagnose(args: &DoctorArgs) -> Vec<Check> {
    let mut checks = Vec::new();
    let ferry = match load_ferry(args) {
        Ok(f) => {
            checks.push(Check::ok("ferry.config", describe_config(args)));
            Some(f)
        }
        Err(e) => {
            checks.push(Check::fail(
                "ferry.config",
                format!("the node's configuration does not load: {e:#}"),
                "fix the config file or flags: `ferry node` refuses to start with them",
            ));
            None
        }
    };
    let loaded = containerd_toml::load(&args.containerd_config);
    let address = args.containerd_address.clone().unwrap_or_else(|| {
        loaded.as_ref().ok().and_then(|c| c.grpc_address.clone()).unwrap_or_else(|| PathBuf::from("/run/containerd/containerd.sock"))
    });
    let paths = Paths { containerd_config: args.containerd_config.clone(), containerd_address: address, certs_dir: args.certs_dir.clone() };
    let live = containerd::probe(&paths.containerd_address).await;
    checks.push(containerd::version_check(&live, &paths.containerd_address));
    let version = live.version();
    match &loaded {
        Ok(cfg) => {
            let file = containerd::config_check(cfg, version, &paths.containerd_config);
            // A file this containerd cannot read has its keys in the wrong places: fix that first.
            let readable = file.status != Status::Fail;
            checks.push(file);
            if let Some(f) = ferry.as_ref().filter(|_| readable) {
                checks.push(containerd::plugins_check(cfg, &live, f));
                checks.extend(cri::evaluate(cfg, version, f, &paths.certs_dir));
            }
        }
        Err(e) => checks.push(containerd::config_error(e, &paths.containerd_config)),
    }
    let snapshotter_on = ferry.as_ref().is_none_or(|f| f.snapshotter_socket.is_some());
    checks.extend(fuse::gather(snapshotter_on));
    let Some(ferry) = ferry else { return checks };
    let node_writes = ferry.containerd_hosts.as_deref() == Some(paths.certs_dir.as_path());
    for (host, _) in &ferry.upstreams {
        checks.push(hosts::check(&paths.certs_dir, host, ferry.registry_listen, node_writes));
    }
    let status = node::status(&ferry.admin_socket).await;
    checks.extend(ports::gather(&ferry, status.as_ref()).await);
    checks.extend(node::gather(&ferry, status.as_ref()).await);
    checks.push(disk::gather(&ferry, status.as_ref()));
    checks
}

fn load_ferry(args: &DoctorArgs) -> Result<Ferry> {
    let file = config::load(&args.flags)?;
    let s = file.node_settings()?;
    Ok(Ferry {
        registry_listen: s.registry_listen,
        metrics_listen: s.metrics_listen,
        admin_socket: s.admin_socket,
        snapshotter_socket: s.snapshotter_socket,
        upstreams: s.mirror.upstreams.iter().map(|u| (u.host.clone(), u.url.to_string())).collect(),
        extra_ca_files: s.mirror.extra_ca_files,
        p2p: s.p2p.is_some(),
        store_path: s.store_path,
        capacity: file.store.capacity.clone(),
        high_watermark: file.store.high_watermark,
        containerd_hosts: s.containerd_hosts,
        in_pod: std::env::var_os("KUBERNETES_SERVICE_HOST").is_some(),
    })
}

fn describe_config(args: &DoctorArgs) -> String {
    match &args.flags.config {
        Some(path) => format!("{} and flags load and validate", path.display()),
        None => "flags load and validate (no config file)".to_string(),
    }
}

/// The checks as a list a person reads: status, name, detail, and the fix under it.
pub fn render(checks: &[Check]) -> String {
    let width = checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let mut out = String::new();
    for c in checks {
        out.push_str(&format!("{:<4}  {:<width$}  {}\n", c.status.label(), c.name, c.detail));
        if let Some(fix) = &c.fix {
            out.push_str(&format!("{:<4}  {:<width$}  fix: {fix}\n", "", ""));
        }
    }
    let count = |s: Status| checks.iter().filter(|c| c.status == s).count();
    out.push_str(&format!(
        "\n{} FAIL, {} WARN, {} INFO, {} OK\n",
        count(Status::Fail),
        count(Status::Warn),
        count(Status::Info),
        count(Status::Ok)
    ));
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A node with the snapshotter on, one upstream, the default addresses.
    pub fn ferry() -> Ferry {
        Ferry {
            registry_listen: ([127, 0, 0, 1], 5050).into(),
            metrics_listen: Some(([127, 0, 0, 1], 9464).into()),
            admin_socket: "/run/ferry/admin.sock".into(),
            snapshotter_socket: Some("/run/ferry/snapshotter.sock".into()),
            upstreams: vec![("registry.local".into(), "http://10.0.0.5:5000/".into())],
            extra_ca_files: Vec::new(),
            p2p: false,
            store_path: "/var/lib/ferry".into(),
            capacity: "80%".into(),
            high_watermark: 0.9,
            containerd_hosts: None,
            in_pod: false,
        }
    }

    #[test]
    fn text_output_lists_each_check_with_its_fix_and_counts() {
        let checks =
            vec![Check::ok("containerd.version", "containerd 1.6.20"), Check::fail("cri.config_path", "config_path is not set", "set it")];
        let text = render(&checks);
        assert!(text.contains("OK    containerd.version  containerd 1.6.20\n"), "{text}");
        assert!(text.contains("FAIL  cri.config_path     config_path is not set\n"), "{text}");
        assert!(text.contains("fix: set it\n"), "{text}");
        assert!(text.ends_with("1 FAIL, 0 WARN, 0 INFO, 1 OK\n"), "{text}");
    }

    #[test]
    fn json_names_statuses_in_lowercase_and_keeps_an_absent_fix() {
        let json = serde_json::to_value(vec![Check::ok("a", "b")]).expect("json");
        assert_eq!(json, serde_json::json!([{"name": "a", "status": "ok", "detail": "b", "fix": null}]));
    }
}
