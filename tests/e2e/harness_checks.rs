//! Checks of the harness itself against the real components, without ferry: if these fail,
//! the other tests' failures say nothing about ferry.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::containerd::Containerd;
use crate::harness::ferry::sum_metric;
use crate::harness::image::{build_busybox, push, push_blob};
use crate::harness::netns::{leftovers, Site, WanShape};
use crate::harness::oci::{blob_url, get, get_ok, pull_and_verify, MANIFEST_ACCEPT};
use crate::harness::proxy::{FaultProxy, Mode};
use crate::harness::registry::Registry;
use crate::harness::store::StoreAuditor;
use crate::harness::{random_bytes, temp_dir};

#[tokio::test(flavor = "multi_thread")]
async fn registry_serves_pushed_content_and_log_counts_blob_gets() {
    let registry = Registry::plain().await;
    let work = temp_dir("check-registry");
    let image = build_busybox(work.path(), "check-registry");
    push(&image, &registry, "test/busybox:latest");
    pull_and_verify(&registry.url(), "test/busybox", "latest", "", &image).await;
    pull_and_verify(&registry.url(), "test/busybox", &image.manifest_digest, "", &image).await;
    registry.settle_log().await;
    let layer = &image.layers[0].digest;
    assert_eq!(registry.count_blob_gets("test/busybox", layer), 2, "{}", registry.logs());

    let data = random_bytes(7, 3 << 20);
    let digest = push_blob(&registry, "test/raw", &data).await;
    let reply = get_ok(&blob_url(&registry.url(), "test/raw", &digest), &[("range", "bytes=1048570-1048580")]).await;
    assert_eq!(reply.status, 206);
    assert_eq!(reply.body, data[1_048_570..=1_048_580]);
    registry.settle_log().await;
    assert_eq!(registry.count_blob_gets("test/raw", &digest), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn containerd_pulls_and_runs_straight_from_registry() {
    let registry = Registry::plain().await;
    let work = temp_dir("check-containerd");
    let image = build_busybox(work.path(), "check-containerd");
    push(&image, &registry, "test/busybox:latest");
    let containerd = Containerd::start().await;
    // docker-registry ignores containerd's `?ns=`, so it can stand in for the mirror here.
    containerd.use_mirror("registry.local", &registry.url());
    containerd.pull("registry.local/test/busybox:latest").expect("pull straight from the registry");
    let out =
        containerd.run("registry.local/test/busybox:latest", "check-run", &["/bin/busybox", "cat", "/etc/ferry-e2e"]).expect("run busybox");
    assert_eq!(out.trim(), "check-containerd");
    containerd.remove_image("registry.local/test/busybox:latest");
    assert!(containerd.content_digests().is_empty(), "content left after rm --sync");
}

#[tokio::test(flavor = "multi_thread")]
async fn token_htpasswd_and_tls_registries_accept_skopeo() {
    let work = temp_dir("check-auth");
    let image = build_busybox(work.path(), "check-auth");
    for registry in [Registry::token_auth("alice", "s3cret").await, Registry::basic_auth("bob", "hunter2").await, Registry::tls().await] {
        push(&image, &registry, "test/busybox:latest");
        let url = format!("{}/v2/test/busybox/manifests/latest", registry.url());
        let anonymous = registry.client().get(&url).header("accept", MANIFEST_ACCEPT).send().await.expect("anonymous GET");
        let expected = if registry.credentials().is_some() { 401 } else { 200 };
        assert_eq!(anonymous.status().as_u16(), expected, "anonymous GET {url}\n{}", registry.logs());
        if let Some(tokens) = &registry.token_server {
            assert!(tokens.issued() > 0, "skopeo never asked the token server");
            let data = random_bytes(3, 1000);
            push_blob(&registry, "test/raw", &data).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn fault_proxy_corrupts_throttles_and_refuses() {
    let registry = Registry::plain().await;
    let data = random_bytes(11, 2 << 20);
    let digest = push_blob(&registry, "test/raw", &data).await;
    let proxy = FaultProxy::start(&registry.host_port());
    let url = blob_url(&proxy.url(), "test/raw", &digest);

    assert_eq!(get_ok(&url, &[]).await.body, data, "pass-through changed bytes");
    proxy.set_mode(Mode::CorruptBlobAt(1_500_000));
    let whole = get_ok(&url, &[]).await.body;
    let diff: Vec<usize> = (0..data.len()).filter(|i| whole[*i] != data[*i]).collect();
    assert_eq!(diff, vec![1_500_000]);
    let ranged = get_ok(&url, &[("range", "bytes=1000000-1999999")]).await.body;
    assert_ne!(ranged[500_000], data[1_500_000]);
    assert_eq!(ranged[499_999], data[1_499_999]);

    proxy.set_mode(Mode::Pass);
    proxy.set_rate_limit(Some(4 << 20));
    let started = std::time::Instant::now();
    assert_eq!(get_ok(&url, &[]).await.body, data);
    assert!(started.elapsed() > Duration::from_millis(300), "rate limit had no effect");
    proxy.set_rate_limit(None);

    proxy.set_mode(Mode::Refuse);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(get(&url, &[]).await.is_err(), "refusing proxy still answered");
    proxy.set_mode(Mode::Pass);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(get_ok(&url, &[]).await.body, data, "proxy did not come back");
}

#[test]
fn store_auditor_flags_a_blob_whose_content_does_not_match_its_name() {
    let store = temp_dir("check-auditor");
    let blobs = store.path().join("blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("create blobs dir");
    let good = random_bytes(1, 1000);
    std::fs::write(blobs.join(crate::harness::sha256_hex(&good)), &good).expect("write good blob");
    let auditor = StoreAuditor::start(store.path().to_path_buf());
    auditor.audit_now();
    assert_eq!(auditor.verified().len(), 1, "the correct blob was not verified");
    std::fs::write(blobs.join("ab".repeat(32)), b"torn").expect("write torn blob");
    let violations = auditor.finish();
    assert_eq!(violations.len(), 1, "the torn blob was not flagged: {violations:?}");
}

#[test]
fn metric_parser_sums_matching_series() {
    let text = "# TYPE ferry_bytes_served_total counter\n\
                ferry_bytes_served_total{source=\"cache\"} 10\n\
                ferry_bytes_served_total{source=\"origin\",kind=\"blob\"} 5\n\
                ferry_bytes_served_total_created 1.7e9\n\
                ferry_origin_bytes_total 42\n# EOF\n";
    assert_eq!(sum_metric(text, "ferry_bytes_served_total", &[("source", "cache")]), 10.0);
    assert_eq!(sum_metric(text, "ferry_bytes_served_total", &[]), 15.0);
    assert_eq!(sum_metric(text, "ferry_origin_bytes_total", &[]), 42.0);
    assert_eq!(sum_metric(text, "ferry_cache_hits_total", &[]), 0.0);
}

/// The fixtures of the `convert` tests, without ferry: containerd pulls and runs the original
/// three-layer image of edge cases, applies its whiteouts, and the tree listing sees what the
/// image holds (modes, owners, xattrs, fifo, hardlinks, long names).
#[tokio::test(flavor = "multi_thread")]
async fn tricky_fixture_unpacks_in_containerd_as_built() {
    use crate::harness::rootfs::{build_tricky, decompress_layer, long_name, tar_listing};
    let work = temp_dir("check-tricky");
    let image = build_tricky(work.path());
    assert_eq!(image.layers.len(), 3);
    let blob = |i: usize| image.layout.join("blobs/sha256").join(image.layers[i].digest.trim_start_matches("sha256:"));
    let manifest =
        crate::harness::rootfs::read_json(&image.layout.join("blobs/sha256").join(image.manifest_digest.trim_start_matches("sha256:")));
    let mut listings = Vec::new();
    for i in 0..3 {
        let tar = work.path().join(format!("check{i}.tar"));
        decompress_layer(&blob(i), manifest["layers"][i]["mediaType"].as_str().expect("media type"), &tar);
        listings.push(tar_listing(&tar));
    }
    let l1 = listings[0].join("\n");
    assert!(
        l1.contains("data/hardlink-alias link to data/hardlink-target") || l1.contains("data/hardlink-target link to data/hardlink-alias"),
        "{l1}"
    );
    assert!(l1.contains(&long_name()), "{l1}");
    assert!(l1.contains("prw-r-----"), "{l1}");
    assert!(listings[1].join("\n").contains("data/.wh.foo"));
    assert!(listings[1].join("\n").contains("opaque/.wh..wh..opq"));

    let registry = Registry::plain().await;
    push(&image, &registry, "test/tricky:latest");
    let reference = format!("{}/test/tricky:latest", registry.host_port());
    let containerd = Containerd::start().await;
    containerd.pull_plain_http(&reference).unwrap_or_else(|e| panic!("{e}"));
    let script = "cat /etc/ferry-e2e; ls -A /opaque; test -e /data/foo && echo foo-present || echo foo-gone; /data/suid";
    let out = containerd.run(&reference, "check-tricky", &["/bin/sh", "-c", script]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.lines().collect::<Vec<_>>(), ["tricky layer 3", "new-file", "foo-gone", "suid"]);
    let mount = containerd.mount_image(&reference, "tricky");
    let listing = crate::harness::rootfs::tree_listing(&mount);
    let twice = crate::harness::rootfs::tree_listing(&mount);
    containerd.unmount_image(&mount);
    assert_eq!(listing, twice, "listing the same tree twice differs");
    let get =
        |path: &str| listing.iter().find(|e| e.path == path).unwrap_or_else(|| panic!("{path} missing from {listing:#?}")).to_string();
    assert!(get("data/suid").contains(" f 04755 0:0"), "{}", get("data/suid"));
    assert!(get("data/sticky-dir").contains(" d 01777 "), "{}", get("data/sticky-dir"));
    assert!(get("data/owned").contains(" f 0600 1000:2000"), "{}", get("data/owned"));
    assert!(get("data/big-uid").contains(" 3000000:3000000"), "{}", get("data/big-uid"));
    assert!(get("data/fifo").contains(" p 0640 "), "{}", get("data/fifo"));
    assert!(get("data/hardlink-alias").contains("nlink=2"), "{}", get("data/hardlink-alias"));
    assert!(get("data/link-long-target").contains(&format!("-> ../long/{}", long_name())), "{}", get("data/link-long-target"));
    assert!(get("data/xattr-file").contains("user.ferry.note=0x"), "{}", get("data/xattr-file"));
    assert!(get("data/xattr-dir").contains("user.dir=0x00ff10"), "{}", get("data/xattr-dir"));
    assert!(get("data/empty-a").contains(&format!("sha256={}", crate::harness::sha256_hex(b""))), "{}", get("data/empty-a"));
    assert!(listing.iter().all(|e| e.path != "data/foo" && e.path != "opaque/old-file"), "whiteouts not applied");
}

/// The Debian fixture, without ferry: containerd runs it, and its rootfs as containerd
/// unpacked it lists exactly like its layer extracted with GNU tar.
#[tokio::test(flavor = "multi_thread")]
async fn debian_fixture_unpacked_by_containerd_lists_like_its_layer() {
    use crate::harness::rootfs::{assert_same_lines, debian_image, decompress_layer, extract_tar, tree_lines, GZIP_LAYER};
    let Some(image) = debian_image() else { return };
    let registry = Registry::plain().await;
    push(&image, &registry, "test/debian:latest");
    let reference = format!("{}/test/debian:latest", registry.host_port());
    let containerd = Containerd::start().await;
    containerd.pull_plain_http(&reference).unwrap_or_else(|e| panic!("{e}"));
    let out = containerd
        .run(&reference, "check-debian", &["/bin/sh", "-c", "cat /etc/debian_version; ls /usr/bin | wc -l"])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.starts_with("12."), "{out}");
    let mount = containerd.mount_image(&reference, "debian");
    let unpacked = tree_lines(&mount);
    containerd.unmount_image(&mount);
    let work = temp_dir("check-debian");
    let tar = work.path().join("layer.tar");
    decompress_layer(&image.layout.join("blobs/sha256").join(image.layers[0].digest.trim_start_matches("sha256:")), GZIP_LAYER, &tar);
    extract_tar(&tar, &work.path().join("x"));
    let extracted = tree_lines(&work.path().join("x"));
    assert!(extracted.len() > 5000, "only {} entries", extracted.len());
    assert_same_lines("Debian rootfs", "extracted with tar", &extracted, "unpacked by containerd", &unpacked);
}

/// The WAN rate of the site checks, in Mbit/s.
const WAN_MBIT: u32 = 50;

/// Panics unless `measured` Mbit/s is within 0.6x..1.2x of the WAN rate.
fn assert_wan_rate(what: &str, measured: f64, site: &Site) {
    let rate = f64::from(WAN_MBIT);
    eprintln!("{what}: {measured:.1} Mbit/s (WAN shaped to {WAN_MBIT} Mbit/s)");
    assert!(
        (0.6 * rate..=1.2 * rate).contains(&measured),
        "{what}: {measured:.1} Mbit/s, not within 0.6..1.2 x {rate}\n{}",
        site.describe()
    );
}

/// The site harness without ferry: the origin's WAN link is shaped both ways (downloads by
/// tbf, uploads by ifb+htb), node-to-node traffic is not, the namespaced registry's access log
/// counts what crossed the WAN, and nothing of the site outlives it.
#[tokio::test(flavor = "multi_thread")]
async fn site_wan_is_shaped_both_ways_and_lan_is_not() {
    let site = Site::new(3, WanShape::mbit(WAN_MBIT));
    let tag = site.tag().to_string();
    let work = temp_dir("check-site");
    let (down_file, up_file) = (work.path().join("down.bin"), work.path().join("up.bin"));
    std::fs::write(&down_file, random_bytes(21, 16 << 20)).expect("write blob");
    std::fs::write(&up_file, random_bytes(22, 16 << 20)).expect("write blob");
    let origin = Registry::plain_in(&site, "origin").await;

    // From the origin to its own address: loopback, not the WAN.
    let (digest, local) = origin.push_blob_from(&site, "origin", "test/raw", &down_file);
    eprintln!("origin -> itself: {:.1} Mbit/s", local.mbit_per_s());
    let down = site.download("n0", &blob_url(&origin.url(), "test/raw", &digest));
    assert_eq!((down.status, down.bytes), (200, 16 << 20), "{down:?}");
    assert_wan_rate("origin -> n0 (download)", down.mbit_per_s(), &site);
    let (_, up) = origin.push_blob_from(&site, "n0", "test/up", &up_file);
    assert_eq!(up.bytes, 16 << 20, "{up:?}");
    assert_wan_rate("n0 -> origin (upload)", up.mbit_per_s(), &site);
    origin.settle_log().await;
    assert_eq!(origin.count_blob_gets("test/raw", &digest), 1, "{}", origin.logs());
    site.set_wan_rate(0);
    let unshaped = site.download("n0", &blob_url(&origin.url(), "test/raw", &digest));
    eprintln!("origin -> n0 (WAN unshaped): {:.1} Mbit/s", unshaped.mbit_per_s());
    assert!(unshaped.mbit_per_s() > 3.0 * f64::from(WAN_MBIT), "removing the shaping had no effect\n{}", site.describe());

    let n1 = site.node_ip(1);
    let mut server = site.spawn_in("n1", {
        let mut cmd = Command::new("python3");
        cmd.args(["-m", "http.server", "--bind", &n1.to_string(), "8000", "--directory"]).arg(work.path());
        cmd
    });
    let lan_url = format!("http://{n1}:8000/down.bin");
    assert_eq!(site.wait_http("n0", &lan_url, Duration::from_secs(10)), 200, "{}", site.logs());
    let lan = site.download("n0", &lan_url);
    eprintln!("n1 -> n0 (LAN): {:.1} Mbit/s", lan.mbit_per_s());
    assert_eq!(lan.bytes, 16 << 20);
    assert!(lan.mbit_per_s() > 3.0 * f64::from(WAN_MBIT), "LAN {:.1} Mbit/s is not clearly above the WAN rate", lan.mbit_per_s());

    drop(site);
    assert!(server.try_wait().expect("try_wait").is_some(), "the server in n1 outlived the site");
    assert_eq!(leftovers(&tag), Vec::<String>::new());
}

/// Cutting the WAN link makes connections to the origin fail within seconds while the LAN
/// stays up; restoring it brings the origin back. A site can also start with the link cut.
#[tokio::test(flavor = "multi_thread")]
async fn site_wan_can_be_cut_and_restored() {
    let site = Site::new(2, WanShape { rate_mbit: WAN_MBIT, down: true });
    let tag = site.tag().to_string();
    let origin = Registry::plain_in(&site, "origin").await;
    let v2 = format!("{}/v2/", origin.url());
    let unreachable = |when: &str| {
        let started = Instant::now();
        let out = site.curl("n0", &["--connect-timeout", "3", "--max-time", "5", "-o", "/dev/null", &v2], Duration::from_secs(10));
        assert!(!out.success, "{when}: the origin answered across a cut WAN link");
        assert!(started.elapsed() < Duration::from_secs(6), "{when}: failing took {:?}", started.elapsed());
    };
    unreachable("created cut");
    assert_eq!(site.http_status("origin", &v2), Some(200), "the origin itself lost its registry");
    site.set_wan_down(false);
    assert_eq!(site.http_status("n0", &v2), Some(200), "restored WAN link");
    site.set_wan_down(true);
    assert!(site.wan().down);
    unreachable("cut again");
    // Nothing listens on n1:1: a quick refusal proves the LAN is still up.
    let started = Instant::now();
    let refused = site.curl("n0", &["--connect-timeout", "3", &format!("http://{}:1/", site.node_ip(1))], Duration::from_secs(10));
    assert!(refused.stderr.contains("refused") || refused.stderr.contains("Couldn't connect"), "n0 -> n1: {refused:?}");
    assert!(started.elapsed() < Duration::from_secs(2), "n0 -> n1 took {:?}", started.elapsed());
    site.set_wan_down(false);
    assert_eq!(site.http_status("n0", &v2), Some(200), "restored WAN link, twice");
    drop(origin);
    drop(site);
    assert_eq!(leftovers(&tag), Vec::<String>::new());
}

/// A test that panics while it owns a site still leaves no namespace, link or process behind.
#[test]
fn site_is_cleaned_up_when_the_test_panics() {
    let (mut tag, mut pid) = (String::new(), 0u32);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let site = Site::new(1, WanShape::mbit(10));
        tag = site.tag().to_string();
        let mut sleeper = Command::new("sleep");
        sleeper.arg("600");
        pid = site.spawn_in("n0", sleeper).id();
        panic!("deliberate panic with a live site (its description below is expected)");
    }));
    assert!(result.is_err());
    assert_eq!(leftovers(&tag), Vec::<String>::new());
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    assert!(status.is_empty() || status.contains("State:\tZ"), "sleep {pid} in n0 survived the site: {status}");
}
