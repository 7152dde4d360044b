//! `ferry doctor` against a real setup: a sandboxed containerd 1.6 with CRI on, reading certs.d
//! and unpacking with ferry's snapshotter, a running `ferry node` (snapshotter on) in front of
//! Debian's docker-registry. The setup as it should be passes (exit 0, no FAIL); then each broken
//! variant of containerd's config or certs.d (written beside it: doctor reads files, so containerd
//! keeps running on the good one), a port taken by another program, and a stopped node are each
//! reported under the check that names the problem, non-zero exit for the blocking ones. Run as in
//! a Kubernetes pod, CRI on ferry's snapshotter is itself the blocking problem.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::harness::containerd::Containerd;
use crate::harness::ferry::{FerryNode, FerryOptions, FERRY_BIN};
use crate::harness::registry::Registry;
use crate::harness::{free_port, run_cmd, temp_dir};

/// One run of `ferry doctor --output json`: whether it exited 0, and its checks.
struct Report {
    success: bool,
    checks: Vec<Value>,
    stderr: String,
}

impl Report {
    fn status(&self, name: &str) -> &str {
        self.checks
            .iter()
            .find(|c| c["name"] == name)
            .and_then(|c| c["status"].as_str())
            .unwrap_or_else(|| panic!("no check {name} in {:#?}", self.checks))
    }

    fn detail(&self, name: &str) -> String {
        self.checks.iter().find(|c| c["name"] == name).map(|c| c["detail"].to_string()).unwrap_or_default()
    }

    fn failed(&self) -> Vec<&str> {
        self.checks.iter().filter(|c| c["status"] == "fail").filter_map(|c| c["name"].as_str()).collect()
    }

    /// Exactly `name` fails (and the exit status says so).
    fn fails_only(&self, name: &str) {
        assert_eq!(self.failed(), vec![name], "{:#?}", self.checks);
        assert!(!self.success, "a FAIL exits non-zero");
        assert!(self.stderr.contains("blocking problem"), "stderr: {}", self.stderr);
    }
}

fn doctor(flags: &[String], config: &Path, certs: &Path, output: &str) -> (bool, String, String) {
    doctor_in(flags, config, certs, output, false)
}

/// `in_pod`: as `kubectl exec` into a pod runs it, with `KUBERNETES_SERVICE_HOST` set.
fn doctor_in(flags: &[String], config: &Path, certs: &Path, output: &str, in_pod: bool) -> (bool, String, String) {
    let mut cmd = std::process::Command::new(FERRY_BIN);
    match in_pod {
        true => cmd.env("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
        false => cmd.env_remove("KUBERNETES_SERVICE_HOST"),
    };
    cmd.arg("doctor").args(flags).arg("--containerd-config").arg(config).arg("--certs-dir").arg(certs).args(["--output", output]);
    cmd.env("NO_PROXY", "*").env_remove("HTTP_PROXY").env_remove("HTTPS_PROXY").env_remove("http_proxy").env_remove("https_proxy");
    let out = run_cmd(&mut cmd, Duration::from_secs(60));
    (out.success, out.stdout, out.stderr)
}

fn doctor_json(flags: &[String], config: &Path, certs: &Path) -> Report {
    let (success, stdout, stderr) = doctor(flags, config, certs, "json");
    let checks: Vec<Value> = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("doctor's JSON ({e}):\n{stdout}\n{stderr}"));
    Report { success, checks, stderr }
}

