//! The DaemonSet's pod without Kubernetes: `ferry node` run by containerd and runc in a container
//! set up as kubelet sets up `deploy/kubernetes/daemonset.yaml`'s — privileged, in the host's
//! network, the store bind-mounted at its own path with shared propagation (`Bidirectional`,
//! the container's root `rshared`, as CRI does it), the sockets' folder, containerd's certs.d,
//! config and socket bind-mounted — serving as the snapshotter of the very containerd that runs
//! it. Proved here:
//! - the lazy layers the node mounts inside its container reach the host's mount namespace, where
//!   containerd stacks them: a container on the host reads a lazy layer's files;
//! - the node points containerd's certs.d at itself from inside the container, and takes its file
//!   out again when the pod is stopped (SIGTERM);
//! - `ferry doctor` run in the pod (`ctr task exec`, as `kubectl exec` would) reaches containerd
//!   over the mounted socket and finds the node and its hosts.toml.
//!
//! The host's `/` here is a private mount (no systemd), so the test makes the store folder a
//! shared mount first, as systemd makes every mount on a Kubernetes node.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::containerd::Containerd;
use crate::harness::ferry::FERRY_BIN;
use crate::harness::{free_port, random_bytes, run_ok, sha256_hex, temp_dir};
use crate::lazy_pull::{converted_busybox, pull_through, registry_layers};

const POD: &str = "ferry-node-pod";

/// `dir` as a shared mount of its own, unmounted (with everything below it) on drop.
struct SharedMount(PathBuf);

impl SharedMount {
    fn new(dir: &Path) -> SharedMount {
        std::fs::create_dir_all(dir).expect("mkdir");
        let dir_s = dir.to_string_lossy().to_string();
        run_ok(Command::new("mount").args(["--bind", &dir_s, &dir_s]), Duration::from_secs(10));
        run_ok(Command::new("mount").args(["--make-shared", &dir_s]), Duration::from_secs(10));
        SharedMount(dir.to_path_buf())
    }
}

impl Drop for SharedMount {
    fn drop(&mut self) {
        Containerd::unmount_all(&self.0);
    }
}

/// A root filesystem for the pod: the host's `/usr` (read only, with Debian's merged `/bin`,
/// `/lib`, … links) and empty mount points; everything else is mounted.
fn rootfs(dir: &Path) {
    for sub in ["usr", "etc", "proc", "sys", "dev", "tmp", "run", "var"] {
        std::fs::create_dir_all(dir.join(sub)).expect("mkdir");
    }
    for link in ["bin", "sbin", "lib", "lib64"] {
        std::os::unix::fs::symlink(format!("usr/{link}"), dir.join(link)).expect("symlink");
    }
}

fn bind(src: &Path, dst: &Path, options: &str) -> String {
    format!("type=bind,src={},dst={},options={options}", src.display(), dst.display())
}

