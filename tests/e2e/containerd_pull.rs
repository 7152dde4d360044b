//! containerd (sandboxed 1.6 + runc) pulling through ferry via `hosts.toml`, for an image whose
//! registry name (`registry.local`) resolves only through the mirror: the container runs; the
//! metrics show origin bytes; a re-pull after `image rm` + GC is all cache hits with no new
//! upstream blob GETs; with the WAN refusing connections the cached image still pulls by tag
//! and by digest. Also checks that `ferry containerd-config --apply` and `--restore`, and
//! `ferry node --containerd-hosts`, write and take back hosts.toml losing nothing.

use std::process::Command;
use std::time::Duration;

use crate::harness::containerd::Containerd;
use crate::harness::ferry::{FerryNode, FerryOptions, FERRY_BIN};
use crate::harness::image::{build_busybox, push};
use crate::harness::proxy::{FaultProxy, Mode};
use crate::harness::registry::Registry;
use crate::harness::{free_port, run_cmd, temp_dir};

const IMAGE: &str = "registry.local/test/busybox:latest";

#[tokio::test(flavor = "multi_thread")]
async fn containerd_pulls_and_runs_through_ferry_then_from_cache() {
    let registry = Registry::plain().await;
    let work = temp_dir("ctr-pull");
    let image = build_busybox(work.path(), "hello from ferry");
    push(&image, &registry, "test/busybox:latest");
    let ferry = FerryNode::start(FerryOptions::upstream("registry.local", &registry.url())).await;
    let containerd = Containerd::start().await;
    containerd.use_mirror("registry.local", &ferry.url());

    containerd.pull(IMAGE).unwrap_or_else(|e| panic!("{e}"));
    let out = containerd.run(IMAGE, "ferry-e2e-1", &["/bin/busybox", "cat", "/etc/ferry-e2e"]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.trim(), "hello from ferry");
    let echoed = containerd.run(IMAGE, "ferry-e2e-2", &["/bin/sh", "-c", "echo hello"]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(echoed.trim(), "hello");
    let origin = ferry.metric("ferry_origin_bytes_total", &[]).await;
    assert!(origin >= image.layers[0].size as f64, "ferry_origin_bytes_total = {origin} after a cold pull");

    registry.settle_log().await;
    let gets_before: Vec<usize> = image.blobs().iter().map(|b| registry.count_blob_gets("test/busybox", &b.digest)).collect();
    assert!(gets_before.iter().all(|n| *n == 1), "upstream blob GETs for one pull: {gets_before:?}");
    let hits_before = ferry.metric("ferry_cache_hits_total", &[("kind", "blob")]).await;

    containerd.remove_image(IMAGE);
    let left = containerd.content_digests();
    assert!(left.is_empty(), "containerd kept content after rm --sync: {left:?}");
    containerd.pull(IMAGE).unwrap_or_else(|e| panic!("second pull: {e}"));
    let out = containerd.run(IMAGE, "ferry-e2e-3", &["/bin/busybox", "cat", "/etc/ferry-e2e"]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.trim(), "hello from ferry");

    let hits_after = ferry.metric("ferry_cache_hits_total", &[("kind", "blob")]).await;
    assert!(
        hits_after >= hits_before + image.blobs().len() as f64,
        "ferry_cache_hits_total{{kind=blob}} went {hits_before} -> {hits_after} over a re-pull of {} blobs",
        image.blobs().len()
    );
    registry.settle_log().await;
    let gets_after: Vec<usize> = image.blobs().iter().map(|b| registry.count_blob_gets("test/busybox", &b.digest)).collect();
    assert_eq!(gets_after, gets_before, "the re-pull made upstream blob GETs");
}

#[tokio::test(flavor = "multi_thread")]
async fn containerd_pulls_cached_image_while_wan_is_down() {
    let registry = Registry::plain().await;
    let work = temp_dir("ctr-offline");
    let image = build_busybox(work.path(), "offline marker");
    push(&image, &registry, "test/busybox:latest");
    let wan = FaultProxy::start(&registry.host_port());
    let ferry = FerryNode::start(FerryOptions::upstream("registry.local", &wan.url())).await;
    let containerd = Containerd::start().await;
    containerd.use_mirror("registry.local", &ferry.url());
    containerd.pull(IMAGE).unwrap_or_else(|e| panic!("{e}"));
    containerd.remove_image(IMAGE);

    wan.set_mode(Mode::Refuse);
    containerd.pull(IMAGE).unwrap_or_else(|e| panic!("pull by tag with the WAN down: {e}"));
    let out = containerd.run(IMAGE, "ferry-e2e-offline", &["/bin/busybox", "cat", "/etc/ferry-e2e"]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.trim(), "offline marker");
    containerd.remove_image(IMAGE);
    let by_digest = format!("registry.local/test/busybox@{}", image.manifest_digest);
    containerd.pull(&by_digest).unwrap_or_else(|e| panic!("pull by digest with the WAN down: {e}"));
    let out =
        containerd.run(&by_digest, "ferry-e2e-offline-2", &["/bin/busybox", "cat", "/etc/ferry-e2e"]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.trim(), "offline marker");
}

#[test]
fn containerd_config_apply_then_restore_puts_back_the_operators_file() {
    let dir = temp_dir("ctr-config");
    let certs_d = dir.path().join("certs.d");
    let listen = format!("127.0.0.1:{}", free_port());
    let args = [
        "containerd-config",
        "--registry-listen",
        &listen,
        "--upstream",
        "registry.local=http://127.0.0.1:5999",
        "--upstream",
        "other.local",
    ];

    let printed = run_cmd(Command::new(FERRY_BIN).args(args), Duration::from_secs(20));
    assert!(printed.success, "ferry containerd-config failed: {}", printed.stderr);
    assert!(printed.stdout.contains(&listen), "printed hosts.toml does not name the mirror {listen}:\n{}", printed.stdout);

    // An operator's own hosts.toml is kept aside once; applying the same config again is a no-op.
    let host_dir = certs_d.join("registry.local");
    std::fs::create_dir_all(&host_dir).expect("create certs.d/registry.local");
    let operators = "server = \"https://registry.local\"\n# the operator's own file\n";
    std::fs::write(host_dir.join("hosts.toml"), operators).expect("write the operator's hosts.toml");
    for round in 1..=2 {
        let out = run_cmd(Command::new(FERRY_BIN).args(args).arg("--apply").arg(&certs_d), Duration::from_secs(20));
        assert!(out.success, "containerd-config --apply (round {round}) failed: {}", out.stderr);
    }
    let hosts = std::fs::read_to_string(host_dir.join("hosts.toml")).expect("certs.d/registry.local/hosts.toml written");
    assert!(hosts.contains(&format!("[host.\"http://{listen}\"]")), "hosts.toml has no [host.\"http://{listen}\"]:\n{hosts}");
    assert!(hosts.contains("pull") && hosts.contains("resolve"), "hosts.toml lacks pull/resolve capabilities:\n{hosts}");
    assert_eq!(std::fs::read_to_string(host_dir.join("hosts.toml.ferry-orig")).expect("kept"), operators);
    assert!(certs_d.join("other.local/hosts.toml").is_file());

    let out = run_cmd(Command::new(FERRY_BIN).args(["containerd-config", "--restore"]).arg(&certs_d), Duration::from_secs(20));
    assert!(out.success, "containerd-config --restore failed: {}", out.stderr);
    assert!(out.stdout.contains("put back") && out.stdout.contains("removed"), "{}", out.stdout);
    assert_eq!(std::fs::read_to_string(host_dir.join("hosts.toml")).expect("put back"), operators);
    let left: Vec<String> =
        std::fs::read_dir(&certs_d).expect("ls").map(|e| e.expect("entry").file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(left, ["registry.local"], "other.local's folder held only Ferry's file");
    assert_eq!(std::fs::read_dir(&host_dir).expect("ls").count(), 1, "nothing of Ferry's is left beside the operator's file");
}

/// `ferry node --containerd-hosts DIR` points containerd at itself while it runs: the operator's
/// file comes back at each clean stop, and survives a kill -9 (after which containerd, finding
/// the mirror gone, pulls from the registry named as `server`).
#[tokio::test(flavor = "multi_thread")]
async fn the_node_points_containerd_at_itself_while_it_runs() {
    let registry = Registry::plain().await;
    let work = temp_dir("ctr-hosts");
    let image = build_busybox(work.path(), "pulled while the node ran");
    push(&image, &registry, "test/busybox:latest");
    let containerd = Containerd::start().await;
    let host_dir = containerd.hosts_dir.join("registry.local");
    std::fs::create_dir_all(&host_dir).expect("mkdir");
    let operators = format!("# the operator's own: straight to the registry\nserver = \"{}\"\n", registry.url().trim_end_matches('/'));
    std::fs::write(host_dir.join("hosts.toml"), &operators).expect("operator's hosts.toml");
    let read = || std::fs::read_to_string(host_dir.join("hosts.toml")).expect("hosts.toml");
    let original = host_dir.join("hosts.toml.ferry-orig");

    let mut options = FerryOptions::upstream("registry.local", &registry.url());
    options.extra_args = vec!["--containerd-hosts".into(), containerd.hosts_dir.display().to_string()];
    let mut ferry = FerryNode::start(options).await;
    assert!(read().contains(&format!("[host.\"{}\"]", ferry.url().trim_end_matches('/'))), "the node's file:\n{}", read());
    assert_eq!(std::fs::read_to_string(&original).expect("kept"), operators);
    containerd.pull(IMAGE).unwrap_or_else(|e| panic!("{e}"));
    let origin = ferry.metric("ferry_origin_bytes_total", &[]).await;
    assert!(origin >= image.layers[0].size as f64, "the pull went through the mirror: {origin} origin bytes");

    assert!(ferry.terminate(), "a clean stop:\n{}", ferry.log());
    assert_eq!(read(), operators, "the operator's file is back once the node stopped");
    assert!(!original.exists());

    ferry.restart().await;
    assert!(read().starts_with("# Written by `ferry containerd-config`"), "{}", read());
    ferry.kill9();
    assert_eq!(std::fs::read_to_string(&original).expect("still kept"), operators, "kill -9 loses nothing");
    containerd.remove_image(IMAGE);
    registry.settle_log().await;
    let before = registry.count_blob_gets("test/busybox", &image.layers[0].digest);
    containerd.pull(IMAGE).unwrap_or_else(|e| panic!("with the mirror gone, containerd falls back to `server`: {e}"));
    registry.settle_log().await;
    assert_eq!(registry.count_blob_gets("test/busybox", &image.layers[0].digest), before + 1, "the fallback pull went to the registry");

    ferry.restart().await;
    assert!(ferry.terminate());
    assert_eq!(read(), operators);
    assert_eq!(std::fs::read_dir(&host_dir).expect("ls").count(), 1, "{:?}", std::fs::read_dir(&host_dir).expect("ls").collect::<Vec<_>>());
}
