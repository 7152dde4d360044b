//! A multi-node "site" in Linux network namespaces that the test creates and deletes itself:
//! N nodes on one LAN bridge, and an origin behind a traffic-shaped "WAN" link.
//!
//! ```text
//!  ns TAG-n0             ns TAG-lan                           ns TAG-origin
//!  TAGn0 10.77.S.10 ════ TAGb0 ─┐
//!  ns TAG-n1                    │                                  (WAN link)
//!  TAGn1 10.77.S.11 ════ TAGb1 ─┼─ bridge TAGbr ─ TAGwb ══════════════ TAGw 10.77.S.1
//!  ...                    ...  ─┘                                      │ egress:  tbf
//!                                                                      │ ingress: u32 → mirred
//!                                                                      └─► TAGifb (ifb): htb
//! ```
//!
//! `═` is a veth pair. Every namespace (`TAG-lan`, `TAG-n<i>`, `TAG-origin`) and every link is
//! created inside the namespaces (`ip -n`, veth peers born in their `netns`), so the host's network
//! is never touched: nothing appears in the host's `ip link`. Addresses are private
//! (`10.77.S.0/24`; S is random, sites are isolated from each other anyway); the host cannot
//! reach them, so talk to a site with [`Site::exec`] / [`Site::curl`] from inside it.
//!
//! Shaping happens on `TAGw`, the origin's end of the WAN veth, so everything between the nodes
//! and the origin crosses it while node↔node traffic stays on the unshaped bridge:
//! - origin → site: `tc qdisc add dev TAGw root tbf rate Rmbit burst B latency 50ms`;
//! - site → origin: an `ingress` qdisc on `TAGw` whose `u32 match u32 0 0` filter (this kernel
//!   has no `matchall`) redirects every packet (`action mirred egress redirect`) to `TAGifb`, an
//!   `ifb` device inside the origin namespace, shaped by `htb` (`handle 1:`, class `1:1`).
//!
//! There is no `netem` in this kernel: no added latency or loss (use a userspace proxy).
//! [`Site::set_wan_down`] takes the bridge's end of the WAN veth down (the origin loses carrier).
//!
//! Drop kills every process inside the site's namespaces (whoever spawned it, found with
//! `ip netns pids`) and deletes the namespaces, which destroys their veths, bridge and ifb.
//! [`leftovers`] lists whatever of a site still exists, for tests to assert it is nothing.

use std::collections::hash_map::RandomState;
use std::ffi::OsStr;
use std::hash::{BuildHasher, Hasher};
use std::io::Read;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{require_binary, run_cmd, run_ok, temp_dir, CmdOutput};

/// Every namespace and link name of every site starts with (or contains) this.
pub const PREFIX: &str = "fe2e";

const IP_TIMEOUT: Duration = Duration::from_secs(10);

/// Serialises `ip netns add`: concurrent first calls race to set up `/run/netns`.
static NETNS_ADD: Mutex<()> = Mutex::new(());

/// The origin's WAN link: rate in Mbit/s both ways (0 = unshaped), and whether it is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WanShape {
    pub rate_mbit: u32,
    pub down: bool,
}

impl WanShape {
    /// Up, shaped to `rate_mbit` both ways.
    pub fn mbit(rate_mbit: u32) -> Self {
        WanShape { rate_mbit, down: false }
    }

    /// Up, as fast as the veth goes.
    pub fn unshaped() -> Self {
        WanShape { rate_mbit: 0, down: false }
    }
}

/// One HTTP transfer measured by curl (`-w`).
#[derive(Debug, Clone, Copy)]
pub struct Transfer {
    pub status: u16,
    /// Body bytes sent (uploads) or received (downloads).
    pub bytes: u64,
    /// curl's `time_total`.
    pub seconds: f64,
}

impl Transfer {
    /// The curl `-w` format [`Transfer::parse`] reads; `kind` is `upload` or `download`.
    pub fn curl_format(kind: &str) -> String {
        format!("%{{http_code}} %{{size_{kind}}} %{{time_total}}")
    }

