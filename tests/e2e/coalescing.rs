//! "Cross the WAN once" on one node: 50 clients asking at the same moment for one cold
//! ~64 MiB blob all get exactly its bytes, and the upstream registry served ONE GET for it.

use std::sync::Arc;

use crate::harness::ferry::{FerryNode, FerryOptions};
use crate::harness::image::push_blob;
use crate::harness::oci::{blob_url, stream_compare};
use crate::harness::registry::Registry;
use crate::harness::{digest_of, random_bytes};

const CLIENTS: usize = 50;
const SIZE: usize = 64 * (1 << 20) + 12_345;

#[tokio::test(flavor = "multi_thread")]
async fn fifty_concurrent_cold_gets_make_one_upstream_fetch() {
    let registry = Registry::plain().await;
    let data = Arc::new(random_bytes(64, SIZE));
    let digest = push_blob(&registry, "test/big", &data).await;
    assert_eq!(digest, digest_of(&data));
    let ferry = FerryNode::start(FerryOptions::upstream("registry.local", &registry.url())).await;
    let url = format!("{}?ns=registry.local", blob_url(&ferry.url(), "test/big", &digest));

    let barrier = Arc::new(tokio::sync::Barrier::new(CLIENTS));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (barrier, data, url) = (barrier.clone(), data.clone(), url.clone());
        clients.push(tokio::spawn(async move {
            barrier.wait().await;
            stream_compare(&url, &data, None).await
        }));
    }
    let mut failures = Vec::new();
    for (i, client) in clients.into_iter().enumerate() {
        let seen = client.await.expect("client task");
        if !seen.is_exact(&data) {
            failures.push(format!("client {i}: {seen:?}"));
        }
    }
    assert!(failures.is_empty(), "{} of {CLIENTS} clients did not get the blob's exact bytes:\n{}", failures.len(), failures.join("\n"));

    registry.settle_log().await;
    let gets = registry.served_blob_gets("test/big", &digest);
    let upstream_bytes: u64 = gets.iter().map(|g| g.bytes).sum();
    assert_eq!(
        gets.len(),
        1,
        "upstream served {} GETs ({upstream_bytes} bytes) of a {SIZE}-byte blob to 50 concurrent clients: {gets:?}",
        gets.len()
    );
    assert_eq!(upstream_bytes, SIZE as u64, "upstream bytes for the blob");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_cold_ranges_fetch_each_byte_from_upstream_at_most_once() {
    const RANGED_SIZE: usize = 8 * (1 << 20) + 999;
    let registry = Registry::plain().await;
    let data = Arc::new(random_bytes(65, RANGED_SIZE));
    let digest = push_blob(&registry, "test/ranged", &data).await;
    let ferry = FerryNode::start(FerryOptions::upstream("registry.local", &registry.url())).await;
    let url = format!("{}?ns=registry.local", blob_url(&ferry.url(), "test/ranged", &digest));

    // 24 overlapping windows of 1.5 MiB, starting every 1/3 MiB: every piece wanted many times.
    let spans: Vec<(usize, usize)> =
        (0..24).map(|i| i * (1 << 20) / 3).map(|start| (start, (start + 3 * (1 << 19)).min(RANGED_SIZE) - 1)).collect();
    let barrier = Arc::new(tokio::sync::Barrier::new(spans.len()));
    let mut clients = Vec::new();
    for (first, last) in spans.clone() {
        let (barrier, url) = (barrier.clone(), url.clone());
        clients.push(tokio::spawn(async move {
            barrier.wait().await;
            crate::harness::oci::get(&url, &[("range", &format!("bytes={first}-{last}"))]).await
        }));
    }
    for ((first, last), client) in spans.into_iter().zip(clients) {
        let reply = client.await.expect("client task").unwrap_or_else(|e| panic!("range {first}-{last}: {e}"));
        assert_eq!(reply.status, 206, "range {first}-{last}");
        assert!(reply.body == data[first..=last], "range {first}-{last}: wrong bytes");
    }

    registry.settle_log().await;
    let gets = registry.served_blob_gets("test/ranged", &digest);
    let upstream_bytes: u64 = gets.iter().map(|g| g.bytes).sum();
    assert!(
        upstream_bytes <= RANGED_SIZE as u64,
        "upstream sent {upstream_bytes} bytes of a {RANGED_SIZE}-byte blob for overlapping concurrent ranges \
         (some pieces fetched twice): {gets:?}"
    );
}
