//! Crash safety: kill -9 of ferry in the middle of a 200 MiB download (the upstream path is
//! rate-limited so the kill lands mid-transfer), restart on the same store, and a full GET
//! completes with the right bytes. An auditor hashes every file that ever appears under
//! STORE/blobs/sha256/ throughout: none may differ from its name.

use std::time::{Duration, Instant};

use crate::harness::ferry::{FerryNode, FerryOptions};
use crate::harness::image::push_blob;
use crate::harness::oci::{blob_url, stream_compare};
use crate::harness::proxy::FaultProxy;
use crate::harness::registry::Registry;
use crate::harness::store::StoreAuditor;
use crate::harness::{random_bytes, wait_for};

const SIZE: usize = 200 * (1 << 20) + 777;
const RATE: u64 = 40 << 20;

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_download_then_restart_serves_correct_bytes() {
    let registry = Registry::plain().await;
    let data = random_bytes(500, SIZE);
    let digest = push_blob(&registry, "test/huge", &data).await;
    let hex = digest.trim_start_matches("sha256:").to_string();
    let wan = FaultProxy::start(&registry.host_port());
    wan.set_rate_limit(Some(RATE));
    let mut ferry = FerryNode::start(FerryOptions::upstream("registry.local", &wan.url())).await;
    let auditor = StoreAuditor::start(ferry.store());

    // Read ~60 MiB of the download (about 1.5 s at the limited rate: past the store's first
    // once-a-second piece-map write), then kill -9.
    let url = format!("{}?ns=registry.local", blob_url(&ferry.url(), "test/huge", &digest));
    let started = Instant::now();
    let partial = stream_compare(&url, &data, Some(60 << 20)).await;
    assert_eq!(partial.status, 200, "first GET: {partial:?}");
    assert!(partial.first_mismatch.is_none(), "first GET served wrong bytes before the kill: {partial:?}");
    assert!(partial.received < SIZE, "download finished before the kill ({:?}); the rate limit did not hold", started.elapsed());
    ferry.kill9();
    auditor.audit_now();
    let complete_after_kill = ferry.complete_blobs().iter().any(|(name, _)| *name == hex);
    assert!(!complete_after_kill || auditor.verified().contains(&hex), "blob marked complete after kill -9 is not verified");

    wan.set_rate_limit(None);
    ferry.restart().await;
    auditor.audit_now();
    let origin_before = ferry.metric("ferry_origin_bytes_total", &[]).await;
    // The restarted node listens on new ports.
    let url = format!("{}?ns=registry.local", blob_url(&ferry.url(), "test/huge", &digest));
    let full = stream_compare(&url, &data, None).await;
    assert!(full.is_exact(&data), "GET after restart did not return the blob exactly: {full:?}");
    let origin_fetched = ferry.metric("ferry_origin_bytes_total", &[]).await - origin_before;
    eprintln!("crash test: {} bytes read before the kill; {origin_fetched} bytes fetched from origin after restart", partial.received);
    assert!(
        origin_fetched <= (SIZE - (16 << 20)) as f64,
        "the restart fetched {origin_fetched} of {SIZE} bytes again: the pieces persisted before the kill were not reused"
    );

    let store_blob = ferry.store().join("blobs/sha256").join(&hex);
    wait_for("the 200 MiB blob to be committed to the store", Duration::from_secs(60), || {
        let exists = store_blob.is_file();
        async move { exists.then_some(()) }
    })
    .await;
    let verified_hex = hex.clone();
    wait_for("the auditor to hash the committed blob", Duration::from_secs(30), || {
        let done = auditor.verified().contains(&verified_hex);
        async move { done.then_some(()) }
    })
    .await;
    let violations = auditor.finish();
    assert!(violations.is_empty(), "files under STORE/blobs/sha256 whose content does not match their name: {violations:?}");
    // A second GET is served from the cache, intact.
    let again = stream_compare(&url, &data, None).await;
    assert!(again.is_exact(&data) && again.source == "cache", "GET from cache after restart: {again:?}");
}