    /// Parses the output of [`Transfer::curl_format`].
    pub fn parse(text: &str) -> Transfer {
        let fields: Vec<&str> = text.split_whitespace().collect();
        let bad = || panic!("unexpected curl -w output {text:?}");
        let [status, bytes, seconds] = fields[..] else { bad() };
        Transfer {
            status: status.parse().unwrap_or_else(|_| bad()),
            bytes: bytes.parse().unwrap_or_else(|_| bad()),
            seconds: seconds.parse().unwrap_or_else(|_| bad()),
        }
    }

    /// Average throughput in Mbit/s.
    pub fn mbit_per_s(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.seconds.max(1e-6) / 1e6
    }
}

/// A LAN of nodes and an origin behind a shaped WAN link, in namespaces deleted on drop.
#[derive(Debug)]
pub struct Site {
    tag: String,
    subnet: u8,
    nodes: usize,
    /// Logs of processes started with [`Site::spawn_in`].
    dir: tempfile::TempDir,
    /// Full names of the namespaces created so far (all deleted on drop).
    created: Vec<String>,
    wan: Mutex<WanShape>,
    spawned: AtomicUsize,
}

impl Site {
    /// Creates `nodes` node namespaces `n0..`, the `lan` bridge namespace and the `origin`
    /// namespace, wires and shapes them as described in the module doc, and waits (5 s) until
    /// every link is up and every bridge port forwards.
    pub fn new(nodes: usize, wan: WanShape) -> Site {
        require_binary("ip", "iproute2");
        require_binary("tc", "iproute2");
        require_binary("curl", "curl");
        assert!((1..=200).contains(&nodes), "a site has 1 to 200 nodes, not {nodes}");
        let (tag, subnet) = fresh_tag();
        let mut site = Site {
            tag,
            subnet,
            nodes,
            dir: temp_dir("netns"),
            created: Vec::new(),
            wan: Mutex::new(WanShape::unshaped()),
            spawned: AtomicUsize::new(0),
        };
        // One by one into `created`, so that a failure half-way still deletes what exists.
        let mut names = vec!["lan".to_string(), "origin".to_string()];
        names.extend((0..nodes).map(|i| format!("n{i}")));
        for ns in &names {
            let full = site.netns(ns);
            let added = {
                let _serial = NETNS_ADD.lock().unwrap_or_else(|e| e.into_inner());
                run_cmd(Command::new("ip").args(["netns", "add", &full]), IP_TIMEOUT)
            };
            assert!(added.success, "ip netns add {full}: {}", added.stderr);
            site.created.push(full);
            site.ip(ns, &["link", "set", "lo", "up"]);
        }
        site.wire();
        site.wait_links(true);
        site.set_wan_rate(wan.rate_mbit);
        if wan.down {
            site.set_wan_down(true);
        }
        site
    }

    fn wire(&self) {
        let tag = &self.tag;
        let bridge = format!("{tag}br");
        self.ip("lan", &["link", "add", &bridge, "type", "bridge"]);
        self.ip("lan", &["link", "set", &bridge, "up"]);
        let mut legs: Vec<(String, String, String, Ipv4Addr)> =
            (0..self.nodes).map(|i| (format!("n{i}"), format!("{tag}b{i}"), format!("{tag}n{i}"), self.node_ip(i))).collect();
        legs.push(("origin".into(), self.wan_port(), self.wan_nic(), self.origin_ip()));
        for (ns, port, nic, addr) in &legs {
            self.ip("lan", &["link", "add", port, "type", "veth", "peer", "name", nic, "netns", &self.netns(ns)]);
            self.ip("lan", &["link", "set", port, "master", &bridge, "up"]);
            self.ip(ns, &["addr", "add", &format!("{addr}/24"), "dev", nic]);
            self.ip(ns, &["link", "set", nic, "up"]);
        }
        self.ip("origin", &["link", "add", &self.ifb(), "type", "ifb"]);
        self.ip("origin", &["link", "set", &self.ifb(), "txqueuelen", "1000", "up"]);
    }

