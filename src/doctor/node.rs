//! The node as it runs: whether it answers on its admin socket (and with the config doctor
//! read), whether its mirror answers `/v2/`, its peers (with P2P on), and whether each upstream
//! registry answers `/v2/` from this host (200, or 401 asking for a token, means a registry).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use registry_proxy::admin::Status as NodeStatus;

use super::{Check, Ferry};

const TIMEOUT: Duration = Duration::from_secs(5);

/// The running node's status, if one answers on `socket`.
pub async fn status(socket: &Path) -> Option<NodeStatus> {
    tokio::time::timeout(TIMEOUT, registry_proxy::admin::fetch_status(socket)).await.ok()?.ok()
}

pub async fn gather(ferry: &Ferry, status: Option<&NodeStatus>) -> Vec<Check> {
    let mut checks = vec![running(ferry, status)];
    if status.is_some() {
        checks.push(mirror(ferry.registry_listen).await);
    }
    checks.push(peers(ferry, status));
    checks.extend(upstreams(ferry).await);
    checks
}

/// Whether a node answers, and runs with the config doctor read.
pub fn running(ferry: &Ferry, status: Option<&NodeStatus>) -> Check {
    const NAME: &str = "node.status";
    let Some(s) = status else {
        return Check::warn(
            NAME,
            format!(
                "no node answers at {}: containerd falls back to the registries themselves (hosts.toml's server), bypassing Ferry",
                ferry.admin_socket.display()
            ),
            "start `ferry node` with this config",
        );
    };
    let mut findings = Vec::new();
    if s.registry_listen.parse::<SocketAddr>().ok() != Some(ferry.registry_listen) {
        findings.push(Check::warn(
            NAME,
            format!("the running node's mirror is on {}, but this config says {}", s.registry_listen, ferry.registry_listen),
            "give doctor the node's own --config and flags, or restart the node with this config",
        ));
    }
    let mut configured: Vec<&str> = ferry.upstreams.iter().map(|(h, _)| h.as_str()).collect();
    let mut served: Vec<&str> = s.upstreams.iter().map(String::as_str).collect();
    configured.sort();
    served.sort();
    if configured != served {
        findings.push(Check::warn(
            NAME,
            format!("the running node serves {}, but this config allows {}", served.join(", "), configured.join(", ")),
            "restart the node with this config",
        ));
    }
    Check::combine(NAME, findings, format!("ferry {} runs, its mirror on {} for {}", s.version, s.registry_listen, s.upstreams.join(", ")))
}

async fn mirror(listen: SocketAddr) -> Check {
    const NAME: &str = "node.mirror";
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let url = format!("http://{}/v2/", SocketAddr::new(ip, listen.port()));
    let client = reqwest::Client::builder().no_proxy().timeout(TIMEOUT).build();
    let answer = match client {
        Ok(c) => c.get(&url).send().await.map(|r| r.status().as_u16()).map_err(|e| chain(&e)),
        Err(e) => Err(chain(&e)),
    };
    match answer {
        Ok(200) => Check::ok(NAME, format!("GET {url}: 200")),
        Ok(code) => Check::fail(NAME, format!("GET {url}: HTTP {code}, not the node's mirror"), "is another program on the mirror's port?"),
        Err(e) => Check::fail(NAME, format!("GET {url}: {e}"), "see the node's log"),
    }
}

/// The node's place in its site's swarm.
pub fn peers(ferry: &Ferry, status: Option<&NodeStatus>) -> Check {
    const NAME: &str = "node.peers";
    if !ferry.p2p {
        return Check::info(NAME, "P2P is off (no p2p.listen): every blob this node lacks comes from the origin");
    }
    let Some(s) = status else { return Check::info(NAME, "the node is not running: peers not checked") };
    let Some(p) = &s.p2p else {
        return Check::warn(NAME, "this config turns P2P on, but the running node has it off", "restart the node with this config");
    };
    let bans = if p.bans.is_empty() { String::new() } else { format!("; {} banned for bad bytes", p.bans.len()) };
    if p.peers.is_empty() {
        return Check::warn(
            NAME,
            format!("P2P is on, but no peer is connected (region {}){bans}: every blob comes from the origin", p.region),
            "check --bootstrap addresses, mDNS on the LAN, that every node has the same cluster key (--psk-file), and that the P2P port is open",
        );
    }
    Check::ok(NAME, format!("{} peers connected in region {}{bans}", p.peers.len(), p.region))
}

/// Decides an upstream's check from the status its `/v2/` answered (or why it did not).
pub fn reachability(host: &str, url: &str, answer: Result<u16, String>) -> Check {
    let name = format!("upstream.{host}");
    match answer {
        Ok(code @ (200 | 401)) => Check::ok(name, format!("{url} answers HTTP {code}: a registry")),
        Ok(code) => {
            Check::warn(name, format!("{url} answers HTTP {code}, not a registry's 200 or 401"), "check the upstream URL (HOST=URL)")
        }
        Err(e) => Check::warn(
            name,
            format!("{url} is unreachable from here ({e}): the site gets only what it has cached or what peers hold"),
            "check DNS, routes, the firewall and any HTTPS_PROXY for this registry",
        ),
    }
}