fn task_status(containerd: &Containerd) -> String {
    let out = containerd.ctr(&["task", "ls"], Duration::from_secs(10));
    out.stdout.lines().find(|l| l.starts_with(POD)).and_then(|l| l.split_whitespace().nth(2)).unwrap_or("").to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemonsets_pod_serves_lazy_layers_to_the_containerd_that_runs_it() {
    let work = temp_dir("pod");
    let w = work.path();
    let model = random_bytes(71, 12 << 20);
    let registry = converted_busybox(w, "lazy through the pod", &[("opt/model.bin", &model)], "test/pod").await;
    let (layer, layer_size) = registry_layers(&registry, "test/pod", "chunked").await.remove(0);

    // Host paths, each mounted at the same path in the pod: containerd on the host is handed the
    // snapshotter's paths as the node sees them.
    let store = w.join("store");
    let _shared = SharedMount::new(&store);
    let run = w.join("run");
    std::fs::create_dir_all(&run).expect("mkdir run");
    let socket = run.join("snapshotter.sock");
    let containerd = Containerd::start_with_snapshotter(&socket).await;
    let (mirror, metrics) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let config_dir = w.join("etc-ferry");
    std::fs::create_dir_all(&config_dir).expect("mkdir");
    std::fs::write(
        config_dir.join("ferry.toml"),
        format!(
            "[store]\npath = \"{store}\"\n\
             [registry]\nlisten = \"{mirror}\"\ncontainerd_hosts = \"/etc/containerd/certs.d\"\n\
             [[registry.upstreams]]\nhost = \"registry.local\"\nurl = \"{url}\"\n\
             [metrics]\nlisten = \"{metrics}\"\n[admin]\nsocket = \"{admin}\"\n\
             [snapshotter]\nsocket = \"{socket}\"\nprefetch_rate = \"off\"\n",
            store = store.display(),
            url = registry.url(),
            admin = run.join("admin.sock").display(),
            socket = socket.display(),
        ),
    )
    .expect("write ferry.toml");
    let root = w.join("rootfs");
    rootfs(&root);
    let bin_dir = Path::new(FERRY_BIN).parent().expect("the binary's folder");
    let log = w.join("pod.log");

    // The pod: privileged, host network, rshared root, the DaemonSet's mounts.
    let mounts = [
        bind(&store, &store, "rbind:rshared"),
        bind(&run, &run, "rbind:rw"),
        bind(&containerd.hosts_dir, Path::new("/etc/containerd/certs.d"), "rbind:rw"),
        bind(&containerd.config_path, &containerd.config_path, "bind:ro"),
        bind(&containerd.socket, &containerd.socket, "bind:rw"),
        bind(&config_dir, Path::new("/etc/ferry"), "rbind:ro"),
        bind(Path::new("/usr"), Path::new("/usr"), "rbind:ro"),
        bind(bin_dir, bin_dir, "rbind:ro"),
    ];
    let mut args: Vec<String> =
        ["run", "-d", "--rootfs", "--rootfs-propagation", "rshared", "--privileged", "--net-host"].map(String::from).to_vec();
    for m in &mounts {
        args.extend(["--mount".to_string(), m.clone()]);
    }
    args.extend(["--log-uri".to_string(), format!("file://{}", log.display()), "--env".to_string(), "FERRY_LOG=info".to_string()]);
    // Kubelet sets it in every container, and `kubectl exec`'s processes inherit it.
    args.extend(["--env".to_string(), "KUBERNETES_SERVICE_HOST=10.96.0.1".to_string()]);
    args.extend([root.display().to_string(), POD.to_string(), FERRY_BIN.to_string()]);
    args.extend(["node", "--config", "/etc/ferry/ferry.toml"].map(String::from));
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let started = containerd.ctr(&argv, Duration::from_secs(60));
    assert!(started.success, "ctr run the pod: {}\n{}\n{}", started.stdout, started.stderr, containerd.log());
    let pod_log = || std::fs::read_to_string(&log).unwrap_or_default();

    let answers = || {
        let out = Command::new(FERRY_BIN).args(["status", "--json", "--admin-socket"]).arg(run.join("admin.sock")).output();
        out.is_ok_and(|o| o.status.success())
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !answers() {
        assert!(Instant::now() < deadline, "the node in the pod did not answer within 30 s ({}):\n{}", task_status(&containerd), pod_log());
        std::thread::sleep(Duration::from_millis(200));
    }

    // From inside the pod, the node pointed containerd at itself.
    let hosts = containerd.hosts_dir.join("registry.local/hosts.toml");
    let text = std::fs::read_to_string(&hosts).unwrap_or_else(|e| panic!("{}: {e}\n{}", hosts.display(), pod_log()));
    assert!(text.contains(&format!("[host.\"http://{mirror}\"]")), "{text}");

    // A lazy pull on the host: the snapshotter in the pod mounts the layer through FUSE, and the
    // mount shows in the host's mount namespace, where containerd runs the container on it.
    let reference = "registry.local/test/pod:chunked";
    let outcomes = pull_through(&mirror, &containerd, reference).unwrap_or_else(|e| panic!("{e}\npod:\n{}", pod_log()));
    assert_eq!(outcomes, ["lazy"], "the layer is mounted, not downloaded");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let prefix = store.display().to_string();
    assert!(
        mountinfo.lines().any(|l| l.contains(" - fuse") && l.split_whitespace().nth(4).is_some_and(|m| m.starts_with(&prefix))),
        "the pod's FUSE mount is not in the host's mount namespace:\n{mountinfo}"
    );
    let sum = containerd
        .run_with(reference, "on-the-pods-layer", &["/bin/busybox", "sha256sum", "/opt/model.bin"], Some("ferry"))
        .unwrap_or_else(|e| panic!("{e}\npod:\n{}\n{}", pod_log(), containerd.log()));
    assert_eq!(sum.split_whitespace().next(), Some(sha256_hex(&model).as_str()));
    registry.settle_log().await;
    let fetched: u64 = registry.served_blob_gets("test/pod", &layer).iter().map(|l| l.bytes).sum();
    assert!(fetched < layer_size * 2, "the layer was fetched lazily, not over and over: {fetched} of {layer_size}");

    // `kubectl exec <pod> -- ferry doctor`: containerd through the mounted socket. CRI is off in
    // this containerd, so doctor has no CRI snapshotter to fail on.
    let doctor = containerd.ctr(
        &[
            "task",
            "exec",
            "--exec-id",
            "doctor",
            POD,
            FERRY_BIN,
            "doctor",
            "--config",
            "/etc/ferry/ferry.toml",
            "--containerd-config",
            &containerd.config_path.display().to_string(),
            "--containerd-address",
            &containerd.socket.display().to_string(),
            "--output",
            "json",
        ],
        Duration::from_secs(60),
    );
    let checks: Vec<Value> =
        serde_json::from_str(&doctor.stdout).unwrap_or_else(|e| panic!("doctor's JSON ({e}):\n{}\n{}", doctor.stdout, doctor.stderr));
    let outcome = |name: &str| checks.iter().find(|c| c["name"] == name).map(|c| c["status"].as_str().unwrap_or("").to_string());
    for name in
        ["containerd.version", "containerd.plugins", "containerd.proxy_plugin", "hosts.registry.local", "fuse.device", "node.status"]
    {
        assert_eq!(outcome(name).as_deref(), Some("ok"), "{name} in {checks:#?}");
    }

    // The pod stops (SIGTERM, as kubelet stops it): the node takes its hosts.toml out.
    containerd.ctr(&["task", "kill", "--signal", "SIGTERM", POD], Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(30);
    while task_status(&containerd) != "STOPPED" {
        assert!(Instant::now() < deadline, "the pod did not stop on SIGTERM:\n{}", pod_log());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!hosts.exists(), "the stopped node left {}:\n{}", hosts.display(), pod_log());
    // The shim copies the node's output to the log file a moment after the process ends.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pod_log().contains("ferry node stopped") {
        assert!(Instant::now() < deadline, "no clean stop in the pod's log:\n{}", pod_log());
        std::thread::sleep(Duration::from_millis(100));
    }
    containerd.ctr(&["task", "delete", POD], Duration::from_secs(10));
    containerd.ctr(&["container", "delete", POD], Duration::from_secs(10));
}
