//! Manifests from an upstream, for the mirror and for `ferry convert` alike: the request (with
//! the Accept list every client takes), the status check, and a bounded read checked against the
//! digest the reference names and the one the upstream claims.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use p2p_node::Digest;

use super::Upstream;
use crate::names::{Reference, Repo};
use crate::Error;

/// What registries and containerd accept as a manifest size.
pub const MAX_MANIFEST: u64 = 4 << 20;

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// A manifest as an upstream served it: at most [`MAX_MANIFEST`] bytes, its digest checked.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub bytes: Bytes,
    pub media_type: String,
    pub digest: Digest,
}

impl Upstream {
    /// Sends GET or HEAD for a manifest; the response's status is not checked yet.
    pub async fn manifest_request(&self, method: Method, name: &Repo, reference: &Reference) -> Result<reqwest::Response, Error> {
        let mut h = HeaderMap::new();
        h.insert(http::header::ACCEPT, HeaderValue::from_static(ACCEPT));
        self.request(method, name, &format!("manifests/{reference}"), h).await
    }

    /// Passes a 200; a 404 is [`Error::ManifestUnknown`]; anything else an error naming the status.
    pub fn expect_manifest(&self, resp: reqwest::Response, name: &Repo, reference: &Reference) -> Result<reqwest::Response, Error> {
        match resp.status() {
            StatusCode::OK => Ok(resp),
            StatusCode::NOT_FOUND => {
                Err(Error::ManifestUnknown { upstream: self.host.clone(), name: name.to_string(), reference: reference.to_string() })
            }
            s => Err(self.status_error(format!("manifest {reference} of {name}"), s)),
        }
    }

    /// Reads a manifest body, refusing more than [`MAX_MANIFEST`] bytes before buffering them, and
    /// checks it against the reference (when a digest) and `Docker-Content-Digest` (when sent).
    pub async fn read_manifest(&self, mut resp: reqwest::Response, name: &Repo, reference: &Reference) -> Result<Fetched, Error> {
        let what = format!("manifest {reference} of {name}");
        let bad = |reason: String| Error::UpstreamBad { upstream: self.host.clone(), what: what.clone(), reason };
        let claimed = resp.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()).map(str::to_string);
        let content_type = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.split(';').next().unwrap_or(s).trim().to_string());
        let mut body = Vec::new();
        while let Some(chunk) = self.chunk(&mut resp, &what).await? {
            body.extend_from_slice(&chunk);
            if body.len() as u64 > MAX_MANIFEST {
                return Err(bad(format!("larger than {MAX_MANIFEST} bytes")));
            }
        }
        let digest = Digest::of(&body);
        if let Some(c) = claimed {
            let c: Digest = c.parse().map_err(|_| bad(format!("bad Docker-Content-Digest {c:?}")))?;
            if c != digest {
                return Err(bad(format!("digest mismatch: header says {c}, content is {digest}")));
            }
        }
        if let Reference::Digest(d) = reference {
            if *d != digest {
                return Err(bad(format!("content has digest {digest}")));
            }
        }
        let media_type = content_type
            .filter(|t| t.starts_with("application/"))
            .or_else(|| media_type_of(&body))
            .unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".into());
        Ok(Fetched { bytes: body.into(), media_type, digest })
    }

    /// A checked manifest: request, status, bounded read.
    pub async fn get_manifest(&self, name: &Repo, reference: &Reference) -> Result<Fetched, Error> {
        let resp = self.manifest_request(Method::GET, name, reference).await?;
        let resp = self.expect_manifest(resp, name, reference)?;
        self.read_manifest(resp, name, reference).await
    }
}

fn media_type_of(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get("mediaType")?.as_str().map(str::to_string)
}
