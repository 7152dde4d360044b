//! ferry's snapshotter as containerd's `[proxy_plugins.ferry]` (sandboxed containerd 1.6 and
//! runc): an image pulled with `--snapshotter ferry` is unpacked into ferry's snapshots and runs;
//! the snapshots survive a kill -9 of the node (metadata on disk) and the image runs again; image
//! removal and containerd's garbage collection remove them through the API.

use std::time::Duration;

use crate::harness::containerd::Containerd;
use crate::harness::ferry::{FerryNode, FerryOptions};
use crate::harness::image::{build_busybox, push};
use crate::harness::oci::{blob_url, get_json, manifest_url};
use crate::harness::registry::Registry;
use crate::harness::temp_dir;

const IMAGE: &str = "registry.local/test/snap:latest";

fn try_snapshot_names(containerd: &Containerd) -> Result<Vec<String>, String> {
    let out = containerd.ctr(&["snapshot", "--snapshotter", "ferry", "ls"], Duration::from_secs(20));
    if !out.success {
        return Err(out.stderr);
    }
    Ok(out.stdout.lines().skip(1).filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect())
}

fn snapshot_names(containerd: &Containerd) -> Vec<String> {
    try_snapshot_names(containerd).unwrap_or_else(|e| panic!("ctr snapshot ls: {e}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn containerd_unpacks_and_runs_images_on_ferry_snapshots_across_a_restart() {
    let registry = Registry::plain().await;
    let work = temp_dir("snapshotter");
    let image = build_busybox(work.path(), "unpacked by ferry");
    push(&image, &registry, "test/snap:latest");
    let socket = work.path().join("snapshotter.sock");
    let mut options = FerryOptions::upstream("registry.local", &registry.url());
    options.extra_args = vec!["--snapshotter-socket".into(), socket.display().to_string()];
    let mut ferry = FerryNode::start(options).await;
    let containerd = Containerd::start_with_snapshotter(&socket).await;
    containerd.use_mirror("registry.local", &ferry.url());

    containerd.pull_with(IMAGE, Some("ferry")).unwrap_or_else(|e| panic!("{e}\n{}", ferry.log()));
    let committed = snapshot_names(&containerd);
    assert_eq!(committed.len(), image.layers.len(), "one committed snapshot per layer: {committed:?}");
    let run = |id: &str| containerd.run_with(IMAGE, id, &["/bin/busybox", "cat", "/etc/ferry-e2e"], Some("ferry"));
    assert_eq!(run("snap-1").unwrap_or_else(|e| panic!("{e}\n{}", containerd.log())).trim(), "unpacked by ferry");
    let written =
        containerd.run_with(IMAGE, "snap-2", &["/bin/sh", "-c", "echo changed > /etc/ferry-e2e && cat /etc/ferry-e2e"], Some("ferry"));
    assert_eq!(written.unwrap_or_else(|e| panic!("{e}")).trim(), "changed", "the container's layer is writable");
    assert_eq!(run("snap-3").unwrap_or_else(|e| panic!("{e}")).trim(), "unpacked by ferry", "a new container starts from the image");
    let store_snapshots = ferry.store().join("snapshotter/snapshots");
    assert!(store_snapshots.is_dir(), "snapshots live in the store folder");

    // A container running across the restart keeps its files: its mounts are the kernel's.
    let mut sleeper = std::process::Command::new("ctr");
    sleeper.arg("--address").arg(containerd.socket()).args(["run", "--rm", "--snapshotter", "ferry", IMAGE, "snap-long", "/bin/sh", "-c"]);
    sleeper.arg("sleep 4; cat /etc/ferry-e2e").stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let sleeper = sleeper.spawn().expect("spawn ctr run");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !snapshot_names(&containerd).contains(&"snap-long".to_string()) {
        assert!(std::time::Instant::now() < deadline, "the long-running container never got its snapshot");
        std::thread::sleep(Duration::from_millis(50));
    }
    let restarted = std::time::Instant::now();
    ferry.restart().await;
    // containerd's gRPC connection to the snapshotter comes back on its own retry schedule.
    let names = loop {
        match try_snapshot_names(&containerd) {
            Ok(names) => break names,
            Err(e) if restarted.elapsed() < Duration::from_secs(30) && (e.contains("connection refused") || e.contains("unavailable")) => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(e) => panic!("ctr snapshot ls after the restart: {e}"),
        }
    };
    eprintln!("containerd reached the restarted snapshotter after {:?}", restarted.elapsed());
    let layers: Vec<String> = names.iter().filter(|n| *n != "snap-long").cloned().collect();
    assert_eq!(layers, committed, "the snapshots survived a kill -9 of the node");
    let sleeper = sleeper.wait_with_output().expect("ctr run");
    assert_eq!(String::from_utf8_lossy(&sleeper.stdout).trim(), "unpacked by ferry", "the running container: {sleeper:?}");
    assert_eq!(run("snap-4").unwrap_or_else(|e| panic!("after restart: {e}\n{}", ferry.log())).trim(), "unpacked by ferry");

    containerd.remove_image(IMAGE);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !snapshot_names(&containerd).is_empty() {
        assert!(std::time::Instant::now() < deadline, "containerd's GC left snapshots: {:?}", snapshot_names(&containerd));
        std::thread::sleep(Duration::from_millis(200));
    }
    let left = std::fs::read_dir(&store_snapshots).map(|d| d.count()).unwrap_or(0);
    assert_eq!(left, 0, "snapshot files were left behind");
}

/// The Snapshots API through containerd's own client (`ctr snapshot`): containerd's error kinds
/// come back for bad requests, labels and usage work, and nothing is left after removal.
#[tokio::test(flavor = "multi_thread")]
async fn the_snapshots_api_answers_containerd_with_its_own_error_kinds() {
    let work = temp_dir("snapshot-api");
    let socket = work.path().join("snapshotter.sock");
    let mut options = FerryOptions::upstream("registry.local", "http://127.0.0.1:9");
    options.extra_args = vec!["--snapshotter-socket".into(), socket.display().to_string()];
    let ferry = FerryNode::start(options).await;
    let containerd = Containerd::start_with_snapshotter(&socket).await;
    let snap = |args: &[&str]| {
        let mut all = vec!["snapshot", "--snapshotter", "ferry"];
        all.extend_from_slice(args);
        containerd.ctr(&all, Duration::from_secs(20))
    };
    let ok = |args: &[&str]| {
        let out = snap(args);
        assert!(out.success, "ctr snapshot {args:?}: {}\n{}", out.stderr, ferry.log());
        out.stdout
    };
    let fails = |args: &[&str], expect: &str| {
        let out = snap(args);
        assert!(!out.success && out.stderr.contains(expect), "ctr snapshot {args:?} should fail with {expect:?}: {out:?}");
    };
    ok(&["prepare", "base-work"]);
    let mounts = ok(&["mounts", "/mnt", "base-work"]);
    assert!(mounts.contains("bind") && mounts.contains("rw"), "a first layer is a writable bind mount: {mounts}");
    ok(&["commit", "base", "base-work"]);
    ok(&["prepare", "top-work", "base"]);
    let mounts = ok(&["mounts", "/mnt", "top-work"]);
    assert!(mounts.contains("overlay") && mounts.contains("lowerdir="), "a child is an overlay: {mounts}");
    fails(&["prepare", "orphan", "no-such-parent"], "not found");
    fails(&["prepare", "base-child", "top-work"], "not a committed snapshot");
    fails(&["commit", "base", "top-work"], "already exists");
    fails(&["rm", "base"], "failed precondition");
    ok(&["label", "base", "team=ml"]);
    assert!(ok(&["info", "base"]).contains("\"team\": \"ml\""), "the label stuck");
    let usage = ok(&["usage", "base"]);
    assert!(usage.contains("base"), "{usage}");
    ok(&["view", "top-view", "base"]);
    assert!(ok(&["mounts", "/mnt", "top-view"]).contains("ro"), "a view is read-only");
    for key in ["top-view", "top-work", "base"] {
        ok(&["rm", key]);
    }
    assert_eq!(ok(&["ls"]).lines().count(), 1, "only the header is left");
    // containerd removes from its own records at once, and from the snapshotter in its GC.
    let left = || std::fs::read_dir(ferry.store().join("snapshotter/snapshots")).map(|d| d.count()).unwrap_or(0);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while left() > 0 {
        assert!(std::time::Instant::now() < deadline, "snapshot files were left behind: {}", left());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A zstd:chunked layer (from `ferry convert`) whose image went through the node's mirror is
/// prepared the way containerd's unpacker does it for remote snapshotters (with the
/// `containerd.io/snapshot.ref` label): ferry answers "already exists" and the committed snapshot
/// is a FUSE mount of the layer, read through the mirror, whose files are right; after a kill -9
/// of the node it is mounted again; removing the snapshot unmounts it. Without the label (as
/// `ctr image pull` unpacks in 1.6) the layer is unpacked the ordinary way.
#[tokio::test(flavor = "multi_thread")]
async fn a_lazy_layer_is_mounted_through_fuse_instead_of_unpacked() {
    use snapshotter::service::api::snapshots as pb;
    let registry = Registry::plain().await;
    let work = temp_dir("snapshotter-lazy");
    let image = build_busybox(work.path(), "lazy busybox");
    push(&image, &registry, "test/lazy:src");
    let src = format!("{}/test/lazy:src", registry.host_port());
    let dst = format!("{}/test/lazy:chunked", registry.host_port());
    let out = crate::harness::run_cmd(
        std::process::Command::new(crate::harness::ferry::FERRY_BIN).args(["convert", &src, &dst]),
        Duration::from_secs(120),
    );
    assert!(out.success, "ferry convert: {}\n{}", out.stdout, out.stderr);

    let socket = work.path().join("snapshotter.sock");
    let mut options = FerryOptions::upstream("registry.local", &registry.url());
    options.extra_args = vec!["--snapshotter-socket".into(), socket.display().to_string()];
    let mut ferry = FerryNode::start(options).await;
    // The mirror indexes the image's layers when it serves the manifest.
    let base = ferry.url();
    let manifest = get_json(&format!("{}?ns=registry.local", manifest_url(&base, "test/lazy", "chunked"))).await;
    let config_digest = manifest["config"]["digest"].as_str().expect("config");
    let config = get_json(&format!("{}?ns=registry.local", blob_url(&base, "test/lazy", config_digest))).await;
    let chain_id = config["rootfs"]["diff_ids"][0].as_str().expect("diff id").to_string(); // one layer: chain ID = diff ID

    let mut api = snapshotter::service::connect(&socket).await.expect("connect");
    let plain = api.prepare(pb::PrepareSnapshotRequest { key: "plain".into(), ..Default::default() }).await.expect("a plain prepare");
    assert_eq!(plain.into_inner().mounts[0].r#type, "bind", "no label: an ordinary snapshot to unpack into");
    let labels = [("containerd.io/snapshot.ref".to_string(), chain_id.clone())].into_iter().collect();
    let err = api
        .prepare(pb::PrepareSnapshotRequest { key: "extract-1 x".into(), labels, ..Default::default() })
        .await
        .expect_err("already exists");
    assert_eq!(err.code(), tonic::Code::AlreadyExists, "{err}\n{}", ferry.log());
    let info = api
        .stat(pb::StatSnapshotRequest { key: chain_id.clone(), ..Default::default() })
        .await
        .expect("stat")
        .into_inner()
        .info
        .expect("info");
    assert_eq!(info.kind, pb::Kind::Committed as i32);
    let view = api
        .view(pb::ViewSnapshotRequest { key: "v".into(), parent: chain_id.clone(), ..Default::default() })
        .await
        .expect("view")
        .into_inner();
    let fs = std::path::PathBuf::from(&view.mounts[0].source);
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        mountinfo.lines().any(|l| l.contains(&fs.display().to_string()) && l.contains(" - fuse")),
        "{} is not a FUSE mount:\n{mountinfo}",
        fs.display()
    );
    assert_eq!(std::fs::read_to_string(fs.join("etc/ferry-e2e")).expect("read through FUSE").trim(), "lazy busybox");
    assert!(fs.join("bin/busybox").metadata().expect("busybox").len() > 100_000);

    ferry.restart().await;
    let read_again = {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match std::fs::read_to_string(fs.join("etc/ferry-e2e")) {
                Ok(text) => break text,
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("the lazy layer was not mounted again: {e}\n{}", ferry.log()),
            }
        }
    };
    assert_eq!(read_again.trim(), "lazy busybox");
    let mut api = snapshotter::service::connect(&socket).await.expect("connect again");
    api.remove(pb::RemoveSnapshotRequest { key: "v".into(), ..Default::default() }).await.expect("remove view");
    api.remove(pb::RemoveSnapshotRequest { key: chain_id.clone(), ..Default::default() }).await.expect("remove lazy");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(!mountinfo.lines().any(|l| l.contains(&fs.display().to_string())), "the FUSE mount outlived its snapshot");
}
