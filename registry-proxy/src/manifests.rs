//! Manifests: by digest, verified and cached for good; by tag, revalidated upstream within a
//! short timeout (HEAD when a cached answer exists, which registries do not rate-limit) and
//! served from cache when the upstream fails, for as long as `stale_if_error` allows.
//!
//! Kept in the content store: the manifest bytes as a blob, and under `meta/` the media type of
//! each manifest (`manifests/<hex>`) and tag records (`tags/<registry>/<repo>/_tags/<tag>`).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::Method;
use p2p_node::store::Store;
use p2p_node::Digest;

use crate::metrics::{KindLabel, Metrics};
use crate::names::{Reference, Repo};
use crate::upstream::{Upstream, MAX_MANIFEST};
use crate::Error;

/// A manifest ready to serve.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub bytes: Bytes,
    pub media_type: String,
    pub digest: Digest,
    /// Served from the store (`cache`), or just fetched (`origin`, `peer`).
    pub source: &'static str,
}

/// How often an unchanged tag's record is rewritten with a new confirmation time.
const RECONFIRM_EVERY_SECS: u64 = 60;

#[derive(serde::Serialize, serde::Deserialize)]
struct TagRecord {
    digest: Digest,
    /// Unix seconds of the last time the upstream confirmed this tag.
    checked: u64,
}

pub struct Manifests {
    store: Store,
    metrics: Arc<Metrics>,
    timeout: Duration,
    stale_if_error: Duration,
}

impl Manifests {
    pub fn new(store: Store, metrics: Arc<Metrics>, timeout: Duration, stale_if_error: Duration) -> Manifests {
        Manifests { store, metrics, timeout, stale_if_error }
    }

    pub async fn get(&self, up: &Upstream, name: &Repo, reference: &Reference) -> Result<Manifest, Error> {
        match reference {
            Reference::Digest(d) => {
                if let Some(m) = self.cached(d)? {
                    self.metrics.hit("manifest", true);
                    return Ok(m);
                }
                self.metrics.hit("manifest", false);
                let m = self.fetch(up, name, reference).await?;
                self.save(&m)?;
                Ok(m)
            }
            Reference::Tag(tag) => self.get_tag(up, name, tag).await,
        }
    }

