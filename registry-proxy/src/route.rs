//! Mirror requests parsed once into a [`Route`]: everything is validated here, before any
//! upstream is contacted.

use http::{Method, Uri};
use p2p_node::Digest;

use crate::names::{Reference, Repo};
use crate::Error;

#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`: the API version check.
    Base,
    Manifest {
        name: Repo,
        reference: Reference,
    },
    Blob {
        name: Repo,
        digest: Digest,
    },
}

/// A parsed request: what it asks for, and which registry (`?ns=`) it asks it of.
#[derive(Debug)]
pub struct Request {
    pub route: Route,
    pub ns: Option<String>,
    pub head: bool,
}

impl Request {
    pub fn parse(method: &Method, uri: &Uri) -> Result<Request, Error> {
        let head = match *method {
            Method::GET => false,
            Method::HEAD => true,
            _ => return Err(Error::Unsupported(format!("{method} is not supported: this is a read-only mirror"))),
        };
        let ns = uri.query().and_then(|q| url::form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "ns").map(|(_, v)| v.into_owned()));
        let path = uri.path();
        if path == "/v2" || path == "/v2/" {
            return Ok(Request { route: Route::Base, ns, head });
        }
        let rest = path.strip_prefix("/v2/").ok_or_else(|| Error::Unsupported(format!("{} is not a registry API path", truncate(path))))?;
        let mut parts = rest.rsplitn(3, '/');
        let (last, kind, name) = match (parts.next(), parts.next(), parts.next()) {
            (Some(l), Some(k), Some(n)) => (l, k, n),
            _ => return Err(Error::Unsupported(format!("{} is not a registry API path", truncate(path)))),
        };
        if kind == "uploads" {
            return Err(Error::Unsupported("uploads are not supported: this is a read-only mirror".into()));
        }
        let route = match kind {
            "manifests" => Route::Manifest { name: Repo::parse(name)?, reference: Reference::parse(last)? },
            "blobs" => Route::Blob { name: Repo::parse(name)?, digest: last.parse()? },
            _ => return Err(Error::Unsupported(format!("{} is not supported by this mirror", truncate(path)))),
        };
        Ok(Request { route, ns, head })
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(200).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(method: Method, uri: &str) -> Result<Request, Error> {
        Request::parse(&method, &uri.parse().expect("uri"))
    }

    #[test]
    fn routes() {
        let d = Digest::of(b"x");
        let r = parse(Method::GET, &format!("/v2/library/ubuntu/blobs/{d}?ns=docker.io")).expect("blob");
        assert_eq!(r.route, Route::Blob { name: Repo::parse("library/ubuntu").expect("name"), digest: d });
        assert_eq!(r.ns.as_deref(), Some("docker.io"));
        let r = parse(Method::HEAD, "/v2/a/manifests/manifests/latest").expect("manifest");
        assert_eq!(
            r.route,
            Route::Manifest { name: Repo::parse("a/manifests").expect("name"), reference: Reference::Tag("latest".into()) }
        );
        assert!(r.head);
        assert_eq!(parse(Method::GET, "/v2/").expect("base").route, Route::Base);
        assert_eq!(parse(Method::GET, "/v2/x/manifests/v1?ns=reg%3A5000").expect("ns").ns.as_deref(), Some("reg:5000"));
    }

    #[test]
    fn bad_requests_fail_before_any_upstream_call() {
        let cases = [
            (Method::GET, "/v2/a/../b/blobs/sha256:00"),
            (Method::GET, "/v2/a/blobs/sha256:xyz"),
            (Method::GET, "/v2/A/manifests/latest"),
            (Method::GET, "/v2/a/manifests/-bad"),
            (Method::POST, "/v2/a/blobs/uploads/"),
            (Method::GET, "/v2/a/blobs/uploads/x"),
            (Method::DELETE, "/v2/a/manifests/latest"),
            (Method::GET, "/v2/a/tags/list"),
            (Method::GET, "/v2/_catalog"),
            (Method::GET, "/etc/passwd"),
            (Method::GET, "/v2/blobs/sha256:00"),
        ];
        for (m, uri) in cases {
            let e = parse(m.clone(), uri).expect_err(uri);
            let (status, _) = e.oci();
            assert!((400..500).contains(&status), "{m} {uri}: {status} {e}");
        }
    }
}
