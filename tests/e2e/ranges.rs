//! Range requests on a ~5 MiB blob, compared byte for byte with what the upstream registry
//! answers for the same Range and with the pushed data: start, middle, across 1 MiB piece
//! boundaries, suffix (`bytes=-N`), open-ended (`bytes=N-`), past the end; each both cold
//! (a fresh blob ferry has never seen) and warm (after a full GET); unsatisfiable → 416.

use crate::harness::ferry::{FerryNode, FerryOptions};
use crate::harness::image::push_blob;
use crate::harness::oci::{blob_url, get_ok, Reply};
use crate::harness::random_bytes;
use crate::harness::registry::Registry;

const SIZE: u64 = 5 * (1 << 20) + 4321;
const MIB: u64 = 1 << 20;

/// (Range header, expected inclusive byte span).
fn satisfiable_cases() -> Vec<(String, (u64, u64))> {
    vec![
        ("bytes=0-99".into(), (0, 99)),
        ("bytes=2621440-2621440".into(), (2_621_440, 2_621_440)),
        (format!("bytes={}-{}", MIB - 1000, MIB + 1000), (MIB - 1000, MIB + 1000)),
        (format!("bytes={}-{}", MIB - 1, 3 * MIB), (MIB - 1, 3 * MIB)),
        ("bytes=-1000".into(), (SIZE - 1000, SIZE - 1)),
        (format!("bytes={}-", 4 * MIB - 7), (4 * MIB - 7, SIZE - 1)),
        (format!("bytes={}-99999999", 5 * MIB), (5 * MIB, SIZE - 1)),
        (format!("bytes={}-{}", SIZE - 1, SIZE - 1), (SIZE - 1, SIZE - 1)),
    ]
}

fn unsatisfiable_cases() -> Vec<String> {
    vec![format!("bytes={SIZE}-"), format!("bytes={}-{}", SIZE + 10, SIZE + 20)]
}

fn check_partial(reply: &Reply, range: &str, (first, last): (u64, u64), data: &[u8], when: &str) {
    let body = String::from_utf8_lossy(&reply.body[..reply.body.len().min(300)]).to_string();
    assert_eq!(reply.status, 206, "{when} {range}: status (body {body:?})");
    assert_eq!(reply.header("content-range"), format!("bytes {first}-{last}/{SIZE}"), "{when} {range}: Content-Range");
    let expected = &data[first as usize..=last as usize];
    assert_eq!(reply.body.len(), expected.len(), "{when} {range}: body length");
    assert!(reply.body == expected, "{when} {range}: body differs from the blob's bytes");
}

async fn upstream_range(registry: &Registry, repo: &str, digest: &str, range: &str) -> Reply {
    get_ok(&blob_url(&registry.url(), repo, digest), &[("range", range)]).await
}

#[tokio::test(flavor = "multi_thread")]
async fn ranges_match_upstream_cold_and_warm() {
    let registry = Registry::plain().await;
    let ferry = FerryNode::start(FerryOptions::upstream("registry.local", &registry.url())).await;
    let cases = satisfiable_cases();
    let mut blobs = Vec::new();
    for (seed, _) in cases.iter().enumerate() {
        let data = random_bytes(100 + seed as u64, SIZE as usize);
        let digest = push_blob(&registry, "test/ranges", &data).await;
        blobs.push((data, digest));
    }

    for ((range, span), (data, digest)) in cases.iter().zip(&blobs) {
        let upstream = upstream_range(&registry, "test/ranges", digest, range).await;
        check_partial(&upstream, range, *span, data, "upstream");
        let url = format!("{}?ns=registry.local", blob_url(&ferry.url(), "test/ranges", digest));
        let cold = get_ok(&url, &[("range", range)]).await;
        check_partial(&cold, range, *span, data, "ferry cold");
        assert!(cold.body == upstream.body, "ferry cold {range}: differs from upstream's reply");
    }

    for ((range, span), (data, digest)) in cases.iter().zip(&blobs) {
        let url = format!("{}?ns=registry.local", blob_url(&ferry.url(), "test/ranges", digest));
        let whole = get_ok(&url, &[]).await;
        assert_eq!(whole.status, 200, "full GET after a range");
        assert!(whole.body == *data, "full GET after a range: wrong bytes");
        let warm = get_ok(&url, &[("range", range)]).await;
        check_partial(&warm, range, *span, data, "ferry warm");
        assert_eq!(warm.source(), "cache", "ferry warm {range}: X-Ferry-Source");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unsatisfiable_ranges_are_416_cold_and_warm() {
    let registry = Registry::plain().await;
    let ferry = FerryNode::start(FerryOptions::upstream("registry.local", &registry.url())).await;
    let data = random_bytes(200, SIZE as usize);
    let digest = push_blob(&registry, "test/ranges", &data).await;
    let url = format!("{}?ns=registry.local", blob_url(&ferry.url(), "test/ranges", &digest));

    for range in unsatisfiable_cases() {
        // docker-registry's 416 carries a wrong Content-Length, so only its status is read.
        let upstream = crate::harness::http_client()
            .get(blob_url(&registry.url(), "test/ranges", &digest))
            .header("range", &range)
            .send()
            .await
            .expect("upstream 416 request");
        assert_eq!(upstream.status().as_u16(), 416, "upstream {range}");
        let cold = get_ok(&url, &[("range", &range)]).await;
        assert_eq!(cold.status, 416, "ferry cold {range}");
        let content_range = cold.header("content-range");
        assert!(
            content_range.is_empty() || content_range == format!("bytes */{SIZE}"),
            "ferry cold {range}: Content-Range of a 416 is {content_range:?}, expected bytes */{SIZE}"
        );
    }
    let whole = get_ok(&url, &[]).await;
    assert!(whole.status == 200 && whole.body == data, "full GET after 416s");
    for range in unsatisfiable_cases() {
        let warm = get_ok(&url, &[("range", &range)]).await;
        assert_eq!(warm.status, 416, "ferry warm {range}");
    }
}
