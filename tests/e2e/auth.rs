//! Authenticated and TLS upstreams: htpasswd basic auth and bearer tokens with credentials
//! from a Docker `config.json` (`--docker-config`), wrong or missing credentials giving a
//! clear 401/403 quickly (not a hang, not a 5xx, not a 200), and an HTTPS upstream trusted
//! through `--upstream-ca` (and refused without it).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use crate::harness::ferry::{FerryNode, FerryOptions};
use crate::harness::image::{build_busybox, push, TestImage};
use crate::harness::oci::{blob_url, get, manifest_url, pull_and_verify, MANIFEST_ACCEPT};
use crate::harness::registry::Registry;
use crate::harness::temp_dir;

const NS: &str = "?ns=registry.local";

/// Writes a Docker config.json with credentials for `registry.local`.
fn docker_config(dir: &std::path::Path, name: &str, user: &str, password: &str) -> PathBuf {
    let auth = STANDARD.encode(format!("{user}:{password}"));
    let path = dir.join(name);
    let json = serde_json::json!({"auths": {"registry.local": {"auth": auth}}});
    std::fs::write(&path, json.to_string()).expect("write docker config");
    path
}

fn pushed_image(registry: &Registry, work: &std::path::Path) -> TestImage {
    let image = build_busybox(work, "auth");
    push(&image, registry, "test/busybox:latest");
    image
}

async fn ferry_with(registry: &Registry, config: Option<PathBuf>) -> FerryNode {
    let mut options = FerryOptions::upstream("registry.local", &registry.url());
    options.docker_config = config;
    FerryNode::start(options).await
}

/// A manifest and a blob request must fail within 20 s with a 401/403 whose body says why.
async fn assert_denied_clearly(ferry: &FerryNode, image: &TestImage, what: &str) {
    let urls = [
        (format!("{}{NS}", manifest_url(&ferry.url(), "test/busybox", "latest")), MANIFEST_ACCEPT),
        (format!("{}{NS}", blob_url(&ferry.url(), "test/busybox", &image.layers[0].digest)), "*/*"),
    ];
    for (url, accept) in urls {
        let started = Instant::now();
        let reply = get(&url, &[("accept", accept)]).await.unwrap_or_else(|e| panic!("{what}: GET {url} failed: {e}"));
        assert!(started.elapsed() < Duration::from_secs(20), "{what}: GET {url} took {:?}", started.elapsed());
        let body = String::from_utf8_lossy(&reply.body).to_lowercase();
        let explained = ["unauthorized", "denied", "credential", "authentic"].iter().any(|w| body.contains(w));
        assert!(
            matches!(reply.status, 401 | 403) && explained,
            "{what}: GET {url}: expected 401/403 with a body naming the auth failure, got {}: {body}",
            reply.status
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_auth_upstream_with_docker_config() {
    let registry = Registry::basic_auth("ferry-user", "pw-basic-123").await;
    let work = temp_dir("auth-basic");
    let image = pushed_image(&registry, work.path());

    let good = docker_config(work.path(), "good.json", "ferry-user", "pw-basic-123");
    let ferry = ferry_with(&registry, Some(good)).await;
    pull_and_verify(&ferry.url(), "test/busybox", "latest", NS, &image).await;

    let wrong = docker_config(work.path(), "wrong.json", "ferry-user", "not-the-password");
    let denied = ferry_with(&registry, Some(wrong)).await;
    assert_denied_clearly(&denied, &image, "basic auth, wrong password").await;
    let anonymous = ferry_with(&registry, None).await;
    assert_denied_clearly(&anonymous, &image, "basic auth, no credentials").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn token_auth_upstream_with_docker_config() {
    let registry = Registry::token_auth("tok-user", "pw-token-456").await;
    let work = temp_dir("auth-token");
    let image = pushed_image(&registry, work.path());
    let tokens = registry.token_server.as_ref().expect("token server");

    let good = docker_config(work.path(), "good.json", "tok-user", "pw-token-456");
    let ferry = ferry_with(&registry, Some(good)).await;
    let issued_before = tokens.issued();
    pull_and_verify(&ferry.url(), "test/busybox", "latest", NS, &image).await;
    assert_eq!(tokens.issued() - issued_before, 1, "one token for the whole pull: tokens are cached per repository until they expire");
    // A second pull revalidates the tag with the cached token: no new token.
    pull_and_verify(&ferry.url(), "test/busybox", "latest", NS, &image).await;
    assert_eq!(tokens.issued() - issued_before, 1, "the cached token is reused");

    let wrong = docker_config(work.path(), "wrong.json", "tok-user", "wrong");
    let denied = ferry_with(&registry, Some(wrong)).await;
    let rejected_before = tokens.rejected();
    assert_denied_clearly(&denied, &image, "token auth, wrong password").await;
    assert!(tokens.rejected() > rejected_before, "ferry never presented the wrong credentials to the token server");
    let anonymous = ferry_with(&registry, None).await;
    assert_denied_clearly(&anonymous, &image, "token auth, no credentials").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_upstream_trusted_through_upstream_ca() {
    let registry = Registry::tls().await;
    let work = temp_dir("auth-tls");
    let image = pushed_image(&registry, work.path());
    let ca = registry.ca.as_ref().expect("TLS registry CA").cert.clone();

    let mut options = FerryOptions::upstream("registry.local", &registry.url());
    options.upstream_cas.push(ca);
    let ferry = FerryNode::start(options).await;
    pull_and_verify(&ferry.url(), "test/busybox", "latest", NS, &image).await;

    let untrusting = ferry_with(&registry, None).await;
    let url = format!("{}{NS}", manifest_url(&untrusting.url(), "test/busybox", "latest"));
    let started = Instant::now();
    let reply = get(&url, &[("accept", MANIFEST_ACCEPT)]).await.expect("ferry answers when the upstream cert is untrusted");
    assert!(started.elapsed() < Duration::from_secs(20), "untrusted TLS upstream took {:?}", started.elapsed());
    assert!(reply.status >= 500, "untrusted TLS upstream: expected a 5xx, got {}", reply.status);
}
