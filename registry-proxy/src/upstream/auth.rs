//! Registry authentication: `WWW-Authenticate` challenges, the bearer-token flow, basic auth,
//! Docker `config.json` credentials, and a token cache that keeps tokens until they expire.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use http::HeaderValue;

use crate::Error;

/// A username and password (or token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <hidden>)", self.username)
    }
}

impl Credentials {
    fn basic(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
    }
}

/// Reads the credentials for `registry` from a Docker `config.json` (`auths`; the Docker Hub
/// entry is keyed `https://index.docker.io/v1/`). Credential helpers are not run.
pub fn docker_config_credentials(path: &Path, registry: &str) -> Result<Option<Credentials>, Error> {
    let bad = |reason: String| Error::Config(format!("docker config {}: {reason}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let auths = json.get("auths").and_then(|a| a.as_object());
    let keys: Vec<String> = if registry == "docker.io" {
        vec!["https://index.docker.io/v1/".into(), "index.docker.io".into(), "docker.io".into()]
    } else {
        vec![registry.to_string(), format!("https://{registry}"), format!("http://{registry}")]
    };
    let Some(entry) = keys.iter().find_map(|k| auths.and_then(|a| a.get(k))) else {
        if json.get("credsStore").is_some() || json.get("credHelpers").is_some() {
            tracing::warn!(registry, "docker config names credential helpers; ferry does not run them");
        }
        return Ok(None);
    };
    let field = |k: &str| entry.get(k).and_then(|v| v.as_str()).filter(|s| !s.is_empty());
    if let Some(auth) = field("auth") {
        let raw =
            base64::engine::general_purpose::STANDARD.decode(auth).map_err(|e| bad(format!("{registry}: auth is not base64: {e}")))?;
        let raw = String::from_utf8(raw).map_err(|_| bad(format!("{registry}: auth is not UTF-8")))?;
        let (u, p) = raw.split_once(':').ok_or_else(|| bad(format!("{registry}: auth is not 'user:password'")))?;
        return Ok(Some(Credentials { username: u.into(), password: p.into() }));
    }
    match (field("username"), field("password")) {
        (Some(u), Some(p)) => Ok(Some(Credentials { username: u.into(), password: p.into() })),
        _ => Ok(None),
    }
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer { realm: String, service: Option<String>, scope: Option<String> },
}

impl Challenge {
    /// Parses `Bearer realm="...",service="...",scope="..."` or `Basic realm="..."`.
    pub fn parse(value: &str) -> Option<Challenge> {
        let (scheme, rest) = value.trim().split_once(' ').unwrap_or((value.trim(), ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Challenge::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let params = parse_params(rest);
        let get = |k: &str| params.iter().find(|(n, _)| n.eq_ignore_ascii_case(k)).map(|(_, v)| v.clone());
        Some(Challenge::Bearer { realm: get("realm")?, service: get("service"), scope: get("scope") })
    }
}

/// `k="v", k2=v2` with commas allowed inside quotes.
fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ',')).collect();
        if key.is_empty() || chars.next() != Some('=') {
            return out;
        }
        let mut val = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => val.extend(chars.next()),
                    '"' => break,
                    c => val.push(c),
                }
            }
        } else {
            val = std::iter::from_fn(|| chars.next_if(|c| *c != ',')).collect::<String>().trim().to_string();
        }
        out.push((key.trim().to_string(), val));
    }
}

#[derive(serde::Deserialize)]
struct TokenReply {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

/// Per-upstream authentication state.
#[derive(Debug)]
pub struct Auth {
    upstream: String,
    credentials: Option<Credentials>,
    /// Cached `Authorization` values by scope, with when they stop being good.
    tokens: Mutex<HashMap<String, (HeaderValue, Instant)>>,
    /// Set once the upstream asked for basic auth: then credentials go with every request.
    wants_basic: Mutex<bool>,
}

/// The scope of a pull from `name`.
pub fn pull_scope(name: &str) -> String {
    format!("repository:{name}:pull")
}

impl Auth {
    pub fn new(upstream: String, credentials: Option<Credentials>) -> Auth {
        Auth { upstream, credentials, tokens: Mutex::new(HashMap::new()), wants_basic: Mutex::new(false) }
    }

