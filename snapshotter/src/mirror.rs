//! The node's mirror as its own clients (`ferry pull`, `ferry profile`) see it: an image
//! reference resolved to its manifest (the linux/amd64 one of an index), config and layers, each
//! checked against its digest, and blobs streamed.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use p2p_node::Digest;

use crate::convert::oci::{self, Descriptor, MAX_METADATA};
use crate::service::api::types;
use crate::Error;

/// `HOST/REPO[:TAG|@DIGEST]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRef {
    pub host: String,
    pub repo: String,
    pub reference: String,
}

impl ImageRef {
    pub fn parse(s: &str) -> Result<ImageRef, Error> {
        let bad = |why: &str| Error::malformed("image reference", format!("{s:?}: {why}"));
        let (host, path) = s.split_once('/').ok_or_else(|| bad("expected HOST/REPO[:TAG|@DIGEST]"))?;
        if !(host.contains('.') || host.contains(':') || host == "localhost") {
            return Err(bad("name the registry host first (e.g. registry.example.com/REPO:TAG)"));
        }
        let (repo, reference) = match path.split_once('@') {
            Some((r, d)) => (r, d.parse::<Digest>().map_err(|e| bad(&e.to_string()))?.to_string()),
            None => match path.rsplit_once(':') {
                Some((r, t)) if !t.contains('/') => (r, t.to_string()),
                _ => (path, "latest".to_string()),
            },
        };
        let repo_ok = !repo.is_empty()
            && repo
                .split('/')
                .all(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)));
        let tag_ok = !reference.is_empty() && reference.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-:".contains(&b));
        if !repo_ok || !tag_ok {
            return Err(bad("invalid repository or tag"));
        }
        Ok(ImageRef { host: host.to_string(), repo: repo.to_string(), reference })
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sep = if self.reference.starts_with("sha256:") { '@' } else { ':' };
        write!(f, "{}/{}{sep}{}", self.host, self.repo, self.reference)
    }
}

/// An image as the mirror gave it, every part checked against its digest.
pub(crate) struct Resolved {
    /// What the reference names: the manifest, or the index that lists it.
    pub top: Fetched,
    pub manifest: Fetched,
    pub config_desc: Descriptor,
    pub config: Vec<u8>,
    pub config_json: serde_json::Value,
    pub layers: Vec<Descriptor>,
    /// One per layer.
    pub diff_ids: Vec<Digest>,
}

/// A manifest or index as fetched, checked against its digest.
#[derive(Clone)]
pub(crate) struct Fetched {
    pub desc: types::Descriptor,
    pub bytes: Vec<u8>,
    pub json: serde_json::Value,
}

/// The node's mirror, for one repository of one upstream.
pub(crate) struct Mirror {
    http: reqwest::Client,
    base: String,
    ns: String,
}

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
                      application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

