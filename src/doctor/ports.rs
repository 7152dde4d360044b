//! The node's addresses: the mirror and metrics ports must be free or held by ferry itself, and
//! the admin and snapshotter sockets live (a node runs) or absent or stale (a node will create or
//! replace them at start). A port held by another program is named, with its pid.

use std::net::SocketAddr;
use std::path::Path;

use registry_proxy::admin::Status as NodeStatus;

use super::{Check, Ferry};

/// Who holds a listening port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub command: String,
}

pub async fn gather(ferry: &Ferry, status: Option<&NodeStatus>) -> Vec<Check> {
    let running = status.is_some();
    let mut checks = vec![port("port.registry", "--registry-listen", ferry.registry_listen, running)];
    checks.push(match ferry.metrics_listen {
        Some(addr) => port("port.metrics", "--metrics-listen", addr, running),
        None => Check::info("port.metrics", "metrics are off (metrics.enabled = false)"),
    });
    checks.push(admin_socket(&ferry.admin_socket));
    if let Some(socket) = &ferry.snapshotter_socket {
        checks.push(snapshotter_socket(socket, running));
    }
    checks
}

fn port(name: &str, flag: &str, addr: SocketAddr, node_running: bool) -> Check {
    let bound = std::net::TcpListener::bind(addr).map(drop);
    let owner = match &bound {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => who_listens(addr.port()),
        _ => None,
    };
    port_check(name, flag, addr, bound, owner, node_running)
}

/// Decides a port check from the outcome of binding it.
pub fn port_check(name: &str, flag: &str, addr: SocketAddr, bound: std::io::Result<()>, owner: Option<Owner>, node_running: bool) -> Check {
    use std::io::ErrorKind;
    let move_it = format!("stop it, or give the node another {flag} (and rewrite the hosts.toml files if it is the mirror)");
    match bound {
        Ok(()) if node_running => Check::warn(
            name,
            format!("{addr} is free, but a node is running: it listens elsewhere, so it runs with another config than the one doctor read"),
            "give doctor the node's own --config and flags",
        ),
        Ok(()) => Check::ok(name, format!("{addr} is free for the node")),
        Err(e) if e.kind() == ErrorKind::AddrInUse => match owner {
            Some(o) if o.command == "ferry" => Check::ok(name, format!("{addr} is held by ferry (pid {})", o.pid)),
            Some(o) => Check::fail(name, format!("{addr} is held by {} (pid {}): the node cannot bind it", o.command, o.pid), move_it),
            None if node_running => Check::ok(name, format!("{addr} is in use, and a node is running: presumably by it")),
            None => Check::fail(name, format!("{addr} is held by another program: the node cannot bind it"), move_it),
        },
        Err(e) if e.kind() == ErrorKind::AddrNotAvailable => {
            Check::fail(name, format!("{addr} is not an address of this host"), format!("give {flag} one of this host's addresses"))
        }
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {
            Check::fail(name, format!("binding {addr} is not allowed ({e})"), "run the node as root, or use a port above 1023")
        }
        Err(e) => Check::warn(name, format!("binding {addr} failed: {e}"), format!("check {flag}")),
    }
}

/// Inodes of the sockets listening on `port` in a `/proc/net/tcp` or `tcp6` table.
pub fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let local_port = u16::from_str_radix(cols.get(1)?.rsplit(':').next()?, 16).ok()?;
            (local_port == port && *cols.get(3)? == "0A").then(|| cols.get(9)?.parse().ok()).flatten()
        })
        .collect()
}

/// The process listening on a TCP `port`, from `/proc` (needs root for others' processes).
fn who_listens(port: u16) -> Option<Owner> {
    let inodes: Vec<u64> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .flat_map(|t| listening_inodes(&std::fs::read_to_string(t).unwrap_or_default(), port))
        .collect();
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    for entry in std::fs::read_dir("/proc").ok()?.filter_map(Result::ok) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else { continue };
        let holds = fds
            .filter_map(Result::ok)
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| wanted.iter().any(|w| target.as_os_str() == w.as_str())));
        if holds {
            let command = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default().trim().to_string();
            return Some(Owner { pid, command });
        }
    }
    None
}

fn admin_socket(path: &Path) -> Check {
    const NAME: &str = "admin.socket";
    if !path.exists() {
        return Check::ok(NAME, format!("{} is absent: the node creates it at start", path.display()));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Check::ok(NAME, format!("{} is live: a node answers on it", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            Check::info(NAME, format!("{} is stale, left by a node that ended: the node replaces it at start", path.display()))
        }
        Err(e) => {
            Check::warn(NAME, format!("{} does not accept connections: {e}", path.display()), "run doctor as root, or check the path")
        }
    }
}

fn snapshotter_socket(path: &Path, node_running: bool) -> Check {
    const NAME: &str = "snapshotter.socket";
    let live = std::os::unix::net::UnixStream::connect(path).is_ok();
    match (node_running, live) {
        (_, true) => Check::ok(NAME, format!("{} answers: containerd can reach the snapshotter", path.display())),
        (true, false) => Check::fail(
            NAME,
            format!("a node is running, but nothing answers at {}: containerd's calls to the snapshotter fail", path.display()),
            format!("restart the node with --snapshotter-socket {}", path.display()),
        ),
        (false, false) if path.exists() => {
            Check::info(NAME, format!("{} is stale, left by a node that ended: the node replaces it at start", path.display()))
        }
        (false, false) => Check::ok(NAME, format!("{} is absent: the node creates it at start", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    #[test]
    fn listening_sockets_are_found_by_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
           0: 0100007F:13BA 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0000 100 0 0 10 0\n\
           1: 0100007F:13BA 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0000 100 0 0 10 0\n\
           2: 0100007F:24F8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4444 1 0000 100 0 0 10 0\n";
        assert_eq!(listening_inodes(table, 5050), vec![4242], "an established connection on the port is not its listener");
        assert_eq!(listening_inodes(table, 9464), vec![4444]);
        assert!(listening_inodes(table, 80).is_empty());
    }

    #[test]
    fn a_port_held_by_another_program_fails_and_by_ferry_passes() {
        let addr: SocketAddr = "127.0.0.1:5050".parse().expect("addr");
        let in_use = || Err(std::io::Error::from(std::io::ErrorKind::AddrInUse));
        let nginx = Some(Owner { pid: 7, command: "nginx".into() });
        let c = port_check("port.registry", "--registry-listen", addr, in_use(), nginx, false);
        assert_eq!(c.status, Status::Fail);
        assert!(c.detail.contains("nginx (pid 7)"), "{c:?}");
        let ferry = Some(Owner { pid: 8, command: "ferry".into() });
        assert_eq!(port_check("p", "--f", addr, in_use(), ferry, true).status, Status::Ok);
        assert_eq!(port_check("p", "--f", addr, Ok(()), None, false).status, Status::Ok);
        assert_eq!(port_check("p", "--f", addr, Ok(()), None, true).status, Status::Warn, "a node runs elsewhere");
    }

    #[test]
    fn the_port_of_a_live_listener_is_found_held() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let c = port("port.registry", "--registry-listen", addr, false);
        assert_eq!(c.status, Status::Fail, "{c:?}");
        drop(listener);
        assert_eq!(port("port.registry", "--registry-listen", addr, false).status, Status::Ok);
    }
}
