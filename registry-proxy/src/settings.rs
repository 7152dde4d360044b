//! The mirror's validated settings: what the binary hands to [`crate::run`].

use std::path::PathBuf;
use std::time::Duration;

use url::Url;

/// One allow-listed upstream registry.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// The registry name clients use (`registry.local`, `docker.io`): the `ns` containerd sends.
    pub host: String,
    /// Where it is really reached (`https://registry-1.docker.io`, `http://127.0.0.1:5000`).
    pub url: Url,
    /// Credentials given directly; otherwise the Docker config is consulted.
    pub username: Option<String>,
    pub password: Option<String>,
}

impl UpstreamSettings {
    /// Parses `HOST[=URL]`: without a URL the registry is reached over HTTPS at its name
    /// (`docker.io` at `registry-1.docker.io`).
    pub fn parse(spec: &str) -> Result<UpstreamSettings, crate::Error> {
        let bad = |why: &str| crate::Error::Config(format!("--upstream {spec:?}: {why}"));
        let (host, url) = match spec.split_once('=') {
            Some((h, u)) => (h.trim(), u.trim().to_string()),
            None if spec.trim() == "docker.io" => ("docker.io", "https://registry-1.docker.io".to_string()),
            None => (spec.trim(), format!("https://{}", spec.trim())),
        };
        if host.is_empty() || !host.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b)) {
            return Err(bad("the registry name may hold only letters, digits, '.', '-', ':' and brackets"));
        }
        let url = Url::parse(&url).map_err(|e| bad(&format!("bad URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(bad("the URL must be http:// or https:// with a host"));
        }
        Ok(UpstreamSettings { host: host.to_string(), url, username: None, password: None })
    }
}

/// Everything the mirror needs to know.
#[derive(Debug, Clone)]
pub struct MirrorSettings {
    pub upstreams: Vec<UpstreamSettings>,
    /// The upstream for requests without `?ns=`; defaults to the first one.
    pub default_upstream: Option<String>,
    /// Extra CA certificates (PEM) trusted for HTTPS upstreams, besides the system roots.
    pub extra_ca_files: Vec<PathBuf>,
    /// A Docker `config.json` whose `auths` hold upstream credentials.
    pub docker_config: Option<PathBuf>,
    pub connect_timeout: Duration,
    /// An upstream body that makes no progress for this long is abandoned.
    pub read_timeout: Duration,
    /// How long a tag is revalidated upstream before the cached answer is used.
    pub manifest_timeout: Duration,
    /// How old a cached tag may be and still be served while its upstream fails.
    pub stale_if_error: Duration,
    /// A reader waiting for a piece gives up (EIO / 504) after this long without progress.
    pub piece_timeout: Duration,
    /// With the snapshotter on: its lazy-layer counters (reported in metrics and status), and
    /// the mirror records which blob each layer's snapshot name stands for (this fetches an
    /// image's config when its manifest is served).
    pub lazy_layers: Option<std::sync::Arc<p2p_node::layers::LazyStats>>,
    /// Prewarm orders: who may give them and how they are carried out; `None`: none are taken.
    pub prewarm: Option<crate::prewarm::PrewarmSettings>,
}

impl Default for MirrorSettings {
    fn default() -> MirrorSettings {
        MirrorSettings {
            upstreams: Vec::new(),
            default_upstream: None,
            extra_ca_files: Vec::new(),
            docker_config: None,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            manifest_timeout: Duration::from_secs(5),
            stale_if_error: Duration::from_secs(7 * 24 * 3600),
            piece_timeout: Duration::from_secs(60),
            lazy_layers: None,
            prewarm: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_specs() {
        let u = UpstreamSettings::parse("registry.local=http://127.0.0.1:5000").expect("ok");
        assert_eq!((u.host.as_str(), u.url.as_str()), ("registry.local", "http://127.0.0.1:5000/"));
        assert_eq!(UpstreamSettings::parse("ghcr.io").expect("ok").url.as_str(), "https://ghcr.io/");
        assert_eq!(UpstreamSettings::parse("docker.io").expect("ok").url.as_str(), "https://registry-1.docker.io/");
        assert_eq!(UpstreamSettings::parse("127.0.0.1:5000").expect("ok").host, "127.0.0.1:5000");
        for bad in ["", "a b", "x=ftp://y", "x=notaurl", "a/b=http://x"] {
            assert!(UpstreamSettings::parse(bad).is_err(), "{bad}");
        }
    }
}
