//! Whole-image transfers for `ferry convert`: download blobs into files, check for and upload
//! blobs, put a manifest. Uploads use the push scope; everything fetched is verified
//! against its digest before it is kept.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use p2p_node::{Digest, Hasher};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::Upstream;
use crate::names::Repo;
use crate::Error;

fn push_scope(name: &Repo) -> String {
    format!("repository:{name}:pull,push")
}

impl Upstream {
    /// Downloads blob `digest` into `path`, streaming, and checks it; returns its size.
    pub async fn download_blob(&self, name: &Repo, digest: &Digest, path: &Path) -> Result<u64, Error> {
        let what = format!("blob {digest} of {name}");
        let mut resp = self.request(Method::GET, name, &format!("blobs/{digest}"), HeaderMap::new()).await?;
        match resp.status() {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => {
                return Err(Error::BlobUnknown { upstream: self.host.clone(), name: name.to_string(), digest: *digest })
            }
            s => return Err(self.status_error(what, s)),
        }
        let io = |e: std::io::Error| Error::Io { what: format!("writing {}", path.display()), source: e };
        let mut file = tokio::io::BufWriter::new(tokio::fs::File::create(path).await.map_err(io)?);
        let mut hasher = Hasher::new();
        let mut size = 0u64;
        while let Some(chunk) = self.chunk(&mut resp, &what).await? {
            hasher.update(&chunk);
            size += chunk.len() as u64;
            file.write_all(&chunk).await.map_err(io)?;
        }
        file.flush().await.map_err(io)?;
        let got = hasher.finish();
        if got != *digest {
            let _ = tokio::fs::remove_file(path).await;
            return Err(Error::Store(p2p_node::Error::DigestMismatch { expected: *digest, got }));
        }
        Ok(size)
    }

    /// Whether the registry already has blob `digest` in `name`.
    pub async fn has_blob(&self, name: &Repo, digest: &Digest) -> Result<bool, Error> {
        let url = self.url(name, &format!("blobs/{digest}"))?;
        let resp = self.send(Method::HEAD, url, name, &push_scope(name), HeaderMap::new(), None).await?;
        Ok(resp.status() == StatusCode::OK)
    }

    /// Uploads the file at `path` as blob `digest` (monolithic upload: POST, then PUT).
    pub async fn upload_blob(&self, name: &Repo, digest: &Digest, path: &Path) -> Result<(), Error> {
        let what = format!("upload of {digest} to {name}");
        let scope = push_scope(name);
        let start = self.send(Method::POST, self.url(name, "blobs/uploads/")?, name, &scope, HeaderMap::new(), Some(Bytes::new())).await?;
        if start.status() != StatusCode::ACCEPTED {
            return Err(self.status_error(what, start.status()));
        }
        let location = start.headers().get(http::header::LOCATION).and_then(|v| v.to_str().ok()).ok_or_else(|| Error::UpstreamBad {
            upstream: self.host.clone(),
            what: what.clone(),
            reason: "no Location for the upload".into(),
        })?;
        let mut url = self.base.join(location).map_err(|e| Error::UpstreamBad {
            upstream: self.host.clone(),
            what: what.clone(),
            reason: format!("bad Location: {e}"),
        })?;
        url.query_pairs_mut().append_pair("digest", &digest.to_string());
        let file = tokio::fs::File::open(path).await.map_err(|e| Error::Io { what: format!("opening {}", path.display()), source: e })?;
        let len = file.metadata().await.map_err(|e| Error::Io { what: format!("reading {}", path.display()), source: e })?.len();
        let mut h = HeaderMap::new();
        h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        h.insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
        // The POST settled authentication for this scope; a streamed body cannot be sent twice.
        // An upload may take long; it fails only when it stops moving for `read_timeout`.
        let progress = Arc::new(Progress::default());
        let body = reqwest::Body::wrap_stream(file_chunks(file, progress.clone()));
        let upload = self.build(Method::PUT, url, &scope, h, Some(body)).send();
        let done = tokio::select! {
            r = upload => self.sent(r, what.clone())?,
            () = progress.stalled(self.read_timeout) => {
                return Err(Error::Timeout { what: format!("{what}: no progress"), secs: self.read_timeout.as_secs() });
            }
        };
        if done.status() != StatusCode::CREATED {
            return Err(self.status_error(what, done.status()));
        }
        Ok(())
    }

    /// Puts a manifest under `reference` (a tag or its digest); returns its digest.
    pub async fn put_manifest(&self, name: &Repo, reference: &str, bytes: Bytes, media_type: &str) -> Result<Digest, Error> {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_str(media_type).map_err(|_| Error::Config(format!("bad media type {media_type:?}")))?,
        );
        let digest = Digest::of(&bytes);
        let resp =
            self.send(Method::PUT, self.url(name, &format!("manifests/{reference}"))?, name, &push_scope(name), h, Some(bytes)).await?;
        if resp.status() != StatusCode::CREATED {
            return Err(self.status_error(format!("manifest {reference} of {name}"), resp.status()));
        }
        Ok(digest)
    }
}

/// When an upload's body last moved (milliseconds since it started).
#[derive(Debug)]
struct Progress {
    started: Instant,
    last: AtomicU64,
}

impl Default for Progress {
    fn default() -> Progress {
        Progress { started: Instant::now(), last: AtomicU64::new(0) }
    }
}

impl Progress {
    fn touch(&self) {
        self.last.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Resolves once nothing moved for `limit` (the body, or the answer after it).
    async fn stalled(&self, limit: Duration) {
        loop {
            let idle = self.started.elapsed().saturating_sub(Duration::from_millis(self.last.load(Ordering::Relaxed)));
            if idle >= limit {
                return;
            }
            tokio::time::sleep((limit - idle).max(Duration::from_millis(100))).await;
        }
    }
}

/// The file's bytes in 1 MiB chunks, noting progress as each is handed to the connection.
fn file_chunks(file: tokio::fs::File, progress: Arc<Progress>) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> {
    futures_util::stream::unfold(Some(file), move |file| {
        let progress = progress.clone();
        async move {
            let mut file = file?;
            let mut buf = vec![0u8; 1 << 20];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    progress.touch();
                    Some((Ok(Bytes::from(buf)), Some(file)))
                }
                Err(e) => Some((Err(e), None)),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_upload_fails_only_when_it_stops_moving() {
        let p = Arc::new(Progress::default());
        let toucher = {
            let p = p.clone();
            tokio::spawn(async move {
                for _ in 0..6 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    p.touch();
                }
            })
        };
        let started = Instant::now();
        p.stalled(Duration::from_millis(200)).await;
        toucher.await.expect("toucher");
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(450), "moving for 300 ms, then 200 ms idle: stalled after {took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
    }

    #[tokio::test]
    async fn file_chunks_give_the_file_back_and_note_progress() {
        use futures_util::StreamExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("blob");
        let data: Vec<u8> = (0..(3 << 20) + 5).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).expect("write");
        let p = Arc::new(Progress::default());
        tokio::time::sleep(Duration::from_millis(20)).await;
        let file = tokio::fs::File::open(&path).await.expect("open");
        let chunks: Vec<Bytes> = file_chunks(file, p.clone()).map(|c| c.expect("chunk")).collect().await;
        assert_eq!(chunks.concat(), data);
        assert!(p.last.load(Ordering::Relaxed) >= 20, "progress was noted");
    }
}
