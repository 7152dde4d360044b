//! `certs.d/<registry>/hosts.toml` for each upstream: containerd pulls a registry through the
//! node only if that file lists the node's mirror — over plain HTTP, with the `pull` capability
//! (and `resolve`, so tags resolve through the node too), before any other host (containerd tries
//! hosts in file order). Without the file, containerd goes straight to the registry.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use toml::Value;

use super::Check;

/// Finds and evaluates the hosts.toml containerd would use for `registry`
/// (`<certs>/<registry>/hosts.toml`, else `<certs>/_default/hosts.toml`). `node_writes`: the
/// node keeps these files itself (`registry.containerd_hosts` is this folder), so a missing one
/// means the node is not running, which containerd survives.
pub fn check(certs_dir: &Path, registry: &str, mirror: SocketAddr, node_writes: bool) -> Check {
    let name = format!("hosts.{registry}");
    let own = certs_dir.join(registry).join("hosts.toml");
    let path = [own.clone(), certs_dir.join("_default").join("hosts.toml")].into_iter().find(|p| p.is_file());
    let Some(path) = path else {
        if node_writes {
            return Check::warn(
                name,
                format!("no {}: the node writes it when it starts and takes it out when it stops, so containerd pulls {registry} straight from the registry until the node runs", own.display()),
                "start the node",
            );
        }
        return Check::fail(
            name,
            format!("no {}: containerd pulls {registry} straight from the registry, not through the node", own.display()),
            format!("ferry containerd-config --apply {}", certs_dir.display()),
        );
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => evaluate(&name, &path.display().to_string(), &text, registry, mirror, certs_dir),
        Err(e) => Check::fail(name, format!("reading {}: {e}", path.display()), "run `ferry doctor` as root"),
    }
}

/// `(scheme, host, port)` of a `[host."…"]` key; containerd takes a key without a scheme as https.
fn endpoint(key: &str) -> Option<(String, String, u16)> {
    let full = if key.contains("://") { key.to_string() } else { format!("https://{key}") };
    let url = reqwest::Url::parse(&full).ok()?;
    let host = url.host_str()?.trim_start_matches('[').trim_end_matches(']').to_string();
    Some((url.scheme().to_string(), host, url.port_or_known_default()?))
}

/// Whether `host:port` reaches a mirror listening on `mirror`.
fn reaches(host: &str, port: u16, mirror: SocketAddr) -> bool {
    if port != mirror.port() {
        return false;
    }
    let ip = mirror.ip();
    match host.parse::<IpAddr>() {
        Ok(h) => h == ip || ip.is_unspecified(),
        Err(_) if host == "localhost" => ip.is_loopback() || ip.is_unspecified(),
        Err(_) => ip.is_unspecified(),
    }
}

/// The `[host."…"]` keys in file order (TOML tables do not keep it).
fn host_order(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("[host.")?.strip_suffix(']').map(|k| k.trim().trim_matches(['"', '\'']).to_string()))
        .collect()
}