    /// What to send first for `scope`: a cached token, or basic credentials the upstream wants.
    pub fn header_for(&self, scope: &str) -> Option<HeaderValue> {
        let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((h, until)) = tokens.get(scope) {
            if Instant::now() < *until {
                return Some(h.clone());
            }
        }
        drop(tokens);
        if *self.wants_basic.lock().unwrap_or_else(|p| p.into_inner()) {
            return self.credentials.as_ref().and_then(|c| HeaderValue::from_str(&c.basic()).ok());
        }
        None
    }

    /// Answers a 401 challenge: returns the header to retry with, or `None` when there is
    /// nothing more to try (no credentials for a basic challenge).
    pub async fn answer(&self, http: &reqwest::Client, challenge: &str, scope: &str) -> Result<Option<HeaderValue>, Error> {
        let fail = |reason: String| Error::Auth { upstream: self.upstream.clone(), reason };
        match Challenge::parse(challenge) {
            None => Err(fail(format!("unsupported challenge {challenge:?}"))),
            Some(Challenge::Basic) => {
                *self.wants_basic.lock().unwrap_or_else(|p| p.into_inner()) = true;
                Ok(self.credentials.as_ref().and_then(|c| HeaderValue::from_str(&c.basic()).ok()))
            }
            Some(Challenge::Bearer { realm, service, scope: offered }) => {
                let mut url = url::Url::parse(&realm).map_err(|e| fail(format!("bad token realm {realm:?}: {e}")))?;
                {
                    let mut q = url.query_pairs_mut();
                    if let Some(s) = &service {
                        q.append_pair("service", s);
                    }
                    q.append_pair("scope", offered.as_deref().unwrap_or(scope));
                }
                let mut req = http.get(url.clone());
                if let Some(c) = &self.credentials {
                    req = req.basic_auth(&c.username, Some(&c.password));
                }
                let resp = req.send().await.map_err(|e| Error::UpstreamUnreachable {
                    upstream: self.upstream.clone(),
                    what: format!("token request to {realm}"),
                    reason: e.to_string(),
                })?;
                let status = resp.status();
                if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
                    return Err(fail(format!("token server {realm} refused the credentials ({status})")));
                }
                if !status.is_success() {
                    return Err(fail(format!("token server {realm} answered {status}")));
                }
                let body = resp.bytes().await.map_err(|e| fail(format!("reading token reply: {e}")))?;
                if body.len() > 1 << 20 {
                    return Err(fail("token reply over 1 MiB".into()));
                }
                let reply: TokenReply = serde_json::from_slice(&body).map_err(|e| fail(format!("token reply is not JSON: {e}")))?;
                let token = reply
                    .token
                    .or(reply.access_token)
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| fail("token reply holds no token".into()))?;
                let header = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| fail("token has invalid characters".into()))?;
                // Keep a token until shortly before it expires (60 s when the server does not say).
                let life = Duration::from_secs(reply.expires_in.unwrap_or(60).max(10));
                let until = Instant::now() + life - Duration::from_secs(5);
                self.tokens.lock().unwrap_or_else(|p| p.into_inner()).insert(scope.to_string(), (header.clone(), until));
                Ok(Some(header))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        let c = Challenge::parse(r#"Bearer realm="https://auth.example/token",service="reg",scope="repository:a/b:pull,push""#);
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("reg".into()),
                scope: Some("repository:a/b:pull,push".into())
            })
        );
        assert_eq!(Challenge::parse(r#"Basic realm="Registry Realm""#), Some(Challenge::Basic));
        assert_eq!(Challenge::parse("Bearer service=x"), None, "a bearer challenge needs a realm");
        assert_eq!(Challenge::parse("Negotiate abc"), None);
        assert_eq!(Challenge::parse(""), None);
    }

    #[test]
    fn docker_config_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("config.json");
        std::fs::write(
            &p,
            r#"{"auths":{"reg.local":{"auth":"dXNlcjpwYTpzcw=="},"https://index.docker.io/v1/":{"username":"hub","password":"pw"},"broken":{"auth":"!!"}}}"#,
        )
        .expect("write");
        let c = docker_config_credentials(&p, "reg.local").expect("ok").expect("found");
        assert_eq!((c.username.as_str(), c.password.as_str()), ("user", "pa:ss"));
        let hub = docker_config_credentials(&p, "docker.io").expect("ok").expect("found");
        assert_eq!(hub.username, "hub");
        assert!(docker_config_credentials(&p, "other").expect("ok").is_none());
        assert!(docker_config_credentials(&p, "broken").is_err());
        std::fs::write(&p, "{not json").expect("write");
        assert!(docker_config_credentials(&p, "reg.local").is_err());
    }
}