    /// Waits up to 5 s until the node links (and the WAN link when `with_wan`) have carrier
    /// and their bridge ports forward.
    fn wait_links(&self, with_wan: bool) {
        let mut checks: Vec<(String, String, String)> =
            (0..self.nodes).map(|i| (format!("n{i}"), format!("{}n{i}", self.tag), format!("{}b{i}", self.tag))).collect();
        if with_wan {
            checks.push(("origin".into(), self.wan_nic(), self.wan_port()));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pending: Vec<&String> = checks
                .iter()
                .filter(|(ns, nic, port)| {
                    let nic_up = self.ip(ns, &["-o", "link", "show", "dev", nic]).contains("LOWER_UP");
                    let port_state = self.ip("lan", &["-d", "-o", "link", "show", "dev", port]);
                    !(nic_up && port_state.contains("LOWER_UP") && port_state.contains("state forwarding"))
                })
                .map(|(_, nic, _)| nic)
                .collect();
            if pending.is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "links {pending:?} of site {} not up and forwarding within 5 s", self.tag);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The site's unique tag: every namespace is `TAG-<name>`, every link name contains it.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Full namespace name of `ns` (`lan`, `origin` or `n<i>`), for `ip netns exec`.
    pub fn netns(&self, ns: &str) -> String {
        let known =
            ns == "lan" || ns == "origin" || ns.strip_prefix('n').and_then(|i| i.parse::<usize>().ok()).is_some_and(|i| i < self.nodes);
        assert!(known, "site {} has no namespace {ns:?} (lan, origin, n0..n{})", self.tag, self.nodes - 1);
        format!("{}-{ns}", self.tag)
    }

    /// `10.77.S.(10+i)`, node `i`'s address.
    pub fn node_ip(&self, i: usize) -> Ipv4Addr {
        assert!(i < self.nodes, "site {} has no node {i}", self.tag);
        Ipv4Addr::new(10, 77, self.subnet, 10 + i as u8)
    }

    /// `10.77.S.1`, the origin's address.
    pub fn origin_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, 1)
    }

    /// The address of `origin` or `n<i>` (the bridge namespace has none).
    pub fn ip_of(&self, ns: &str) -> Ipv4Addr {
        match ns {
            "origin" => self.origin_ip(),
            _ => self.node_ip(ns.strip_prefix('n').and_then(|i| i.parse().ok()).unwrap_or_else(|| panic!("{ns:?} has no address"))),
        }
    }

    /// `ip netns exec TAG-ns program`, without proxy variables; add args and run it.
    pub fn exec(&self, ns: &str, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns(ns)]).arg(program);
        for var in ["http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"] {
            cmd.env_remove(var);
        }
        cmd.env("NO_PROXY", "*");
        cmd
    }

    /// Starts `cmd` (program, args, env and cwd; not its stdio) inside `ns`, stdin null and
    /// stdout+stderr to a log that is printed when the test fails. Killed when the site drops.
    pub fn spawn_in(&self, ns: &str, cmd: Command) -> Child {
        let n = self.spawned.fetch_add(1, Ordering::SeqCst);
        let program = cmd.get_program().to_string_lossy().to_string();
        let log_path = self.dir.path().join(format!("{n:02}-{ns}-{}.log", program.rsplit('/').next().unwrap_or("cmd")));
        let log = std::fs::File::create(&log_path).expect("create spawn log");
        let mut wrapped = self.exec(ns, cmd.get_program());
        wrapped.args(cmd.get_args());
        for (key, value) in cmd.get_envs() {
            match value {
                Some(value) => wrapped.env(key, value),
                None => wrapped.env_remove(key),
            };
        }
        if let Some(cwd) = cmd.get_current_dir() {
            wrapped.current_dir(cwd);
        }
        wrapped.stdin(Stdio::null()).stdout(log.try_clone().expect("clone log handle")).stderr(log);
        wrapped.spawn().unwrap_or_else(|e| panic!("spawn {wrapped:?}: {e}"))
    }

    /// Runs `curl -sS ARGS` inside `ns`, killed after `timeout`.
    pub fn curl(&self, ns: &str, args: &[&str], timeout: Duration) -> CmdOutput {
        run_cmd(self.exec(ns, "curl").arg("-sS").args(args), timeout)
    }

    /// The HTTP status of `GET url` from `ns`, `None` when nothing answered within 3 s.
    pub fn http_status(&self, ns: &str, url: &str) -> Option<u16> {
        let out = self.curl(ns, &["--connect-timeout", "2", "--max-time", "3", "-o", "/dev/null", "-w", "%{http_code}", url], IP_TIMEOUT);
        out.stdout.trim().parse().ok().filter(|status| *status != 0)
    }

    /// Polls `GET url` from `ns` until anything answers, or panics after `timeout`.
    pub fn wait_http(&self, ns: &str, url: &str, timeout: Duration) -> u16 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.http_status(ns, url) {
                return status;
            }
            assert!(Instant::now() < deadline, "nothing answered GET {url} from {ns} within {timeout:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Downloads `url` from `ns` to /dev/null (60 s at most), measured; panics if curl fails.
    pub fn download(&self, ns: &str, url: &str) -> Transfer {
        let format = Transfer::curl_format("download");
        let out = self.curl(ns, &["--max-time", "60", "-o", "/dev/null", "-w", &format, url], Duration::from_secs(70));
        assert!(out.success, "GET {url} from {ns} failed: {}", out.stderr);
        Transfer::parse(&out.stdout)
    }

    /// Re-shapes the WAN link to `rate_mbit` both ways (0 removes the shaping).
    pub fn set_wan_rate(&self, rate_mbit: u32) {
        let (nic, ifb) = (self.wan_nic(), self.ifb());
        // Whatever shaping exists goes first; errors only say there was none.
        for (dev, parent) in [(&nic, "root"), (&nic, "ingress"), (&ifb, "root")] {
            self.tc_quiet(&["qdisc", "del", "dev", dev, parent]);
        }
        if rate_mbit > 0 {
            let rate = format!("{rate_mbit}mbit");
            // At least 64 KiB, and 10 ms worth at high rates.
            let burst = (u64::from(rate_mbit) * 1_000_000 / 8 / 100).max(64 * 1024).to_string();
            self.tc(&["qdisc", "add", "dev", &nic, "root", "tbf", "rate", &rate, "burst", &burst, "latency", "50ms"]);
            self.tc(&["qdisc", "add", "dev", &nic, "handle", "ffff:", "ingress"]);
            self.tc(&[
                "filter", "add", "dev", &nic, "parent", "ffff:", "protocol", "all", "u32", "match", "u32", "0", "0", "action", "mirred",
                "egress", "redirect", "dev", &ifb,
            ]);
            self.tc(&["qdisc", "add", "dev", &ifb, "root", "handle", "1:", "htb", "default", "1"]);
            self.tc(&[
                "class", "add", "dev", &ifb, "parent", "1:", "classid", "1:1", "htb", "rate", &rate, "ceil", &rate, "burst", &burst,
                "cburst", &burst, "quantum", "60000",
            ]);
        }
        self.wan.lock().unwrap_or_else(|e| e.into_inner()).rate_mbit = rate_mbit;
    }

    /// Cuts the WAN link (`ip link set TAGwb down` in the bridge namespace: the origin loses
    /// carrier, connections to it time out) or restores it, waiting until it forwards again.
    pub fn set_wan_down(&self, down: bool) {
        self.ip("lan", &["link", "set", &self.wan_port(), if down { "down" } else { "up" }]);
        if !down {
            self.wait_links(true);
        }
        self.wan.lock().unwrap_or_else(|e| e.into_inner()).down = down;
    }

    /// The WAN link's current shape.
    pub fn wan(&self) -> WanShape {
        *self.wan.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Logs of the processes started with [`Site::spawn_in`].
    pub fn logs(&self) -> String {
        let mut paths: Vec<PathBuf> =
            std::fs::read_dir(self.dir.path()).map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default();
        paths.sort();
        paths.iter().map(|p| format!("--- {} ---\n{}", p.display(), std::fs::read_to_string(p).unwrap_or_default())).collect()
    }

    /// Addresses, links and qdisc counters of every namespace, for failure reports.
    pub fn describe(&self) -> String {
        let mut text = format!("site {} (10.77.{}.0/24, wan {:?})\n", self.tag, self.subnet, self.wan());
        for full in &self.created {
            let args = ["-n", full.as_str(), "-br", "addr"];
            text.push_str(&format!("[{full}]\n{}", quiet(Command::new("ip").args(args), IP_TIMEOUT).unwrap_or_default()));
        }
        let origin = self.netns("origin");
        text.push_str(&quiet(Command::new("tc").args(["-n", &origin, "-s", "qdisc"]), IP_TIMEOUT).unwrap_or_default());
        text
    }

    fn wan_port(&self) -> String {
        format!("{}wb", self.tag)
    }

    fn wan_nic(&self) -> String {
        format!("{}w", self.tag)
    }

    fn ifb(&self) -> String {
        format!("{}ifb", self.tag)
    }

    /// `ip -n TAG-ns ARGS`, which must succeed.
    fn ip(&self, ns: &str, args: &[&str]) -> String {
        run_ok(Command::new("ip").arg("-n").arg(self.netns(ns)).args(args), IP_TIMEOUT)
    }

    /// `tc -n TAG-origin ARGS`, which must succeed.
    fn tc(&self, args: &[&str]) {
        run_ok(Command::new("tc").arg("-n").arg(self.netns("origin")).args(args), IP_TIMEOUT);
    }

    fn tc_quiet(&self, args: &[&str]) {
        quiet(Command::new("tc").arg("-n").arg(self.netns("origin")).args(args), IP_TIMEOUT);
    }

    /// Kills (SIGKILL) every process in the site's namespaces until none is left (5 s).
    fn kill_all(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let pids: Vec<String> = self
                .created
                .iter()
                .filter_map(|full| quiet(Command::new("ip").args(["netns", "pids", full]), IP_TIMEOUT))
                .flat_map(|out| out.split_whitespace().map(String::from).collect::<Vec<_>>())
                .collect();
            if pids.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                eprintln!("site {}: processes {pids:?} survived SIGKILL for 5 s", self.tag);
                return;
            }
            for pid in &pids {
                quiet(Command::new("kill").args(["-KILL", pid]), IP_TIMEOUT);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("===== site {} =====\n{}{}", self.tag, self.describe(), self.logs());
        }
        self.kill_all();
        for full in self.created.iter().rev() {
            if quiet(Command::new("ip").args(["netns", "delete", full]), IP_TIMEOUT).is_none() {
                eprintln!("site {}: `ip netns delete {full}` failed", self.tag);
            }
        }
    }
}

