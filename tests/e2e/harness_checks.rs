//! Checks of the harness itself against the real components, without ferry: if these fail,
//! the other tests' failures say nothing about ferry.

use std::time::Duration;

use crate::harness::containerd::Containerd;
use crate::harness::ferry::sum_metric;
use crate::harness::image::{build_busybox, push, push_blob};
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