/// Evaluates one hosts.toml's text.
pub fn evaluate(name: &str, shown: &str, text: &str, registry: &str, mirror: SocketAddr, certs_dir: &Path) -> Check {
    let rewrite = format!("ferry containerd-config --apply {} (it keeps a backup)", certs_dir.display());
    let table: toml::Table = match toml::from_str(text) {
        Ok(t) => t,
        Err(e) => {
            return Check::fail(name, format!("{shown} is not valid TOML, so pulls of {registry} fail: {}", e.to_string().trim()), rewrite)
        }
    };
    let hosts = table.get("host").and_then(Value::as_table).cloned().unwrap_or_default();
    let wanted = format!("http://{mirror}");
    let Some((key, scheme)) = hosts.keys().find_map(|k| {
        let (scheme, host, port) = endpoint(k)?;
        reaches(&host, port, mirror).then(|| (k.clone(), scheme))
    }) else {
        let found: Vec<&str> = hosts.keys().map(String::as_str).collect();
        return Check::fail(
            name,
            format!(
                "{shown} does not list the node's mirror {wanted} (hosts: {}): containerd does not pull {registry} through the node",
                if found.is_empty() { "none".to_string() } else { found.join(", ") }
            ),
            rewrite,
        );
    };
    if scheme != "http" {
        return Check::fail(
            name,
            format!("{shown} lists the mirror as {key:?}, which containerd reaches over {scheme}: the node's mirror speaks plain HTTP"),
            format!("write the key as [host.\"{wanted}\"], or {rewrite}"),
        );
    }
    let capabilities: Vec<String> = match hosts[&key].get("capabilities").and_then(Value::as_array) {
        Some(list) => list.iter().filter_map(|c| c.as_str().map(str::to_string)).collect(),
        None => vec!["pull".into(), "resolve".into(), "push".into()],
    };
    let mut findings = Vec::new();
    if !capabilities.iter().any(|c| c == "pull") {
        findings.push(Check::fail(
            name,
            format!("the mirror {key:?} lacks the \"pull\" capability: containerd fetches no blob through it"),
            "set capabilities = [\"pull\", \"resolve\"] under it",
        ));
    } else if !capabilities.iter().any(|c| c == "resolve") {
        findings.push(Check::warn(
            name,
            format!("the mirror {key:?} lacks \"resolve\": tags are resolved at the registry itself, so pulls by tag fail while the WAN is down"),
            "set capabilities = [\"pull\", \"resolve\"] under it",
        ));
    }
    if let Some(first) = host_order(text).first().filter(|first| **first != key) {
        findings.push(Check::warn(
            name,
            format!("{shown} lists {first:?} before the mirror: containerd tries it first and the node only when it fails"),
            format!("move the [host.\"{key}\"] table first"),
        ));
    }
    Check::combine(name, findings, format!("{shown}: {registry} is pulled and resolved through {key} first"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    const MIRROR: &str = "127.0.0.1:5050";

    fn eval(text: &str) -> Check {
        let mirror: SocketAddr = MIRROR.parse().expect("addr");
        evaluate("hosts.reg.local", "hosts.toml", text, "reg.local", mirror, Path::new("/etc/containerd/certs.d"))
    }

    #[test]
    fn what_containerd_config_writes_passes() {
        let text = crate::containerd_config::hosts_toml("reg.local", "http://10.0.0.5:5000", "http://127.0.0.1:5050");
        let c = eval(&text);
        assert_eq!(c.status, Status::Ok, "{c:?}");
    }

    #[test]
    fn a_host_elsewhere_fails() {
        let c = eval("server = \"https://reg.local\"\n[host.\"http://127.0.0.1:5051\"]\n  capabilities = [\"pull\", \"resolve\"]\n");
        assert_eq!(c.status, Status::Fail);
        assert!(c.detail.contains("http://127.0.0.1:5051") && c.detail.contains("http://127.0.0.1:5050"), "{c:?}");
        assert_eq!(eval("server = \"https://reg.local\"\n").status, Status::Fail, "no host at all");
    }

    #[test]
    fn https_or_no_scheme_fails_because_the_mirror_is_plain_http() {
        assert_eq!(eval("[host.\"https://127.0.0.1:5050\"]\n").status, Status::Fail);
        assert_eq!(eval("[host.\"127.0.0.1:5050\"]\n").status, Status::Fail);
    }

    #[test]
    fn capabilities_and_order_matter() {
        let no_pull = eval("[host.\"http://127.0.0.1:5050\"]\n  capabilities = [\"resolve\"]\n");
        assert_eq!(no_pull.status, Status::Fail);
        let no_resolve = eval("[host.\"http://127.0.0.1:5050\"]\n  capabilities = [\"pull\"]\n");
        assert_eq!(no_resolve.status, Status::Warn);
        let defaults = eval("[host.\"http://localhost:5050\"]\n");
        assert_eq!(defaults.status, Status::Ok, "no capabilities means all; localhost is loopback: {defaults:?}");
        let second = eval(
            "[host.\"https://other.mirror\"]\n  capabilities = [\"pull\"]\n[host.\"http://127.0.0.1:5050\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
        );
        assert_eq!(second.status, Status::Warn);
        assert!(second.detail.contains("other.mirror"), "{second:?}");
    }

    #[test]
    fn a_mirror_on_every_address_accepts_the_nodes_name() {
        let c = evaluate(
            "hosts.r",
            "hosts.toml",
            "[host.\"http://node-7.site:5050\"]\n",
            "r",
            "0.0.0.0:5050".parse().expect("addr"),
            Path::new("/c"),
        );
        assert_eq!(c.status, Status::Ok, "{c:?}");
    }

    #[test]
    fn bad_toml_and_missing_files_fail() {
        assert_eq!(eval("[host.\"http://127.0.0.1:5050\"\n").status, Status::Fail);
        let dir = tempfile::tempdir().expect("tempdir");
        let c = check(dir.path(), "reg.local", MIRROR.parse().expect("addr"), false);
        assert_eq!(c.status, Status::Fail);
        let c = check(dir.path(), "reg.local", MIRROR.parse().expect("addr"), true);
        assert_eq!(c.status, Status::Warn, "the node writes it when it runs: {c:?}");
        std::fs::create_dir_all(dir.path().join("_default")).expect("mkdir");
        std::fs::write(dir.path().join("_default/hosts.toml"), "[host.\"http://127.0.0.1:5050\"]\n").expect("write");
        assert_eq!(
            check(dir.path(), "reg.local", MIRROR.parse().expect("addr"), false).status,
            Status::Ok,
            "containerd's _default applies"
        );
    }
}
