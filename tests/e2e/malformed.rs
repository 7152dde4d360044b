//! Bad input gets a 4xx and never reaches the upstream: invalid digests, `..` and empty
//! segments in repository names, uppercase names, bad tags, absurd and multi ranges, and `ns=`
//! naming a registry that is not on the allow-list (ferry is not an open proxy: a canary
//! listener that would have received such traffic stays untouched).

use std::net::SocketAddr;

use crate::harness::ferry::{FerryNode, FerryOptions};
use crate::harness::image::push_blob;
use crate::harness::oci::{blob_url, get_ok};
use crate::harness::proxy::FaultProxy;
use crate::harness::registry::Registry;
use crate::harness::{random_bytes, raw_get, RawResponse};

const SIZE: usize = 1 << 20;

fn assert_client_error(reply: &RawResponse, what: &str) {
    let body = String::from_utf8_lossy(&reply.body[..reply.body.len().min(500)]).to_string();
    assert!((400..500).contains(&reply.status), "{what}: expected a 4xx, got:\n{}\n\n{body}", reply.head);
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_requests_get_4xx_without_upstream_traffic() {
    let registry = Registry::plain().await;
    let data = random_bytes(700, SIZE);
    let digest = push_blob(&registry, "test/raw", &data).await;
    let ferry = FerryNode::start(FerryOptions::upstream("registry.local", &registry.url())).await;
    let warm_url = format!("{}?ns=registry.local", blob_url(&ferry.url(), "test/raw", &digest));
    let warm = get_ok(&warm_url, &[]).await;
    assert!(warm.status == 200 && warm.body == data, "warming GET");
    let canary = FaultProxy::start(&registry.host_port());
    registry.settle_log().await;
    let upstream_requests_before = registry.access_lines().len();
    let addr: SocketAddr = ferry.registry_addr.parse().expect("ferry address");

    let hex = digest.trim_start_matches("sha256:");
    let bad_paths = [
        "/v2/test/raw/blobs/sha256:xyz".to_string(),
        format!("/v2/test/raw/blobs/sha256:{}", &hex[..63]),
        format!("/v2/test/raw/blobs/sha256:{}", hex.to_uppercase()),
        format!("/v2/test/raw/blobs/md5:{}", &hex[..32]),
        format!("/v2/test/../etc/blobs/{digest}"),
        format!("/v2/../../etc/passwd/blobs/{digest}"),
        format!("/v2/test/%2e%2e/etc/blobs/{digest}"),
        format!("/v2/test/..%2f..%2fetc/blobs/{digest}"),
        format!("/v2/test//raw/blobs/{digest}"),
        format!("/v2/Test/Raw/blobs/{digest}"),
        "/v2/test/raw/manifests/-bad-tag".to_string(),
        format!("/v2/test/raw/manifests/{}", "t".repeat(200)),
    ];
    for path in &bad_paths {
        for target in [path.clone(), format!("{path}?ns=registry.local")] {
            let reply = raw_get(addr, &target, &[]);
            assert_client_error(&reply, &format!("GET {target}"));
        }
    }

    for range in ["bytes=999999999999-", "bytes=999999999999-999999999999", "bytes=5-2", "bytes=0-1,3-4", "bytes=abc", "items=0-5"] {
        let reply = get_ok(&warm_url, &[("range", range)]).await;
        let whole = reply.status == 200 && reply.body == data;
        assert!(
            reply.status == 416 || whole,
            "Range {range}: expected 416 or the whole blob with 200, got {} ({} bytes)",
            reply.status,
            reply.body.len()
        );
        if range.starts_with("bytes=999999999999") {
            assert_eq!(reply.status, 416, "Range {range} starts beyond the blob");
        }
    }

    let canary_host = format!("127.0.0.1:{}", canary.port);
    let cold = format!("sha256:{}", "ef".repeat(32));
    // Only loopback names: were ferry an open proxy, nothing may leave the machine.
    for ns in [canary_host.as_str(), "localhost", "127.0.0.1"] {
        for target in [format!("/v2/test/raw/blobs/{cold}?ns={ns}"), format!("/v2/test/busybox/manifests/latest?ns={ns}")] {
            let reply = raw_get(addr, &target, &[]);
            assert_client_error(&reply, &format!("GET {target} (upstream not on the allow-list)"));
        }
    }

    registry.settle_log().await;
    let new_lines: Vec<_> = registry.access_lines().into_iter().skip(upstream_requests_before).collect();
    assert!(new_lines.is_empty(), "malformed requests reached the upstream: {new_lines:?}");
    assert_eq!(canary.connections(), 0, "ferry connected to a registry that is not on its allow-list");
    let alive = get_ok(&format!("{}/v2/", ferry.url()), &[]).await;
    assert_eq!(alive.status, 200, "ferry still serving after the malformed requests");
}
