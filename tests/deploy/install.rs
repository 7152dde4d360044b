//! `deploy/install.sh --root DIR`: installs into a scratch root, and `--uninstall` leaves it as it
//! was. A fake `systemctl` first on PATH proves that `--root` never runs the real one.

use std::os::unix::fs::PermissionsExt;

use super::*;

struct Scratch {
    root: tempfile::TempDir,
    /// Holds the fake systemctl, which appends its arguments to `calls` and fails.
    bin: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        let bin = tempfile::tempdir().expect("tempdir");
        let fake = bin.path().join("systemctl");
        std::fs::write(&fake, format!("#!/bin/sh\necho \"$@\" >> {}/calls\nexit 1\n", bin.path().display())).expect("fake systemctl");
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Scratch { root: tempfile::tempdir().expect("tempdir"), bin }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
    }

    fn write(&self, rel: &str, bytes: &[u8]) {
        let p = self.path(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, bytes).expect("write");
    }

    fn install_sh(&self, args: &[&str]) -> Output {
        let path = format!("{}:{}", self.bin.path().display(), std::env::var("PATH").unwrap_or_default());
        Command::new("bash")
            .arg(repo_path("deploy/install.sh"))
            .arg("--root")
            .arg(self.root.path())
            .args(args)
            .env("PATH", path)
            .output()
            .expect("run install.sh")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.install_sh(args);
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "install.sh {args:?} failed:\n{text}");
        text
    }

    /// Every file under the root, relative, sorted.
    fn files(&self) -> Vec<String> {
        fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).expect("read_dir") {
                let p = e.expect("entry").path();
                if p.is_dir() {
                    walk(&p, base, out);
                } else {
                    out.push(p.strip_prefix(base).expect("under root").display().to_string());
                }
            }
        }
        let mut out = Vec::new();
        walk(self.root.path(), self.root.path(), &mut out);
        out.sort();
        out
    }

    fn systemctl_calls(&self) -> Option<String> {
        std::fs::read_to_string(self.bin.path().join("calls")).ok()
    }
}

const DOCKER_HOSTS: &str = "etc/containerd/certs.d/docker.io/hosts.toml";

#[test]
fn install_then_uninstall_puts_back_what_was_there() {
    let s = Scratch::new();
    // The node already pulled docker.io through a mirror of its own.
    let before = b"# site mirror\nserver = \"https://registry-1.docker.io\"\n\n[host.\"https://mirror.internal\"]\n  capabilities = [\"pull\", \"resolve\"]\n";
    s.write(DOCKER_HOSTS, before);
    s.write("etc/containerd/certs.d/other.example/hosts.toml", b"server = \"https://other.example\"\n");
    let untouched = s.files();

    let log = s.ok(&["--binary", FERRY]);
    let bin = s.path("usr/local/bin/ferry");
    let meta = std::fs::metadata(&bin).expect("binary installed");
    assert_eq!(meta.len(), std::fs::metadata(FERRY).expect("ferry").len());
    assert_eq!(meta.permissions().mode() & 0o777, 0o755);
    assert_eq!(read(&s.path("etc/ferry/ferry.toml")), read(&repo_path("deploy/ferry.toml")));
    assert_eq!(read(&s.path("etc/systemd/system/ferry.service")), read(&repo_path("deploy/systemd/ferry.service")));
    // deploy/ferry.toml's upstreams: docker.io and registry.example.com.
    let hosts = read(&s.path(DOCKER_HOSTS));
    assert!(hosts.contains("[host.\"http://127.0.0.1:5050\"]"), "{hosts}");
    assert!(s.path("etc/containerd/certs.d/registry.example.com/hosts.toml").is_file(), "{log}");
    let kept = |s: &Scratch| -> Vec<String> { s.files().into_iter().filter(|f| f.contains("hosts.toml.ferry-orig")).collect() };
    assert_eq!(kept(&s), [format!("{DOCKER_HOSTS}.ferry-orig")], "{log}");
    assert_eq!(std::fs::read(s.path(&kept(&s)[0])).expect("kept"), before);
    assert!(log.contains("not running systemctl"), "{log}");

    // Again (an upgrade): nothing new is kept aside; the operator's file is still the one to put back.
    s.ok(&["--binary", FERRY]);
    assert_eq!(kept(&s), [format!("{DOCKER_HOSTS}.ferry-orig")]);
    assert_eq!(std::fs::read(s.path(&kept(&s)[0])).expect("kept"), before);

    let log = s.ok(&["--uninstall"]);
    assert_eq!(std::fs::read(s.path(DOCKER_HOSTS)).expect("restored"), before, "{log}");
    assert_eq!(s.files(), untouched, "only what was there before is left\n{log}");
    assert!(!s.path("etc/ferry").exists());
    assert!(!s.path("etc/containerd/certs.d/registry.example.com").exists());
    assert_eq!(s.systemctl_calls(), None, "--root must not run systemctl");
}

