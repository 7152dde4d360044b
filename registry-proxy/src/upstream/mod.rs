//! The allow-listed upstream registries and the HTTP client that talks to them (rustls with the
//! system roots plus extra CA files; authentication from [`auth`]).
//!
//! Invariant: only hosts in the allow-list are ever contacted; a request naming any other
//! registry is refused before anything is sent (the mirror is never an open proxy).

pub mod auth;
mod manifest;
mod push;

pub use manifest::{Fetched, MAX_MANIFEST};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Method, StatusCode};
use url::Url;

use crate::names::Repo;
use crate::settings::MirrorSettings;
use crate::Error;
use auth::{pull_scope, Auth};

/// The registries this mirror may contact, by the name clients use for them.
#[derive(Debug)]
pub struct Upstreams {
    by_host: HashMap<String, Arc<Upstream>>,
    default: Option<Arc<Upstream>>,
}

impl Upstreams {
    pub fn new(settings: &MirrorSettings) -> Result<Upstreams, Error> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(settings.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")));
        for path in &settings.extra_ca_files {
            let pem = std::fs::read(path).map_err(|e| Error::Config(format!("reading CA file {}: {e}", path.display())))?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| Error::Config(format!("CA file {}: {e}", path.display())))?;
            if certs.is_empty() {
                return Err(Error::Config(format!("CA file {} holds no PEM certificate", path.display())));
            }
            for c in certs {
                builder = builder.add_root_certificate(c);
            }
        }
        let http = builder.build().map_err(|e| Error::Config(format!("building the HTTP client: {e}")))?;
        let mut by_host = HashMap::new();
        for u in &settings.upstreams {
            let credentials = match (&u.username, &u.password, &settings.docker_config) {
                (Some(user), Some(pass), _) => Some(auth::Credentials { username: user.clone(), password: pass.clone() }),
                (_, _, Some(path)) => auth::docker_config_credentials(path, &u.host)?,
                _ => None,
            };
            let mut base = u.url.clone();
            if !base.path().ends_with('/') {
                base.set_path(&format!("{}/", base.path()));
            }
            let up = Upstream {
                host: u.host.clone(),
                base,
                http: http.clone(),
                auth: Auth::new(u.host.clone(), credentials),
                read_timeout: settings.read_timeout,
            };
            if by_host.insert(u.host.clone(), Arc::new(up)).is_some() {
                return Err(Error::Config(format!("upstream {:?} is configured twice", u.host)));
            }
        }
        let default_host = settings.default_upstream.clone().or_else(|| settings.upstreams.first().map(|u| u.host.clone()));
        let default = match default_host {
            Some(h) => Some(by_host.get(&h).cloned().ok_or_else(|| Error::Config(format!("default upstream {h:?} is not an upstream")))?),
            None => None,
        };
        Ok(Upstreams { by_host, default })
    }

    /// The upstream for a request's `ns` parameter (or the default without one).
    pub fn select(&self, ns: Option<&str>) -> Result<Arc<Upstream>, Error> {
        match ns {
            Some(host) => self.by_host.get(host).cloned().ok_or_else(|| Error::UpstreamNotAllowed(host.chars().take(200).collect())),
            None => self.default.clone().ok_or(Error::NoUpstream),
        }
    }

    pub fn hosts(&self) -> impl Iterator<Item = &str> {
        self.by_host.keys().map(String::as_str)
    }
}

/// One upstream registry.
#[derive(Debug)]
pub struct Upstream {
    pub host: String,
    base: Url,
    http: reqwest::Client,
    auth: Auth,
    read_timeout: Duration,
}

impl Upstream {
    /// Sends `method` to `/v2/<name>/<tail>`, answering one auth challenge if asked. Returns the
    /// response whatever its status, except that a refused authentication is an error.
    pub async fn request(&self, method: Method, name: &Repo, tail: &str, headers: HeaderMap) -> Result<reqwest::Response, Error> {
        let url = self.url(name, tail)?;
        self.send(method, url, name, &pull_scope(name.as_str()), headers, None).await
    }