async fn upstreams(ferry: &Ferry) -> Vec<Check> {
    let mut builder = reqwest::Client::builder().connect_timeout(TIMEOUT).timeout(TIMEOUT);
    for path in &ferry.extra_ca_files {
        let certs = std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|pem| reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| e.to_string()));
        match certs {
            Ok(certs) => builder = certs.into_iter().fold(builder, |b, c| b.add_root_certificate(c)),
            Err(e) => {
                return vec![Check::fail(
                    "upstream.ca_files",
                    format!("the CA file {} does not load ({e}): the node refuses to start", path.display()),
                    "fix registry.ca_files / --upstream-ca",
                )]
            }
        }
    }
    let client = match builder.build() {
        Ok(c) => c,
        Err(e) => return vec![Check::warn("upstream", format!("no HTTP client: {}", chain(&e)), "report this")],
    };
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (host, url)) in ferry.upstreams.iter().enumerate() {
        let probe = format!("{}/v2/", url.trim_end_matches('/'));
        let (client, host) = (client.clone(), host.clone());
        tasks.spawn(async move {
            let answer = client.get(&probe).send().await.map(|r| r.status().as_u16()).map_err(|e| chain(&e));
            (i, reachability(&host, &probe, answer))
        });
    }
    let mut checks: Vec<(usize, Check)> = tasks.join_all().await;
    checks.sort_by_key(|(i, _)| *i);
    checks.into_iter().map(|(_, c)| c).collect()
}

/// The root cause of an error (reqwest's own message only names the URL, which is shown anyway).
fn chain(e: &dyn std::error::Error) -> String {
    let mut cause = e;
    while let Some(s) = cause.source() {
        cause = s;
    }
    cause.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::tests::ferry;
    use crate::doctor::Status;

    fn node_status(json: serde_json::Value) -> NodeStatus {
        let mut base = serde_json::json!({
            "version": "0.1.0", "registry_listen": "127.0.0.1:5050", "upstreams": ["registry.local"],
            "store": {"path": "/var/lib/ferry", "capacity": 0, "used": 0, "complete_blobs": 0, "complete_bytes": 0,
                      "partial_blobs": 0, "partial_bytes_present": 0, "evicted_blobs": 0, "evicted_bytes": 0},
            "traffic": serde_json::to_value(registry_proxy::metrics::Traffic::default()).expect("json"),
        });
        if let (Some(b), Some(extra)) = (base.as_object_mut(), json.as_object()) {
            b.extend(extra.clone());
        }
        serde_json::from_value(base).expect("a node status")
    }

    #[test]
    fn upstream_answers_are_judged() {
        assert_eq!(reachability("r", "https://r/v2/", Ok(401)).status, Status::Ok);
        assert_eq!(reachability("r", "https://r/v2/", Ok(200)).status, Status::Ok);
        assert_eq!(reachability("r", "https://r/v2/", Ok(404)).status, Status::Warn);
        let down = reachability("r", "https://r/v2/", Err("connection refused".into()));
        assert_eq!((down.name.as_str(), down.status), ("upstream.r", Status::Warn));
    }

    #[test]
    fn a_node_on_another_config_is_noticed() {
        let f = ferry();
        assert_eq!(running(&f, None).status, Status::Warn);
        let same = node_status(serde_json::json!({}));
        assert_eq!(running(&f, Some(&same)).status, Status::Ok, "{:?}", running(&f, Some(&same)));
        let other = node_status(serde_json::json!({"registry_listen": "127.0.0.1:6000"}));
        assert_eq!(running(&f, Some(&other)).status, Status::Warn);
    }

    #[test]
    fn p2p_without_peers_warns() {
        let f = Ferry { p2p: true, ..ferry() };
        let lonely = node_status(serde_json::json!({"p2p": {"peer_id": "12D3", "region": "site-a", "peers": [],
            "traffic": serde_json::to_value(p2p_node::swarm::Traffic::default()).expect("json")}}));
        assert_eq!(peers(&f, Some(&lonely)).status, Status::Warn);
        let p = serde_json::json!({"peer_id": "12D3x", "region": "site-a"});
        let joined = node_status(serde_json::json!({"p2p": {"peer_id": "12D3", "region": "site-a", "peers": [p],
            "traffic": serde_json::to_value(p2p_node::swarm::Traffic::default()).expect("json")}}));
        assert_eq!(peers(&f, Some(&joined)).status, Status::Ok);
        assert_eq!(peers(&ferry(), Some(&joined)).status, Status::Info, "P2P off in the config");
    }
}