/// Writes `text` as a variant of containerd's config in `dir`.
fn variant(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("write config variant");
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn doctor_passes_a_good_node_and_names_each_broken_part() {
    let registry = Registry::plain().await;
    let work = temp_dir("doctor");
    let w = work.path();
    let socket = w.join("snapshotter.sock");
    let mut options = FerryOptions::upstream("registry.local", &registry.url());
    options.extra_args = vec!["--snapshotter-socket".into(), socket.display().to_string()];
    let mut ferry = FerryNode::start(options).await;
    let containerd = Containerd::start_with_cri(&socket).await;
    containerd.use_mirror("registry.local", &ferry.url());
    let flags = ferry.node_flags();
    let config = containerd.config_path.clone();
    let certs = containerd.hosts_dir.clone();
    let good = std::fs::read_to_string(&config).expect("containerd's config");

    // The setup as it should be.
    let report = doctor_json(&flags, &config, &certs);
    assert!(report.success && report.failed().is_empty(), "{:#?}\n{}", report.checks, report.stderr);
    for name in [
        "ferry.config",
        "containerd.version",
        "containerd.config",
        "containerd.proxy_plugin",
        "containerd.plugins",
        "cri.config_path",
        "cri.snapshotter",
        "cri.snapshot_annotations",
        "cri.pull",
        "hosts.registry.local",
        "fuse.device",
        "fuse.filesystems",
        "port.registry",
        "port.metrics",
        "admin.socket",
        "snapshotter.socket",
        "node.status",
        "node.mirror",
        "upstream.registry.local",
    ] {
        assert_eq!(report.status(name), "ok", "{name}: {}", report.detail(name));
    }
    assert!(report.detail("containerd.version").contains("1.6"), "{}", report.detail("containerd.version"));
    let (success, text, _) = doctor(&flags, &config, &certs, "text");
    eprintln!("ferry doctor on the good setup:\n{text}");
    assert!(success && text.contains("OK    cri.config_path") && text.contains("\n0 FAIL, "), "{text}");

    // CRI would ignore certs.d.
    let hosts_line = format!("config_path = \"{}\"", certs.display());
    assert!(good.contains(&hosts_line), "{good}");
    let no_config_path = variant(w, "no-config-path", &good.replace(&hosts_line, ""));
    let report = doctor_json(&flags, &no_config_path, &certs);
    report.fails_only("cri.config_path");
    assert!(report.checks.iter().any(|c| c["fix"].as_str().is_some_and(|f| f.contains(&hosts_line))), "{:#?}", report.checks);

    // hosts.toml points at another port, then is missing.
    let wrong = w.join("certs-wrong");
    std::fs::create_dir_all(wrong.join("registry.local")).expect("mkdir");
    let elsewhere = format!("127.0.0.1:{}", free_port());
    std::fs::write(
        wrong.join("registry.local/hosts.toml"),
        format!("server = \"{}\"\n[host.\"http://{elsewhere}\"]\n  capabilities = [\"pull\", \"resolve\"]\n", registry.url()),
    )
    .expect("write hosts.toml");
    let wrong_config = variant(w, "wrong-certs", &good.replace(&certs.display().to_string(), &wrong.display().to_string()));
    let report = doctor_json(&flags, &wrong_config, &wrong);
    report.fails_only("hosts.registry.local");
    assert!(report.detail("hosts.registry.local").contains(&elsewhere), "{}", report.detail("hosts.registry.local"));
    std::fs::remove_file(wrong.join("registry.local/hosts.toml")).expect("rm");
    doctor_json(&flags, &wrong_config, &wrong).fails_only("hosts.registry.local");

    // containerd does not know the snapshotter, or looks for it elsewhere.
    let plugin = format!("[proxy_plugins.ferry]\n  type = \"snapshot\"\n  address = \"{}\"\n", socket.display());
    assert!(good.contains(&plugin), "{good}");
    doctor_json(&flags, &variant(w, "no-plugin", &good.replace(&plugin, "")), &certs).fails_only("containerd.proxy_plugin");
    let moved = good.replace(&socket.display().to_string(), "/run/ferry/elsewhere.sock");
    let report = doctor_json(&flags, &variant(w, "moved-plugin", &moved), &certs);
    report.fails_only("containerd.proxy_plugin");
    assert!(report.detail("containerd.proxy_plugin").contains("/run/ferry/elsewhere.sock"));

    // A config the running containerd never loaded: it knows no snapshotter "lazy".
    let renamed =
        good.replace("[proxy_plugins.ferry]", "[proxy_plugins.lazy]").replace("snapshotter = \"ferry\"", "snapshotter = \"lazy\"");
    let report = doctor_json(&flags, &variant(w, "renamed", &renamed), &certs);
    report.fails_only("containerd.plugins");
    assert_eq!(report.status("containerd.proxy_plugin"), "ok");

    // A version 3 config, which containerd 1.6 does not read.
    doctor_json(&flags, &variant(w, "v3", &good.replace("version = 2", "version = 3")), &certs).fails_only("containerd.config");

    // CRI on overlayfs: pods get no lazy layers, but nothing blocks.
    let overlay = good.replace("snapshotter = \"ferry\"", "snapshotter = \"overlayfs\"");
    let report = doctor_json(&flags, &variant(w, "overlayfs", &overlay), &certs);
    assert!(report.success && report.failed().is_empty(), "{:#?}", report.checks);
    assert_eq!(report.status("cri.snapshotter"), "warn");

    // Run in the DaemonSet's pod: CRI on the snapshotter of a node that is itself a container
    // would start nothing after a reboot; CRI on overlayfs is then as it should be.
    let (success, stdout, _) = doctor_in(&flags, &config, &certs, "json", true);
    let in_pod: Vec<Value> = serde_json::from_str(&stdout).expect("JSON");
    let failed: Vec<&str> = in_pod.iter().filter(|c| c["status"] == "fail").filter_map(|c| c["name"].as_str()).collect();
    assert!(!success && failed == ["cri.snapshotter"], "{in_pod:#?}");
    let (success, stdout, _) = doctor_in(&flags, &variant(w, "overlayfs", &overlay), &certs, "json", true);
    let in_pod: Vec<Value> = serde_json::from_str(&stdout).expect("JSON");
    assert!(success, "{in_pod:#?}");
    assert!(in_pod.iter().any(|c| c["name"] == "cri.snapshotter" && c["status"] == "info"), "{in_pod:#?}");

    // The metrics port is taken by another program (this test).
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_addr = taken.local_addr().expect("addr").to_string();
    let mut moved_flags = flags.clone();
    let at = moved_flags.iter().position(|f| f == "--metrics-listen").expect("--metrics-listen") + 1;
    moved_flags[at] = taken_addr.clone();
    let report = doctor_json(&moved_flags, &config, &certs);
    report.fails_only("port.metrics");
    assert!(report.detail("port.metrics").contains(&format!("(pid {})", std::process::id())), "{}", report.detail("port.metrics"));
    drop(taken);

    // The node stops: containerd would bypass it, which doctor says, but the setup stays sound.
    ferry.kill9();
    let report = doctor_json(&flags, &config, &certs);
    assert!(report.success && report.failed().is_empty(), "{:#?}", report.checks);
    assert_eq!(report.status("node.status"), "warn");
    assert_eq!(report.status("port.registry"), "ok", "{}", report.detail("port.registry"));
    assert_eq!(report.status("admin.socket"), "info", "kill -9 leaves a stale socket: {}", report.detail("admin.socket"));
    drop(containerd);
}