#[test]
fn an_existing_config_is_used_and_kept_and_a_bad_one_stops_the_install() {
    let s = Scratch::new();
    let mine = "# this node's own\n[[registry.upstreams]]\nhost = \"registry.local\"\nurl = \"http://127.0.0.1:5000\"\n";
    s.write("etc/ferry/ferry.toml", mine.as_bytes());
    let log = s.ok(&["--binary", FERRY]);
    assert!(log.contains("already there"), "{log}");
    assert_eq!(read(&s.path("etc/ferry/ferry.toml")), mine);
    let certs: Vec<_> = s.files().into_iter().filter(|f| f.starts_with("etc/containerd/")).collect();
    assert_eq!(certs, ["etc/containerd/certs.d/registry.local/hosts.toml"], "hosts.toml from the config that is there");
    s.ok(&["--uninstall"]);
    assert_eq!(s.files(), ["etc/ferry/ferry.toml"]);
    assert_eq!(read(&s.path("etc/ferry/ferry.toml")), mine);

    // A config ferry refuses: nothing is written.
    let fresh = Scratch::new();
    let bad = fresh.bin.path().join("bad.toml");
    std::fs::write(&bad, "[registry]\nlisten = \"127.0.0.1:5050\"\nupstream = \"typo\"\n").expect("write");
    let out = fresh.install_sh(&["--binary", FERRY, "--config", bad.to_str().expect("utf8")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a valid ferry config"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(fresh.files().is_empty(), "{:?}", fresh.files());

    // Nothing to uninstall: a clear error.
    let out = fresh.install_sh(&["--uninstall"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing installed"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The unit `install.sh` installs, as systemd reads it: `systemd-analyze verify` (Debian's
/// `systemd` package; no running systemd needed) with the binary where the unit expects it, and
/// no warning either, since systemd only warns about keys it does not know, then ignores them.
#[test]
fn the_systemd_unit_verifies_and_keeps_the_hosts_mount_namespace() {
    let unit = read(&repo_path("deploy/systemd/ferry.service"));
    assert!(unit.contains("ExecStart=/usr/local/bin/ferry node --config /etc/ferry/ferry.toml"), "{unit}");
    // Any of these gives the service a mount namespace of its own, where the snapshotter's FUSE
    // mounts would be invisible to containerd.
    for key in [
        "ProtectSystem=",
        "ProtectHome=",
        "PrivateTmp=",
        "PrivateDevices=",
        "ReadWritePaths=",
        "ReadOnlyPaths=",
        "InaccessiblePaths=",
        "PrivateMounts=",
        "MountFlags=",
        "TemporaryFileSystem=",
        "BindPaths=",
    ] {
        assert!(!unit.lines().any(|l| l.trim_start().starts_with(key)), "{key} in the unit");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ferry.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/ferry", FERRY)).expect("write unit");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian package systemd) is needed");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify:\n{said}");

    // It can fail: a misspelt key is reported.
    std::fs::write(&path, unit.replace("/usr/local/bin/ferry", FERRY).replace("KillSignal=", "KillSignl=")).expect("write unit");
    let out = Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&path).output().expect("systemd-analyze");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Unknown key"), "{out:?}");
}