    fn url(&self, name: &Repo, tail: &str) -> Result<Url, Error> {
        self.base.join(&format!("v2/{name}/{tail}")).map_err(|e| Error::Config(format!("bad upstream URL: {e}")))
    }

    /// Sends a request with `scope`'s credentials, answering one 401 challenge (the body, if
    /// any, is sent again then).
    async fn send(
        &self,
        method: Method,
        url: Url,
        name: &Repo,
        scope: &str,
        headers: HeaderMap,
        body: Option<bytes::Bytes>,
    ) -> Result<reqwest::Response, Error> {
        let first = self.send_once(method.clone(), url.clone(), scope, headers.clone(), body.clone().map(reqwest::Body::from)).await?;
        if first.status() != StatusCode::UNAUTHORIZED {
            return Ok(first);
        }
        let challenge = first.headers().get(http::header::WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).map(str::to_string);
        let unauthorized = || Error::Unauthorized { upstream: self.host.clone(), name: name.to_string(), status: 401 };
        let Some(challenge) = challenge else { return Err(unauthorized()) };
        if self.auth.answer(&self.http, &challenge, scope).await?.is_none() {
            return Err(unauthorized());
        }
        let second = self.send_once(method, url, scope, headers, body.map(reqwest::Body::from)).await?;
        match second.status() {
            StatusCode::UNAUTHORIZED => Err(unauthorized()),
            StatusCode::FORBIDDEN => Err(Error::Unauthorized { upstream: self.host.clone(), name: name.to_string(), status: 403 }),
            _ => Ok(second),
        }
    }

    /// One attempt with whatever credentials `scope` has now.
    async fn send_once(
        &self,
        method: Method,
        url: Url,
        scope: &str,
        headers: HeaderMap,
        body: Option<reqwest::Body>,
    ) -> Result<reqwest::Response, Error> {
        let what = format!("{method} {}", url.path());
        let req = self.build(method, url, scope, headers, body);
        match tokio::time::timeout(self.read_timeout, req.send()).await {
            Err(_) => {
                Err(Error::Timeout { what: format!("waiting for {} to answer {what}", self.host), secs: self.read_timeout.as_secs() })
            }
            Ok(result) => self.sent(result, what),
        }
    }

    fn build(&self, method: Method, url: Url, scope: &str, headers: HeaderMap, body: Option<reqwest::Body>) -> reqwest::RequestBuilder {
        let mut req = self.http.request(method, url).headers(headers);
        if let Some(a) = self.auth.header_for(scope) {
            req = req.header(http::header::AUTHORIZATION, a);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        req
    }

    fn sent(&self, result: reqwest::Result<reqwest::Response>, what: String) -> Result<reqwest::Response, Error> {
        result.map_err(|e| Error::UpstreamUnreachable { upstream: self.host.clone(), what, reason: error_chain(&e) })
    }

    /// An error for an unexpected status.
    pub fn status_error(&self, what: String, status: StatusCode) -> Error {
        match status {
            StatusCode::FORBIDDEN => Error::Unauthorized { upstream: self.host.clone(), name: what, status: 403 },
            s => Error::UpstreamStatus { upstream: self.host.clone(), what, status: s.as_u16() },
        }
    }

    /// Reads the next body chunk, failing when none comes within the read timeout.
    pub async fn chunk(&self, resp: &mut reqwest::Response, what: &str) -> Result<Option<bytes::Bytes>, Error> {
        match tokio::time::timeout(self.read_timeout, resp.chunk()).await {
            Err(_) => {
                Err(Error::Timeout { what: format!("waiting for bytes of {what} from {}", self.host), secs: self.read_timeout.as_secs() })
            }
            Ok(Err(e)) => Err(Error::UpstreamUnreachable { upstream: self.host.clone(), what: what.to_string(), reason: error_chain(&e) }),
            Ok(Ok(c)) => Ok(c),
        }
    }
}

/// An error and its causes on one line (reqwest hides the useful part in the sources).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
