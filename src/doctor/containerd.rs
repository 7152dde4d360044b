//! containerd itself: its version (asked of the running daemon over its gRPC API, as `ctr version`
//! does, else of the installed binary), whether its config file's version suits it, and whether
//! the running daemon loaded what the file asks for (its plugins, as `ctr plugins ls` lists them):
//! a config edited without a restart is the classic silent breakage. No `ctr` is needed, so it
//! runs in the node's pod too.

use std::path::Path;
use std::time::Duration;

use snapshotter::containerd::{Containerd, Plugin};

use super::containerd_toml::{ContainerdConfig, LoadError};
use super::{Check, Ferry};

const TIMEOUT: Duration = Duration::from_secs(5);

/// `major.minor.patch` of a containerd release (`1.6.20~ds1`, `v2.0.0`, `2.1.3-rc.1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Version {
    pub fn parse(s: &str) -> Option<Version> {
        let s = s.strip_prefix('v').unwrap_or(s);
        let end = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
        let mut parts = s[..end].split('.').map(|p| p.parse::<u32>());
        let major = parts.next()?.ok()?;
        let minor = parts.next()?.ok()?;
        let patch = parts.next().and_then(Result::ok).unwrap_or(0);
        Some(Version { major, minor, patch })
    }

    /// At least `major.minor`.
    pub fn at_least(self, major: u32, minor: u32) -> bool {
        (self.major, self.minor) >= (major, minor)
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// What the running containerd (or the installed binary) says.
#[derive(Debug, Clone)]
pub struct Live {
    /// The daemon's version string, or why the socket did not answer.
    pub server: Result<String, String>,
    /// `containerd --version`, asked when the daemon does not answer.
    pub binary: Option<String>,
    /// Loaded plugins, when the daemon answers.
    pub plugins: Option<Vec<Plugin>>,
}

impl Live {
    pub fn version(&self) -> Option<Version> {
        self.server.as_deref().ok().and_then(Version::parse).or_else(|| self.binary.as_deref().and_then(Version::parse))
    }
}

/// The version in `containerd --version` (`containerd github.com/containerd/containerd 1.6.20~ds1 …`).
pub fn binary_version(text: &str) -> Option<String> {
    text.split_whitespace().skip(1).find(|t| Version::parse(t).is_some()).map(str::to_string)
}

async fn command(program: &str, args: &[&std::ffi::OsStr]) -> Result<String, String> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).kill_on_drop(true).stdin(std::process::Stdio::null());
    match tokio::time::timeout(TIMEOUT, cmd.output()).await {
        Err(_) => Err(format!("`{program}` did not answer within {TIMEOUT:?}")),
        Ok(Err(e)) => Err(format!("running `{program}`: {e}")),
        Ok(Ok(out)) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout).to_string()),
        Ok(Ok(out)) => Err(String::from_utf8_lossy(&out.stderr).trim().lines().last().unwrap_or("failed").to_string()),
    }
}

/// Asks the daemon at `address` (and the binary, if the daemon does not answer).
pub async fn probe(address: &Path) -> Live {
    let asked = tokio::time::timeout(TIMEOUT, ask(address))
        .await
        .unwrap_or_else(|_| Err(format!("containerd at {} did not answer within {TIMEOUT:?}", address.display())));
    let (server, plugins) = match asked {
        Ok((version, plugins)) => (Ok(version), plugins),
        Err(e) => (Err(e), None),
    };
    let binary = match &server {
        Ok(_) => None,
        Err(_) => command("containerd", &[std::ffi::OsStr::new("--version")]).await.ok().and_then(|t| binary_version(&t)),
    };
    Live { server, binary, plugins }
}

/// The daemon's version, and its plugins when it lists them.
async fn ask(address: &Path) -> Result<(String, Option<Vec<Plugin>>), String> {
    let daemon = Containerd::connect(address, "default").await.map_err(|e| e.to_string())?;
    let version = daemon.version().await.map_err(|e| e.to_string())?;
    Ok((version, daemon.plugins().await.ok()))
}

fn support(v: Version) -> Option<Check> {
    const NAME: &str = "containerd.version";
    if !v.at_least(1, 6) {
        return Some(Check::fail(
            NAME,
            format!("containerd {v} is older than 1.6, the oldest Ferry supports (hosts.toml for CRI, remote snapshotters)"),
            "upgrade containerd to 1.6, 1.7 or 2.x",
        ));
    }
    (v.major > 2)
        .then(|| Check::warn(NAME, format!("containerd {v}: Ferry is tested with 1.6, 1.7 and 2.x"), "run doctor's checks by hand"))
}

