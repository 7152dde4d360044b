//! The mirror's basic contract over HTTP: manifests by tag and digest, blobs, HEAD, 404s,
//! `X-Ferry-Source` origin then cache, one upstream GET per blob, and the metrics that say so.

use std::process::Command;
use std::time::Duration;

use crate::harness::ferry::{FerryNode, FerryOptions, FERRY_BIN};
use crate::harness::image::{build_busybox, push};
use crate::harness::oci::{blob_url, get_ok, head, manifest_url, pull_and_verify, MANIFEST_ACCEPT};
use crate::harness::registry::Registry;
use crate::harness::{run_ok, temp_dir};

const NS: &str = "?ns=registry.local";

#[tokio::test(flavor = "multi_thread")]
async fn serves_image_from_origin_then_from_cache() {
    let registry = Registry::plain().await;
    let work = temp_dir("mirror");
    let image = build_busybox(work.path(), "mirror");
    push(&image, &registry, "test/busybox:latest");
    let ferry = FerryNode::start(FerryOptions::upstream("registry.local", &registry.url())).await;

    let first = pull_and_verify(&ferry.url(), "test/busybox", "latest", NS, &image).await;
    assert!(first.iter().all(|s| s == "origin"), "first pull should come from origin, X-Ferry-Source: {first:?}");
    let second = pull_and_verify(&ferry.url(), "test/busybox", &image.manifest_digest, NS, &image).await;
    assert!(second.iter().all(|s| s == "cache"), "second pull should come from cache, X-Ferry-Source: {second:?}");
    // Without ?ns= the only upstream is used.
    let third = pull_and_verify(&ferry.url(), "test/busybox", "latest", "", &image).await;
    assert!(third.iter().all(|s| s == "cache"), "pull without ns: X-Ferry-Source: {third:?}");

    let by_digest =
        get_ok(&format!("{}{NS}", manifest_url(&ferry.url(), "test/busybox", &image.manifest_digest)), &[("accept", MANIFEST_ACCEPT)])
            .await;
    assert_eq!(by_digest.source(), "cache", "a manifest by digest, once fetched, is served from cache");
    assert_eq!(by_digest.header("content-type"), image.media_type, "manifest Content-Type");
    assert_eq!(by_digest.header("docker-content-digest"), image.manifest_digest);

    registry.settle_log().await;
    for blob in image.blobs() {
        let gets = registry.served_blob_gets("test/busybox", &blob.digest);
        assert_eq!(gets.len(), 1, "upstream GETs of {} after three pulls: {gets:?}", blob.digest);
    }

    let layer = &image.layers[0];
    let headed = head(&format!("{}{NS}", blob_url(&ferry.url(), "test/busybox", &layer.digest))).await.expect("HEAD blob");
    assert_eq!(headed.status, 200, "HEAD of a cached blob");
    assert_eq!(headed.header("content-length"), layer.size.to_string(), "HEAD Content-Length");
    assert!(headed.body.is_empty(), "HEAD must not carry a body");

    let blob_bytes: f64 = image.blobs().iter().map(|b| b.size as f64).sum();
    let origin = ferry.metric("ferry_origin_bytes_total", &[]).await;
    let from_cache = ferry.metric("ferry_bytes_served_total", &[("source", "cache")]).await;
    let hits = ferry.metric("ferry_cache_hits_total", &[("kind", "blob")]).await;
    assert!(origin >= blob_bytes, "ferry_origin_bytes_total {origin} < {blob_bytes} bytes of blobs fetched");
    assert!(origin < 2.0 * blob_bytes + 100_000.0, "ferry_origin_bytes_total {origin}: blobs fetched twice?");
    assert!(from_cache >= 2.0 * blob_bytes, "ferry_bytes_served_total{{source=cache}} {from_cache} < two pulls' worth");
    assert!(hits >= 4.0, "ferry_cache_hits_total{{kind=blob}} = {hits}, expected >= 4");

    // `ferry status` tells the same story over the admin socket.
    let socket = ferry.admin_socket();
    let json = run_ok(Command::new(FERRY_BIN).args(["status", "--json", "--admin-socket"]).arg(&socket), Duration::from_secs(10));
    let status: serde_json::Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("ferry status --json: {e}\n{json}"));
    let traffic = &status["traffic"];
    assert_eq!(traffic["origin_bytes"].as_f64(), Some(origin), "status and metrics agree on origin bytes: {status}");
    assert_eq!(traffic["served_cache_bytes"].as_f64(), Some(from_cache), "{status}");
    assert!(status["store"]["complete_blobs"].as_u64() >= Some(image.blobs().len() as u64 + 1), "blobs and manifest kept: {status}");
    assert_eq!(status["upstreams"], serde_json::json!(["registry.local"]));
    let table = run_ok(Command::new(FERRY_BIN).args(["status", "--admin-socket"]).arg(&socket), Duration::from_secs(10));
    assert!(table.contains("cache") && table.contains("origin") && table.contains("registry.local"), "ferry status:\n{table}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_content_is_404_and_ferry_keeps_serving() {
    let registry = Registry::plain().await;
    let work = temp_dir("mirror-404");
    let image = build_busybox(work.path(), "mirror-404");
    push(&image, &registry, "test/busybox:latest");
    let ferry = FerryNode::start(FerryOptions::upstream("registry.local", &registry.url())).await;

    let missing_blob = format!("sha256:{}", "ab".repeat(32));
    let reply = get_ok(&format!("{}{NS}", blob_url(&ferry.url(), "test/busybox", &missing_blob)), &[]).await;
    assert_eq!(reply.status, 404, "unknown blob: {}", String::from_utf8_lossy(&reply.body));
    let reply = get_ok(&format!("{}{NS}", manifest_url(&ferry.url(), "test/busybox", "no-such-tag")), &[("accept", MANIFEST_ACCEPT)]).await;
    assert_eq!(reply.status, 404, "unknown tag: {}", String::from_utf8_lossy(&reply.body));
    let reply = get_ok(&format!("{}{NS}", manifest_url(&ferry.url(), "test/nothing", "latest")), &[("accept", MANIFEST_ACCEPT)]).await;
    assert_eq!(reply.status, 404, "unknown repository: {}", String::from_utf8_lossy(&reply.body));
    // A 404 is not cached as content: the real image is still served afterwards.
    pull_and_verify(&ferry.url(), "test/busybox", "latest", NS, &image).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_exits_zero_and_the_cache_survives_the_restart() {
    let registry = Registry::plain().await;
    let work = temp_dir("mirror-term");
    let image = build_busybox(work.path(), "mirror-term");
    push(&image, &registry, "test/busybox:latest");
    let mut ferry = FerryNode::start(FerryOptions::upstream("registry.local", &registry.url())).await;
    pull_and_verify(&ferry.url(), "test/busybox", "latest", NS, &image).await;

    assert!(ferry.terminate(), "ferry node did not exit with status 0 on SIGTERM:\n{}", ferry.log());
    ferry.restart().await;
    let sources = pull_and_verify(&ferry.url(), "test/busybox", &image.manifest_digest, NS, &image).await;
    assert!(sources.iter().all(|s| s == "cache"), "after a graceful restart: X-Ferry-Source {sources:?}");
    registry.settle_log().await;
    for blob in image.blobs() {
        assert_eq!(registry.count_blob_gets("test/busybox", &blob.digest), 1, "upstream GETs of {} across the restart", blob.digest);
    }
}
