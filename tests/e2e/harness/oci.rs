//! A minimal OCI Distribution pull client for the tests: GET manifests and blobs from a base URL
//! (ferry's mirror or the registry itself), optionally with `?ns=` and a `Range`, and a helper
//! that pulls a whole [`TestImage`] and checks every byte against its digests.

use std::time::Duration;

use super::digest_of;
use super::image::TestImage;

/// Accept header a containerd-like client sends for manifests.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
    application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json";

/// A complete HTTP reply.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    /// A header's value as text ("" when absent).
    pub fn header(&self, name: &str) -> String {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
    }

    /// Ferry's `X-Ferry-Source` (cache|origin).
    pub fn source(&self) -> String {
        self.header("x-ferry-source")
    }
}

/// `BASE/v2/REPO/blobs/DIGEST`.
pub fn blob_url(base: &str, repo: &str, digest: &str) -> String {
    format!("{base}/v2/{repo}/blobs/{digest}")
}

/// `BASE/v2/REPO/manifests/REFERENCE`.
pub fn manifest_url(base: &str, repo: &str, reference: &str) -> String {
    format!("{base}/v2/{repo}/manifests/{reference}")
}

/// GET `url` with `headers`; Err when the connection or the body fails (e.g. a cut transfer).
pub async fn get(url: &str, headers: &[(&str, &str)]) -> Result<Reply, String> {
    send(super::http_client().get(url), url, headers).await
}

/// HEAD `url`.
pub async fn head(url: &str) -> Result<Reply, String> {
    send(super::http_client().head(url), url, &[("accept", MANIFEST_ACCEPT)]).await
}

async fn send(mut request: reqwest::RequestBuilder, url: &str, headers: &[(&str, &str)]) -> Result<Reply, String> {
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let reply = request.timeout(Duration::from_secs(60)).send().await.map_err(|e| format!("{url}: {e:?}"))?;
    let status = reply.status().as_u16();
    let headers = reply.headers().clone();
    let body = reply.bytes().await.map_err(|e| format!("{url}: body: {e:?}"))?.to_vec();
    Ok(Reply { status, headers, body })
}

/// GET `url`, panicking on transport errors.
pub async fn get_ok(url: &str, headers: &[(&str, &str)]) -> Reply {
    get(url, headers).await.unwrap_or_else(|e| panic!("GET failed: {e}"))
}

/// GET `url` and parse its JSON body (a manifest with `MANIFEST_ACCEPT`, or a config),
/// panicking on anything but a 200.
pub async fn get_json(url: &str) -> serde_json::Value {
    let reply = get_ok(url, &[("accept", MANIFEST_ACCEPT)]).await;
    assert_eq!(reply.status, 200, "GET {url}: {}", String::from_utf8_lossy(&reply.body));
    serde_json::from_slice(&reply.body).unwrap_or_else(|e| panic!("GET {url}: not JSON: {e}"))
}

/// Pulls `image` from `base` as `repo` by `reference` (tag or digest), with `query` appended to
/// each URL (e.g. `?ns=registry.local` or ""), and checks every byte. Returns the
/// `X-Ferry-Source` of each blob reply, in manifest order (config first).
pub async fn pull_and_verify(base: &str, repo: &str, reference: &str, query: &str, image: &TestImage) -> Vec<String> {
    let url = format!("{}{query}", manifest_url(base, repo, reference));
    let manifest = get_ok(&url, &[("accept", MANIFEST_ACCEPT)]).await;
    assert_eq!(manifest.status, 200, "GET {url}: {}", String::from_utf8_lossy(&manifest.body));
    assert_eq!(digest_of(&manifest.body), image.manifest_digest, "manifest bytes from {url} do not match the pushed manifest");
    let content_digest = manifest.header("docker-content-digest");
    assert!(
        content_digest.is_empty() || content_digest == image.manifest_digest,
        "Docker-Content-Digest {content_digest} from {url} is not {}",
        image.manifest_digest
    );
    let mut sources = Vec::new();
    for blob in image.blobs() {
        let url = format!("{}{query}", blob_url(base, repo, &blob.digest));
        let reply = get_ok(&url, &[]).await;
        assert_eq!(reply.status, 200, "GET {url}: {}", String::from_utf8_lossy(&reply.body));
        assert_eq!(reply.body.len() as u64, blob.size, "length of {url}");
        assert_eq!(digest_of(&reply.body), blob.digest, "bytes of {url} do not match their digest");
        sources.push(reply.source());
    }
    sources
}

/// What [`stream_compare`] saw.
#[derive(Debug, Default)]
pub struct Streamed {
    pub status: u16,
    /// Body bytes received.
    pub received: usize,
    /// First offset whose byte differed from the expected data.
    pub first_mismatch: Option<usize>,
    /// Transport or body error, when the transfer did not end cleanly.
    pub error: Option<String>,
    pub source: String,
}

impl Streamed {
    /// A clean 200 whose body is exactly `expected`.
    pub fn is_exact(&self, expected: &[u8]) -> bool {
        self.status == 200 && self.error.is_none() && self.first_mismatch.is_none() && self.received == expected.len()
    }
}

/// GETs `url` and compares the body, as it streams, with `expected` (no buffering of the whole
/// body). Stops reading once `stop_after` bytes arrived, when given.
pub async fn stream_compare(url: &str, expected: &[u8], stop_after: Option<usize>) -> Streamed {
    let mut out = Streamed::default();
    let client = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .read_timeout(Duration::from_secs(30))
        .build()
        .expect("build streaming client");
    let mut reply = match client.get(url).send().await {
        Ok(reply) => reply,
        Err(e) => {
            out.error = Some(format!("{e:?}"));
            return out;
        }
    };
    out.status = reply.status().as_u16();
    out.source = reply.headers().get("x-ferry-source").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    loop {
        match reply.chunk().await {
            Ok(Some(chunk)) => {
                let end = out.received + chunk.len();
                let want = expected.get(out.received..end.min(expected.len())).unwrap_or_default();
                if out.first_mismatch.is_none() && (want.len() != chunk.len() || want != &chunk[..]) {
                    let at = want.iter().zip(chunk.iter()).position(|(a, b)| a != b).unwrap_or(want.len());
                    out.first_mismatch = Some(out.received + at);
                }
                out.received = end;
                if stop_after.is_some_and(|limit| out.received >= limit) {
                    return out;
                }
            }
            Ok(None) => return out,
            Err(e) => {
                out.error = Some(format!("{e:?}"));
                return out;
            }
        }
    }
}