pub fn version_check(live: &Live, address: &Path) -> Check {
    const NAME: &str = "containerd.version";
    match (&live.server, &live.binary) {
        (Ok(text), _) => match Version::parse(text) {
            Some(v) => support(v).unwrap_or_else(|| Check::ok(NAME, format!("containerd {text} answers at {}", address.display()))),
            None => Check::warn(
                NAME,
                format!("containerd answers at {} with an unknown version {text:?}", address.display()),
                "check it is containerd 1.6 or later",
            ),
        },
        (Err(e), Some(binary)) => match Version::parse(binary).and_then(support) {
            Some(unsupported) => unsupported,
            None => Check::warn(
                NAME,
                format!("containerd {binary} is installed, but nothing answers at {} ({e})", address.display()),
                "start containerd, or give its socket with --containerd-address",
            ),
        },
        (Err(e), None) => Check::fail(
            NAME,
            format!("no containerd answers at {} ({e}), and no `containerd` binary is on PATH", address.display()),
            "install containerd (apt-get install containerd) and start it, or give its socket with --containerd-address",
        ),
    }
}

/// The config file's version against the containerd that reads it.
pub fn config_check(cfg: &ContainerdConfig, version: Option<Version>, path: &Path) -> Check {
    const NAME: &str = "containerd.config";
    let imports = if cfg.imports.is_empty() {
        String::new()
    } else {
        format!(" (with {})", cfg.imports.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))
    };
    let what = format!("{}{imports}: config version {}", path.display(), cfg.version);
    let major = version.map(|v| v.major);
    match (cfg.version, major) {
        (3, Some(1)) => Check::fail(
            NAME,
            format!("{what}, which containerd 1.x does not read"),
            "write it as version 2 (see deploy/containerd/config.toml)",
        ),
        (1, Some(2)) => Check::fail(
            NAME,
            format!("{what} (no `version =` line), which containerd 2.x no longer reads"),
            "convert it: `containerd config migrate` prints it as version 3",
        ),
        (1, _) => Check::warn(
            NAME,
            format!("{what} (no `version =` line): short plugin names, and containerd 2.x refuses it"),
            "write it as version 2 (see deploy/containerd/config.toml)",
        ),
        (2 | 3, _) => Check::ok(NAME, what),
        (v, _) => Check::fail(NAME, format!("{what}: no containerd knows version {v}"), "set version = 2 (containerd 1.x) or 3 (2.x)"),
    }
}

pub fn config_error(e: &LoadError, path: &Path) -> Check {
    const NAME: &str = "containerd.config";
    match e {
        LoadError::Missing => Check::fail(
            NAME,
            format!(
                "no {}: containerd runs on its defaults, where CRI reads no hosts.toml and there is no ferry snapshotter",
                path.display()
            ),
            "write one with Ferry's lines (deploy/containerd/config.toml), or give its path with --containerd-config",
        ),
        LoadError::Unreadable(e) => Check::fail(NAME, e.clone(), "run `ferry doctor` as root"),
        LoadError::Invalid { path, error } => {
            Check::fail(NAME, format!("{} is not valid TOML, so containerd does not start: {error}", path.display()), "correct the file")
        }
    }
}

