//! "Its absence is survivable": once an image went through ferry, it is served again by tag and
//! by digest with the upstream gone (registry killed, or the WAN refusing connections), and
//! content ferry never saw fails fast instead of hanging.

use std::time::{Duration, Instant};

use crate::harness::ferry::{FerryNode, FerryOptions};
use crate::harness::image::{build_busybox, push};
use crate::harness::oci::{blob_url, get, manifest_url, pull_and_verify, MANIFEST_ACCEPT};
use crate::harness::proxy::{FaultProxy, Mode};
use crate::harness::registry::Registry;
use crate::harness::temp_dir;

const NS: &str = "?ns=registry.local";

async fn assert_cached_pulls_work(ferry: &FerryNode, image: &crate::harness::image::TestImage, when: &str) {
    for reference in ["latest", image.manifest_digest.as_str()] {
        let sources = pull_and_verify(&ferry.url(), "test/busybox", reference, NS, image).await;
        assert!(sources.iter().all(|s| s == "cache"), "{when}, pull by {reference}: X-Ferry-Source {sources:?}");
    }
}

/// Uncached content with no upstream: an error status (not 200) within 30 s.
async fn assert_uncached_fails_fast(ferry: &FerryNode) {
    let started = Instant::now();
    let missing = format!("sha256:{}", "cd".repeat(32));
    let reply = get(&format!("{}{NS}", blob_url(&ferry.url(), "test/busybox", &missing)), &[]).await;
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(30), "uncached blob with upstream down took {elapsed:?}");
    if let Ok(reply) = reply {
        assert!(reply.status >= 400, "uncached blob with upstream down answered {}", reply.status);
    }
    let reply = get(&format!("{}{NS}", manifest_url(&ferry.url(), "test/busybox", "never-pulled")), &[("accept", MANIFEST_ACCEPT)]).await;
    if let Ok(reply) = reply {
        assert!(reply.status >= 400, "uncached tag with upstream down answered {}", reply.status);
    }
    assert!(started.elapsed() < Duration::from_secs(60), "uncached requests with upstream down took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn cached_image_pulls_by_tag_and_digest_after_registry_is_killed() {
    let mut registry = Registry::plain().await;
    let work = temp_dir("offline-kill");
    let image = build_busybox(work.path(), "offline-kill");
    push(&image, &registry, "test/busybox:latest");
    let ferry = FerryNode::start(FerryOptions::upstream("registry.local", &registry.url())).await;
    pull_and_verify(&ferry.url(), "test/busybox", "latest", NS, &image).await;

    registry.kill();
    assert_cached_pulls_work(&ferry, &image, "registry killed").await;
    assert_uncached_fails_fast(&ferry).await;
    // Still good on a second round (no state was poisoned by the failures).
    assert_cached_pulls_work(&ferry, &image, "registry killed, second round").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cached_image_pulls_while_wan_refuses_connections_and_after_restart() {
    let registry = Registry::plain().await;
    let work = temp_dir("offline-wan");
    let image = build_busybox(work.path(), "offline-wan");
    push(&image, &registry, "test/busybox:latest");
    let wan = FaultProxy::start(&registry.host_port());
    let mut ferry = FerryNode::start(FerryOptions::upstream("registry.local", &wan.url())).await;
    pull_and_verify(&ferry.url(), "test/busybox", "latest", NS, &image).await;

    wan.set_mode(Mode::Refuse);
    assert_cached_pulls_work(&ferry, &image, "WAN refusing").await;
    assert_uncached_fails_fast(&ferry).await;

    // The cache (including the tag) survives a restart while the WAN is still down.
    ferry.restart().await;
    assert_cached_pulls_work(&ferry, &image, "WAN refusing, after restart").await;

    wan.set_mode(Mode::Pass);
    pull_and_verify(&ferry.url(), "test/busybox", "latest", NS, &image).await;
}
