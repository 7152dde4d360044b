//! A full disk: the store sits on a 24 MiB tmpfs. A blob larger than the store's capacity is
//! refused with a clear 507; with a capacity set above what the disk really holds, the write
//! fails mid-blob (ENOSPC), the client's transfer fails, nothing is kept as complete, the failed
//! partial is discarded, and the node goes on serving other blobs from the same disk.

use crate::harness::ferry::{FerryNode, FerryOptions};
use crate::harness::image::push_blob;
use crate::harness::oci::{blob_url, get, stream_compare};
use crate::harness::random_bytes;
use crate::harness::registry::Registry;

const DISK: u64 = 24 << 20;

#[tokio::test(flavor = "multi_thread")]
async fn a_blob_over_capacity_is_refused_clearly() {
    let registry = Registry::plain().await;
    let big = random_bytes(701, 30 << 20);
    let digest = push_blob(&registry, "test/disk", &big).await;
    // Default capacity: 80% of the 24 MiB filesystem.
    let options = FerryOptions { store_tmpfs: Some(DISK), ..FerryOptions::upstream("registry.local", &registry.url()) };
    let ferry = FerryNode::start(options).await;
    let url = format!("{}?ns=registry.local", blob_url(&ferry.url(), "test/disk", &digest));
    let reply = get(&url, &[]).await.expect("ferry answers");
    let body = String::from_utf8_lossy(&reply.body).to_string();
    assert_eq!(reply.status, 507, "over-capacity blob: {body}");
    assert!(body.contains("over the limit"), "the error names the problem: {body}");
    assert!(ferry.complete_blobs().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_fails_the_transfer_loses_nothing_and_the_node_keeps_serving() {
    let registry = Registry::plain().await;
    let big = random_bytes(702, 30 << 20);
    let small = random_bytes(703, 3 << 20);
    let big_digest = push_blob(&registry, "test/disk", &big).await;
    let small_digest = push_blob(&registry, "test/disk", &small).await;
    let mut options = FerryOptions { store_tmpfs: Some(DISK), ..FerryOptions::upstream("registry.local", &registry.url()) };
    options.extra_args = vec!["--capacity".into(), "1GiB".into()];
    let ferry = FerryNode::start(options).await;

    let big_url = format!("{}?ns=registry.local", blob_url(&ferry.url(), "test/disk", &big_digest));
    let got = stream_compare(&big_url, &big, None).await;
    assert!(!got.is_exact(&big), "a 30 MiB blob cannot have been stored on a 24 MiB disk: {got:?}");
    assert!(got.first_mismatch.is_none(), "bytes sent before the failure must be right: {got:?}");
    assert!(ferry.complete_blobs().iter().all(|(hex, _)| !big_digest.ends_with(hex.as_str())), "nothing incomplete is kept as complete");
    assert!(ferry.log().contains("No space left on device"), "the log names the cause:\n{}", ferry.log());

    // The failed partial was discarded, so the disk has room again.
    let small_url = format!("{}?ns=registry.local", blob_url(&ferry.url(), "test/disk", &small_digest));
    let ok = stream_compare(&small_url, &small, None).await;
    assert!(ok.is_exact(&small), "the node keeps serving after a full disk: {ok:?}");
    let again = stream_compare(&small_url, &small, None).await;
    assert!(again.is_exact(&small) && again.source == "cache", "and caching: {again:?}");
}