/// Whether the running containerd loaded ferry's snapshotter and CRI as the file asks.
pub fn plugins_check(cfg: &ContainerdConfig, live: &Live, ferry: &Ferry) -> Check {
    const NAME: &str = "containerd.plugins";
    let Some(plugins) = &live.plugins else {
        return Check::info(NAME, "containerd does not answer: its loaded plugins are not checked");
    };
    let find = |kind: &str, id: &str| plugins.iter().find(|p| p.kind == kind && p.id == id);
    let restart = "restart containerd: it reads its config only at start";
    let mut findings = Vec::new();
    let mut ok = Vec::new();
    let name = ferry.snapshotter_socket.as_deref().and_then(|socket| cfg.proxy_plugin_at(socket)).map(|(n, _)| n.clone());
    if let Some(name) = name {
        match find("io.containerd.snapshotter.v1", &name) {
            Some(p) if p.status() == "ok" => ok.push(format!("snapshotter {name:?} loaded")),
            Some(p) => findings.push(Check::fail(
                NAME,
                format!(
                    "containerd lists snapshotter {name:?} as {:?}: {}",
                    p.status(),
                    p.init_error.as_deref().unwrap_or("no reason given")
                ),
                "fix what containerd says, then restart containerd",
            )),
            None => findings.push(Check::fail(
                NAME,
                format!("the running containerd has no snapshotter {name:?}: it started before its config named it"),
                restart,
            )),
        }
    }
    if !cfg.cri().disabled {
        match find("io.containerd.grpc.v1", "cri") {
            Some(p) if p.status() == "ok" => ok.push("CRI loaded".to_string()),
            Some(p) => findings.push(Check::fail(
                NAME,
                format!(
                    "CRI did not load ({}): Kubernetes cannot pull or run anything",
                    p.init_error.as_deref().unwrap_or("no reason given")
                ),
                "fix what containerd says (often a bad [plugins] value), then restart containerd",
            )),
            None => findings.push(Check::warn(NAME, "the running containerd has no CRI plugin, though its config enables it", restart)),
        }
    }
    let ok = if ok.is_empty() { "nothing of Ferry's to check".to_string() } else { ok.join(", ") };
    Check::combine(NAME, findings, ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    #[test]
    fn versions_parse_from_distribution_strings() {
        assert_eq!(Version::parse("1.6.20~ds1"), Some(Version { major: 1, minor: 6, patch: 20 }));
        assert_eq!(Version::parse("v2.0.0"), Some(Version { major: 2, minor: 0, patch: 0 }));
        assert_eq!(Version::parse("2.1.3-rc.1"), Some(Version { major: 2, minor: 1, patch: 3 }));
        assert_eq!(Version::parse("github.com/containerd/containerd"), None);
        let bin = "containerd github.com/containerd/containerd/v2 v2.0.0 207ad711eabd375a01713109a8a197d197ff6542\n";
        assert_eq!(binary_version(bin).as_deref(), Some("v2.0.0"));
    }

    #[test]
    fn the_version_decides_support() {
        let live = |v: &str| Live { server: Ok(v.into()), binary: None, plugins: None };
        let at = Path::new("/run/containerd/containerd.sock");
        assert_eq!(version_check(&live("1.6.20~ds1"), at).status, Status::Ok);
        assert_eq!(version_check(&live("2.1.0"), at).status, Status::Ok);
        assert_eq!(version_check(&live("1.5.9"), at).status, Status::Fail);
        let down = Live { server: Err("connection refused".into()), binary: Some("1.7.2".into()), plugins: None };
        assert_eq!(version_check(&down, at).status, Status::Warn);
        let absent = Live { server: Err("connection refused".into()), binary: None, plugins: None };
        assert_eq!(version_check(&absent, at).status, Status::Fail);
    }

    #[test]
    fn config_versions_must_suit_the_daemon() {
        let cfg = |v: i64| ContainerdConfig::parse(&format!("version = {v}")).expect("parses").0;
        let p = Path::new("/etc/containerd/config.toml");
        let v = |s: &str| Version::parse(s);
        assert_eq!(config_check(&cfg(2), v("1.6.20"), p).status, Status::Ok);
        assert_eq!(config_check(&cfg(3), v("2.0.1"), p).status, Status::Ok);
        assert_eq!(config_check(&cfg(2), v("2.1.0"), p).status, Status::Ok);
        assert_eq!(config_check(&cfg(3), v("1.7.0"), p).status, Status::Fail);
        assert_eq!(config_check(&cfg(1), v("2.0.0"), p).status, Status::Fail);
        assert_eq!(config_check(&cfg(1), v("1.6.0"), p).status, Status::Warn);
    }

    #[test]
    fn plugins_show_a_config_edited_without_a_restart() {
        let plugin = |kind: &str, id: &str| Plugin { kind: kind.into(), id: id.into(), init_error: None };
        let plugins = vec![plugin("io.containerd.snapshotter.v1", "ferry"), plugin("io.containerd.grpc.v1", "cri")];
        let text = "version = 2\n[proxy_plugins.ferry]\ntype = \"snapshot\"\naddress = \"/run/ferry/snapshotter.sock\"\n";
        let (cfg, _) = ContainerdConfig::parse(text).expect("parses");
        let ferry = crate::doctor::tests::ferry();
        let live = Live { server: Ok("1.6.20".into()), binary: None, plugins: Some(plugins.clone()) };
        assert_eq!(plugins_check(&cfg, &live, &ferry).status, Status::Ok);
        let stale = Live { plugins: Some(plugins[1..].to_vec()), ..live.clone() };
        let check = plugins_check(&cfg, &stale, &ferry);
        assert_eq!(check.status, Status::Fail);
        assert!(check.fix.as_deref().is_some_and(|f| f.contains("restart containerd")), "{check:?}");
        let cri_broken = Live {
            plugins: Some(vec![plugins[0].clone(), Plugin { init_error: Some("failed to load cri".into()), ..plugins[1].clone() }]),
            ..live
        };
        assert_eq!(plugins_check(&cfg, &cri_broken, &ferry).status, Status::Fail);
    }
}