    async fn get_tag(&self, up: &Upstream, name: &Repo, tag: &str) -> Result<Manifest, Error> {
        let key = tag_key(&up.host, name, tag);
        let record: Option<TagRecord> = self.store.read_meta(&key)?.and_then(|b| serde_json::from_slice(&b).ok());
        let cached = match &record {
            Some(r) => self.cached(&r.digest)?,
            None => None,
        };
        let reference = Reference::Tag(tag.to_string());
        let Some(cached) = cached else {
            self.metrics.hit("manifest", false);
            let m = self.fetch(up, name, &reference).await?;
            self.save(&m)?;
            self.record(&key, &m.digest)?;
            return Ok(m);
        };
        let checked = record.map_or(0, |r| r.checked);
        let fresh = async {
            let head = self.send(up, name, &reference, Method::HEAD).await?;
            let same = head.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<Digest>().ok())
                == Some(cached.digest);
            if same {
                return Ok(None);
            }
            self.fetch(up, name, &reference).await.map(Some)
        };
        match fresh.await {
            Ok(None) => {
                self.metrics.hit("manifest", true);
                // Unchanged: refresh the record's time (the stale-if-error bound) at most once a
                // minute, not with an fsync on every pull.
                if now().saturating_sub(checked) >= RECONFIRM_EVERY_SECS {
                    self.record(&key, &cached.digest)?;
                }
                Ok(cached)
            }
            Ok(Some(m)) => {
                self.metrics.hit("manifest", false);
                self.save(&m)?;
                self.record(&key, &m.digest)?;
                Ok(m)
            }
            Err(Error::ManifestUnknown { upstream, name, reference }) => {
                self.store.remove_meta(&key)?;
                Err(Error::ManifestUnknown { upstream, name, reference })
            }
            Err(e) if e.is_upstream_failure() && now().saturating_sub(checked) <= self.stale_if_error.as_secs() => {
                tracing::warn!(upstream = %up.host, %name, tag, error = %e, "upstream failed; serving the cached tag");
                self.metrics.stale_served.inc();
                self.metrics.hit("manifest", true);
                Ok(cached)
            }
            Err(e) => Err(e),
        }
    }

    /// Takes a manifest that reached the store as a verified blob (from peers, while the origin
    /// was down): its media type is the one the manifest names.
    pub fn adopt(&self, d: &Digest) -> Result<Manifest, Error> {
        let bytes = self
            .store
            .read_small(d, MAX_MANIFEST)?
            .ok_or_else(|| Error::Io { what: format!("manifest {d}"), source: std::io::Error::other("fetched but not in the store") })?;
        #[derive(serde::Deserialize)]
        struct Typed {
            #[serde(rename = "mediaType")]
            media_type: Option<String>,
        }
        let typed: Typed = serde_json::from_slice(&bytes)
            .map_err(|e| Error::Io { what: format!("manifest {d}"), source: std::io::Error::other(format!("not JSON: {e}")) })?;
        let media_type = typed.media_type.unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".into());
        let m = Manifest { bytes: bytes.into(), media_type, digest: *d, source: "peer" };
        self.save(&m)?;
        Ok(m)
    }

    fn cached(&self, d: &Digest) -> Result<Option<Manifest>, Error> {
        let Some(media_type) = self.store.read_meta(&format!("manifests/{}", d.hex()))? else { return Ok(None) };
        let Some(bytes) = self.store.read_small(d, MAX_MANIFEST)? else { return Ok(None) };
        let media_type = String::from_utf8(media_type).unwrap_or_default();
        Ok(Some(Manifest { bytes: bytes.into(), media_type, digest: *d, source: "cache" }))
    }

    fn save(&self, m: &Manifest) -> Result<(), Error> {
        self.store.write_meta(&format!("manifests/{}", m.digest.hex()), m.media_type.as_bytes())?;
        self.store.put(&m.digest, &m.bytes)?;
        Ok(())
    }

    fn record(&self, key: &str, digest: &Digest) -> Result<(), Error> {
        let rec = TagRecord { digest: *digest, checked: now() };
        let json = serde_json::to_vec(&rec).map_err(|e| Error::Config(e.to_string()))?;
        Ok(self.store.write_meta(key, &json)?)
    }

    /// Sends a manifest request within the revalidation timeout and checks its status.
    async fn send(&self, up: &Upstream, name: &Repo, reference: &Reference, method: Method) -> Result<reqwest::Response, Error> {
        let kind = if method == Method::HEAD { "manifest_head" } else { "manifest" };
        let started = std::time::Instant::now();
        let resp =
            tokio::time::timeout(self.timeout, up.manifest_request(method, name, reference)).await.map_err(|_| Error::Timeout {
                what: format!("waiting for {} to answer for manifest {reference} of {name}", up.host),
                secs: self.timeout.as_secs(),
            })??;
        self.metrics.upstream(kind, resp.status().as_u16());
        self.metrics.fetch_duration.get_or_create(&KindLabel { kind: "manifest" }).observe(started.elapsed().as_secs_f64());
        up.expect_manifest(resp, name, reference)
    }

    /// GETs a manifest and checks it (size, the reference's digest, the upstream's claim).
    async fn fetch(&self, up: &Upstream, name: &Repo, reference: &Reference) -> Result<Manifest, Error> {
        let resp = self.send(up, name, reference, Method::GET).await?;
        let fetched = tokio::time::timeout(self.timeout, up.read_manifest(resp, name, reference))
            .await
            .map_err(|_| Error::Timeout { what: format!("reading manifest {reference} of {name}"), secs: self.timeout.as_secs() })??;
        Ok(Manifest { bytes: fetched.bytes, media_type: fetched.media_type, digest: fetched.digest, source: "origin" })
    }
}

/// Unix seconds.
pub(crate) fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `tags/<registry>/<repo>/_tags/<tag>`: `_tags` cannot be a repository component.
fn tag_key(host: &str, name: &Repo, tag: &str) -> String {
    let host: String = host.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' }).collect();
    format!("tags/{host}/{name}/_tags/{tag}")
}