impl Mirror {
    pub fn new(mirror: &str, image: &ImageRef) -> Result<Mirror, Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| Error::Mirror { what: "an HTTP client".into(), why: e.to_string() })?;
        Ok(Mirror { http, base: format!("{}/v2/{}", mirror.trim_end_matches('/'), image.repo), ns: image.host.clone() })
    }

    async fn get(&self, url: String, accept: Option<&str>) -> Result<reqwest::Response, Error> {
        let mut request = self.http.get(&url).query(&[("ns", &self.ns)]);
        if let Some(a) = accept {
            request = request.header("accept", a);
        }
        let what = || format!("GET {url}");
        let resp = request.send().await.map_err(|e| Error::Mirror { what: what(), why: e.to_string() })?;
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            return Err(Error::Mirror { what: what(), why: format!("{status}: {}", body.chars().take(300).collect::<String>()) });
        }
        Ok(resp)
    }

    async fn bounded_body(&self, resp: reqwest::Response, what: &str) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| Error::Mirror { what: what.to_string(), why: e.to_string() })?;
            if out.len() as u64 + chunk.len() as u64 > MAX_METADATA {
                return Err(Error::TooLarge { what: what.to_string(), size: out.len() as u64 + chunk.len() as u64, limit: MAX_METADATA });
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// The image `image` names, resolved and checked.
    pub async fn resolve(&self, image: &ImageRef) -> Result<Resolved, Error> {
        let top = self.manifest(&image.reference).await?;
        let mut manifest = top.clone();
        if oci::is_index(&top.desc.media_type, &top.json) {
            let list: Vec<Descriptor> =
                serde_json::from_value(top.json["manifests"].clone()).map_err(|e| Error::malformed("image index", e.to_string()))?;
            let pick = oci::pick_platform(&list).ok_or_else(|| Error::malformed("image index", "no linux/amd64 image"))?;
            manifest = self.manifest(&pick.digest.to_string()).await?;
        }
        let config_desc: Descriptor = serde_json::from_value(manifest.json["config"].clone())
            .map_err(|e| Error::malformed("image manifest's config", e.to_string()))?;
        let layers: Vec<Descriptor> = serde_json::from_value(manifest.json["layers"].clone())
            .map_err(|e| Error::malformed("image manifest's layers", e.to_string()))?;
        let config = self.small_blob(&config_desc).await?;
        let config_json: serde_json::Value =
            serde_json::from_slice(&config).map_err(|e| Error::malformed("image config", e.to_string()))?;
        let diff_ids: Vec<Digest> = serde_json::from_value(config_json["rootfs"]["diff_ids"].clone())
            .map_err(|e| Error::malformed("image config's diff_ids", e.to_string()))?;
        if diff_ids.len() != layers.len() {
            return Err(Error::malformed("image", format!("{} layers but {} diff_ids", layers.len(), diff_ids.len())));
        }
        Ok(Resolved { top, manifest, config_desc, config, config_json, layers, diff_ids })
    }

    async fn manifest(&self, reference: &str) -> Result<Fetched, Error> {
        let resp = self.get(format!("{}/manifests/{reference}", self.base), Some(ACCEPT)).await?;
        let media_type = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        let bytes = self.bounded_body(resp, &format!("manifest {reference}")).await?;
        let digest = Digest::of(&bytes);
        if let Ok(expected) = reference.parse::<Digest>() {
            if expected != digest {
                return Err(Error::DigestMismatch { what: format!("manifest {reference}"), expected, got: digest });
            }
        }
        let json: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| Error::malformed("image manifest", e.to_string()))?;
        let media_type = match json["mediaType"].as_str() {
            Some(m) if media_type.is_empty() || media_type.starts_with("application/json") => m.to_string(),
            _ => media_type,
        };
        let desc = types::Descriptor { media_type, digest: digest.to_string(), size: bytes.len() as i64, annotations: HashMap::new() };
        Ok(Fetched { desc, bytes, json })
    }

    async fn small_blob(&self, d: &Descriptor) -> Result<Vec<u8>, Error> {
        let what = format!("blob {}", d.digest);
        let bytes = self.bounded_body(self.get(format!("{}/blobs/{}", self.base, d.digest), None).await?, &what).await?;
        let got = Digest::of(&bytes);
        if got != d.digest {
            return Err(Error::DigestMismatch { what, expected: d.digest, got });
        }
        Ok(bytes)
    }

    /// The blob's bytes as they arrive (containerd checks them against the digest on commit).
    pub async fn blob_stream(
        &self,
        d: &Descriptor,
    ) -> Result<impl futures_util::Stream<Item = Result<bytes::Bytes, Error>> + Unpin, Error> {
        let what = format!("blob {}", d.digest);
        let resp = self.get(format!("{}/blobs/{}", self.base, d.digest), None).await?;
        Ok(resp.bytes_stream().map(move |c| c.map_err(|e| Error::Mirror { what: what.clone(), why: e.to_string() })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_parse_or_say_what_is_wrong() {
        let r = ImageRef::parse("registry.local:5000/ml/torch:2.4").expect("parses");
        assert_eq!((r.host.as_str(), r.repo.as_str(), r.reference.as_str()), ("registry.local:5000", "ml/torch", "2.4"));
        assert_eq!(r.to_string(), "registry.local:5000/ml/torch:2.4");
        assert_eq!(ImageRef::parse("localhost/a").expect("parses").reference, "latest");
        let d = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(ImageRef::parse(&format!("r.io/a@{d}")).expect("parses").to_string(), format!("r.io/a@{d}"));
        for bad in ["ubuntu:22.04", "r.io/", "r.io/A/b", "r.io/a@sha256:xyz", "r.io/a:t$g", "r.io/a//b"] {
            let e = ImageRef::parse(bad).expect_err(bad).to_string();
            assert!(e.contains(bad), "{bad}: {e}");
        }
    }
}