/// Namespaces named `TAG-*` and host links whose name contains `tag` that still exist: empty
/// once a [`Site`] with this tag has been dropped.
pub fn leftovers(tag: &str) -> Vec<String> {
    assert!(tag.starts_with(PREFIX) && tag.len() > PREFIX.len(), "not a site tag: {tag:?}");
    let mut found = Vec::new();
    let namespaces = run_ok(Command::new("ip").args(["netns", "list"]), IP_TIMEOUT);
    for name in namespaces.lines().filter_map(|l| l.split_whitespace().next()) {
        if name.starts_with(&format!("{tag}-")) {
            found.push(format!("netns {name}"));
        }
    }
    let links = run_ok(Command::new("ip").args(["-o", "link", "show"]), IP_TIMEOUT);
    for line in links.lines() {
        let name = line.split(':').nth(1).unwrap_or_default().trim().split('@').next().unwrap_or_default();
        if name.contains(tag) {
            found.push(format!("host link {name}"));
        }
    }
    found
}

/// A tag no existing namespace uses: `fe2e` + 5 hex digits (link names stay within 15
/// characters), and a subnet byte 1..=254 derived from it.
fn fresh_tag() -> (String, u8) {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    loop {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        hasher.write_usize(COUNTER.fetch_add(1, Ordering::SeqCst));
        hasher.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default());
        let bits = hasher.finish();
        let tag = format!("{PREFIX}{:05x}", bits & 0xF_FFFF);
        if !std::path::Path::new("/run/netns").join(format!("{tag}-lan")).exists() {
            return (tag, 1 + ((bits >> 20) % 254) as u8);
        }
    }
}

/// Runs `cmd` without panicking (for Drop): its stdout when it succeeded within `timeout`.
fn quiet(cmd: &mut Command, timeout: Duration) -> Option<String> {
    let mut child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().ok()?;
    let mut stdout = child.stdout.take()?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return status.success().then(|| reader.join().unwrap_or_default()),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}
